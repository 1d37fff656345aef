//! Mutation switches for the loom models.
//!
//! Each loom model comes with a mutation check: the model is run again with
//! one ordering weakened or one step skipped, and must then fail. The
//! switches exist only under `cfg(loom)`; in every other build `active`
//! is a `const fn` returning `false`, so the production code paths are the
//! plain ones.

/// One deliberate weakening of an algorithm, aimed at the step a model covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mutant {
    /// No mutation: the algorithm as written.
    None = 0,
    /// The edge log publishes a record header with `Relaxed` instead of
    /// `Release`.
    EdgePublishRelaxed,
    /// The edge log consumer loads record headers with `Relaxed` instead of
    /// `Acquire`.
    EdgeHeaderLoadRelaxed,
    /// The producer does not zero the next record's header before
    /// publishing (an older lap's bytes there then look like a record).
    EdgeSkipZeroNext,
    /// The edge log consumer commits with `Relaxed` instead of `Release`.
    EdgeCommitRelaxed,
    /// The producer claims space with a plain store of `tail`, wiping a
    /// seal's CLOSED bit.
    EdgeClaimPlainStore,
    /// A sleeper skips the `fence(SeqCst)` between registering and re-checking.
    WaitSkipSleeperFence,
    /// A waker skips the `fence(SeqCst)` between publishing and checking waiters.
    WaitSkipWakerFence,
    /// The queue publishes a record with `Relaxed` instead of `Release`.
    QueuePublishRelaxed,
    /// A consumer takes a record with a `Relaxed` CAS instead of `Acquire`.
    QueueTakeRelaxed,
    /// A consumer takes a record with a plain store instead of a CAS.
    QueueTakePlainStore,
    /// A consumer frees a slot with `Relaxed` instead of `Release`.
    QueueFreeRelaxed,
    /// A consumer frees a slot for the same lap instead of the next one
    /// (a full slot then looks like an empty one of the previous lap).
    QueueFreeSameLap,
    /// A producer finding `tail`'s slot claimed gives up (`Full`) instead of
    /// helping `tail` past it.
    QueueSkipTailHelp,
    /// A producer finding `tail`'s slot a lap ahead (its claim repaired and
    /// skipped before `tail` moved) does not help `tail` past it.
    QueueSkipLapAheadHelp,
    /// `repair_dead` repairs every participant, dead or alive.
    QueueRepairTheLiving,
    /// Repair tombstones a claim with a plain store instead of a CAS.
    QueueRepairPlainStore,
    /// A seal moves `tail` past a WRITING claim at the sealed end without
    /// tombing it.
    QueueSealSkipEndTomb,
    /// A producer whose `tail` CAS meets the seal at its own position
    /// publishes anyway instead of tombing its claim.
    QueueSkipSealBackout,
    /// A handoff reader returns its read without checking that the
    /// generation stayed the same.
    HandoffSkipRecheck,
    /// A handoff publisher claims the word with a plain store instead of a
    /// CAS (two publishers from one generation both win).
    HandoffClaimPlainStore,
    /// A handoff publisher writes the new locator into the live slot.
    HandoffWriteLiveSlot,
    /// A handoff publication makes its generation current with a Relaxed
    /// CAS (readers rebinding to it may not see what was set up before).
    HandoffPublishRelaxed,
    /// A carry into a relocated edge log leaves its tail at the start
    /// (the next producer writes over the carried records).
    CarrySkipTail,
    /// A map writer links a new entry with `Relaxed` instead of `Release`
    /// (a reader may see the link before the entry's bytes).
    MapLinkRelaxed,
    /// A map overwrite unlinks the old entry before linking the new one
    /// (a reader in between sees neither).
    MapOverwriteUnlinkFirst,
    /// A map delete stores null into the predecessor instead of the
    /// deleted entry's successor (the rest of the chain disappears).
    MapUnlinkDropsTail,
    /// Reclamation advances the epoch and frees limbo without looking at
    /// the readers' pins.
    MapReclaimIgnoresPins,
    /// A reader pins without the `fence(SeqCst)` after storing its epoch.
    MapPinSkipFence,
    /// The map writer skips its `fence(SeqCst)`s (retiring, re-pinning
    /// and advancing): the writer's side of the store-buffering pair with
    /// readers' pins.
    MapWriterSkipFences,
    /// A topic producer takes a slot still WRITING for the previous lap
    /// (two writers a lap apart write one slot at once).
    TopicClaimOverWriter,
    /// A topic producer skips the `fence(Release)` between its claim and
    /// its payload stores (the seqlock's writer fence).
    TopicSkipWriterFence,
    /// A topic reader returns its copy without the `fence(Acquire)` and
    /// the second look at the state word (an overwrite goes unnoticed).
    TopicSkipReaderRecheck,
    /// A topic reader looks at the state word again without the
    /// `fence(Acquire)` before it.
    TopicSkipReaderFence,
    /// A topic reader's first load of the state word is `Relaxed`.
    TopicReadRelaxed,
    /// A topic producer publishes with `Relaxed` instead of `Release`.
    TopicPublishRelaxed,
    /// Backpressure is not checked: producers take slots of records a
    /// holding group has not committed.
    TopicIgnoreBackpressure,
    /// A group starts holding, and producers check the bits, without the
    /// SeqCst fences between the bit and `tail`.
    TopicHoldSkipFence,
    /// A group starts holding with its cursor at the oldest record a
    /// producer that missed the bit may still take over.
    TopicHoldOldestCursor,
    /// Repair tombs a claim with a plain store instead of a CAS (a
    /// publish racing it is overwritten: acknowledged, then lost).
    TopicRepairPlainStore,
    /// A group member's assignment read keeps what it read without looking
    /// at the group's `seq` again (a rebalance between two owner words
    /// goes unnoticed).
    GroupSkipSeqRecheck,
}

#[cfg(loom)]
static ACTIVE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Selects the mutation that the following loom models run with.
#[cfg(loom)]
pub fn set(mutant: Mutant) {
    ACTIVE.store(mutant as u8, std::sync::atomic::Ordering::SeqCst);
}

/// Whether `mutant` is the selected mutation.
#[cfg(loom)]
#[inline]
pub(crate) fn active(mutant: Mutant) -> bool {
    ACTIVE.load(std::sync::atomic::Ordering::SeqCst) == mutant as u8
}

/// Whether `mutant` is the selected mutation (never, outside loom).
#[cfg(not(loom))]
#[inline(always)]
pub(crate) const fn active(_mutant: Mutant) -> bool {
    false
}

/// `weak` when `mutant` is selected, `strong` otherwise.
#[inline(always)]
pub(crate) fn order(
    strong: crate::sync::Ordering,
    mutant: Mutant,
    weak: crate::sync::Ordering,
) -> crate::sync::Ordering {
    if active(mutant) { weak } else { strong }
}
