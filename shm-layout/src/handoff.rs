//! The live part of a handoff record: which generation of a relocatable
//! structure is current and where it lives (its locator), published by
//! compare-and-swap so that two relocators cannot both win and a restarted
//! writer cannot roll the generation back (see docs/LAYOUT.md).
//!
//! The control block holds a *word* and two locator *slots*:
//!
//! * word = `generation << 24 | publisher pid << 1 | BUSY`. BUSY and the
//!   pid are set while a publication is in progress.
//! * the locator of generation `g` sits in slot `g % 2`.
//!
//! A publisher that expects generation `g`: CAS word `g|idle` ->
//! `g|me|BUSY` (fails if another generation is current: `Conflict`); write
//! the new locator into slot `(g + 1) % 2` (never the live one); CAS word
//! -> `g + 1|idle`. A reader: load the word (generation `g`), read slot
//! `g % 2`, load the word again: if the generation is still `g`, the read
//! is whole, since slot `g % 2` is written again only by the publisher of
//! `g + 2`, which must first make `g + 1` current. Readers never wait for a
//! publisher. A publisher that dies while BUSY leaves the live slot
//! intact; the next publisher reverts the word (CAS, only if the pid is
//! dead) and proceeds.

use crate::mutant::{self, Mutant, order};
use crate::sync::{AtomicU64, Ordering, fence};

/// Words in a locator slot.
pub const SLOT_WORDS: usize = 4;
/// The largest generation the word holds.
pub const MAX_GENERATION: u64 = (1 << 40) - 1;

const BUSY: u64 = 1;
const PID_SHIFT: u32 = 1;
const PID_MASK: u64 = (1 << 23) - 1;
const GEN_SHIFT: u32 = 24;

/// The control block (128-aligned, 128 bytes).
#[repr(C, align(128))]
#[derive(Debug)]
pub struct HandoffControl {
    word: AtomicU64,
    slots: [[AtomicU64; SLOT_WORDS]; 2],
    /// The BUSY publisher's full identity (pid and start time), stored
    /// right after its claim, so a recycled pid is not taken for it.
    owner: AtomicU64,
}

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<HandoffControl>() == 128);

/// Bytes of a handoff control block.
pub const CONTROL_SIZE: u64 = 128;

/// Why a publication did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoffError {
    /// Another generation is current (someone else published first).
    Conflict {
        /// The generation current now.
        current: u64,
    },
    /// A live publisher is in the middle of a publication.
    Busy {
        /// Its pid.
        pid: u32,
    },
    /// The generation would pass [`MAX_GENERATION`], or a pid does not
    /// fit the word.
    OutOfRange,
}

impl std::fmt::Display for HandoffError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandoffError::Conflict { current } => {
                write!(f, "generation {current} was published first")
            }
            HandoffError::Busy { pid } => write!(f, "pid {pid} is publishing"),
            HandoffError::OutOfRange => write!(f, "generation or pid out of range"),
        }
    }
}

impl std::error::Error for HandoffError {}

fn generation(word: u64) -> u64 {
    word >> GEN_SHIFT
}

impl HandoffControl {
    /// A control block at generation 0 with empty slots (heap, for models
    /// and tests; a zeroed segment is the same).
    pub fn new() -> HandoffControl {
        HandoffControl {
            word: AtomicU64::new(0),
            slots: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            owner: AtomicU64::new(0),
        }
    }

    /// The word (for futex waits on its low half, which changes with every
    /// publication).
    pub fn word(&self) -> &AtomicU64 {
        &self.word
    }

    /// The current generation and its locator words (all zero before the
    /// first publication).
    pub fn read(&self) -> (u64, [u64; SLOT_WORDS]) {
        loop {
            // Acquire: the slot's words were written before the publishing
            // CAS (Release) that made this generation current.
            let first = generation(self.word.load(Ordering::Acquire));
            let slot = &self.slots[(first % 2) as usize];
            let words: [u64; SLOT_WORDS] = std::array::from_fn(|i| slot[i].load(Ordering::Relaxed));
            // Acquire fence: if a later publisher's store into this slot was
            // read above, its BUSY CAS (before its Release fence) is seen
            // by the second load, whose generation has then moved.
            fence(Ordering::Acquire);
            let second = generation(self.word.load(Ordering::Relaxed));
            if first == second || mutant::active(Mutant::HandoffSkipRecheck) {
                return (first, words);
            }
        }
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        generation(self.word.load(Ordering::Acquire))
    }

    /// Publishes `locator` as generation `expected + 1`, if `expected` is
    /// current. `pid` and `identity` are the publisher's (its pid, and its
    /// full identity for a later judge); `is_dead(pid, identity)` judges a
    /// BUSY publisher found in the way (identity 0 if it had not stored
    /// it yet), whose publication is then reverted.
    ///
    /// The revert is safe only for a publisher that is really dead: its
    /// process is gone, so none of its stores is still to come (process
    /// exit orders them before the judge's observation of the death, which
    /// the memory model itself does not express).
    ///
    /// # Errors
    /// `Conflict` if another generation is current (before or during this
    /// publication: a publisher judged dead loses); `Busy` if a live
    /// publisher is in the way; `OutOfRange`.
    pub fn publish(
        &self,
        expected: u64,
        locator: [u64; SLOT_WORDS],
        (pid, identity): (u32, u64),
        is_dead: impl Fn(u32, u64) -> bool,
    ) -> Result<u64, HandoffError> {
        self.claim_and_write(
            expected,
            expected.saturating_add(1),
            locator,
            (pid, identity),
            is_dead,
        )
    }

    /// Restores a record made anew (still at generation 0, nothing
    /// published on it) to generation `generation` from its durable copy,
    /// so the generation never goes back when the shared-memory record was
    /// lost.
    ///
    /// # Errors
    /// As [`HandoffControl::publish`] (`Conflict` if something was
    /// published or restored first); `OutOfRange` for generation 0.
    pub fn restore(
        &self,
        generation: u64,
        locator: [u64; SLOT_WORDS],
        publisher: (u32, u64),
        is_dead: impl Fn(u32, u64) -> bool,
    ) -> Result<u64, HandoffError> {
        // At generation 0 nothing was ever published, so writing the live
        // slot (when `generation` is even) tears nothing a reader could use.
        self.claim_and_write(0, generation, locator, publisher, is_dead)
    }

    /// A publisher that dies mid-publication, for the models: claims
    /// generation `expected + 1` as `pid`, writes the first `words` words
    /// of its locator, and stops.
    #[cfg(loom)]
    pub fn claim_and_abandon(
        &self,
        expected: u64,
        locator: [u64; SLOT_WORDS],
        pid: u32,
        words: usize,
    ) {
        let idle = expected << GEN_SHIFT;
        let busy = idle | (u64::from(pid) << PID_SHIFT) | BUSY;
        self.word
            .compare_exchange(idle, busy, Ordering::Acquire, Ordering::Relaxed)
            .expect("the abandoned claim is made on an idle record");
        fence(Ordering::Release);
        let slot = &self.slots[((expected + 1) % 2) as usize];
        for (cell, value) in slot.iter().zip(locator).take(words) {
            cell.store(value, Ordering::Relaxed);
        }
    }

    fn claim_and_write(
        &self,
        expected: u64,
        next: u64,
        locator: [u64; SLOT_WORDS],
        (pid, identity): (u32, u64),
        is_dead: impl Fn(u32, u64) -> bool,
    ) -> Result<u64, HandoffError> {
        if next <= expected || next > MAX_GENERATION || u64::from(pid) > PID_MASK || pid == 0 {
            return Err(HandoffError::OutOfRange);
        }
        let idle = expected << GEN_SHIFT;
        let busy = idle | (u64::from(pid) << PID_SHIFT) | BUSY;
        loop {
            let word = self.word.load(Ordering::Acquire);
            if generation(word) != expected {
                return Err(HandoffError::Conflict {
                    current: generation(word),
                });
            }
            if word & BUSY != 0 {
                let holder = ((word >> PID_SHIFT) & PID_MASK) as u32;
                let owner = self.owner.load(Ordering::Acquire);
                // The owner word is the holder's only once it stored it.
                let owner = if (owner >> 40) as u32 == holder {
                    owner
                } else {
                    0
                };
                if !is_dead(holder, owner) {
                    return Err(HandoffError::Busy { pid: holder });
                }
                // Its publication never finished: the live slot is intact.
                let _ = self.word.compare_exchange(
                    word,
                    word & !(PID_MASK << PID_SHIFT | BUSY),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                continue;
            }
            let claimed = if mutant::active(Mutant::HandoffClaimPlainStore) {
                self.word.store(busy, Ordering::Relaxed);
                true
            } else {
                self.word
                    .compare_exchange(idle, busy, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            };
            if claimed {
                break;
            }
        }
        self.owner.store(identity, Ordering::Release);
        // Release fence: a reader that sees any of the slot stores below
        // also sees the BUSY claim above (see `read`).
        fence(Ordering::Release);
        let target = if mutant::active(Mutant::HandoffWriteLiveSlot) {
            expected % 2
        } else {
            next % 2
        };
        for (cell, value) in self.slots[target as usize].iter().zip(locator) {
            cell.store(value, Ordering::Relaxed);
        }
        // Release: readers that see generation `next` see its slot, and
        // whatever the publisher set up before (a relocated edge log's
        // carried records).
        let publish = order(
            Ordering::Release,
            Mutant::HandoffPublishRelaxed,
            Ordering::Relaxed,
        );
        self.word
            .compare_exchange(busy, next << GEN_SHIFT, publish, Ordering::Relaxed)
            .map(|_| next)
            .map_err(|now| HandoffError::Conflict {
                current: generation(now),
            })
    }
}

impl Default for HandoffControl {
    fn default() -> Self {
        HandoffControl::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn publications_advance_and_conflicts_are_refused() {
        let h = HandoffControl::new();
        assert_eq!(h.read(), (0, [0; SLOT_WORDS]));
        assert_eq!(h.publish(0, [1, 2, 3, 4], (7, 0), |_, _| false), Ok(1));
        assert_eq!(h.read(), (1, [1, 2, 3, 4]));
        // A writer that restarted believing generation 0 cannot roll back.
        assert_eq!(
            h.publish(0, [9; SLOT_WORDS], (8, 0), |_, _| false),
            Err(HandoffError::Conflict { current: 1 })
        );
        assert_eq!(h.publish(1, [5, 6, 7, 8], (7, 0), |_, _| false), Ok(2));
        assert_eq!(h.read(), (2, [5, 6, 7, 8]));
        assert_eq!(
            h.publish(2, [0; 4], (0, 0), |_, _| false),
            Err(HandoffError::OutOfRange)
        );
    }

    #[test]
    fn a_dead_publishers_claim_is_reverted_and_a_live_ones_waited_for() {
        let h = HandoffControl::new();
        h.publish(0, [1; SLOT_WORDS], (7, 0), |_, _| false).unwrap();
        // Publisher 9 claimed generation 1 -> 2, wrote half a slot, died.
        h.word
            .store(1 << GEN_SHIFT | 9 << PID_SHIFT | BUSY, Ordering::Relaxed);
        h.slots[0][0].store(42, Ordering::Relaxed);
        assert_eq!(h.read(), (1, [1; SLOT_WORDS]), "readers see the live slot");
        assert_eq!(
            h.publish(1, [2; SLOT_WORDS], (7, 0), |_, _| false),
            Err(HandoffError::Busy { pid: 9 })
        );
        assert_eq!(
            h.publish(1, [2; SLOT_WORDS], (7, 0), |pid, _| pid == 9),
            Ok(2)
        );
        assert_eq!(h.read(), (2, [2; SLOT_WORDS]));
    }

    #[test]
    fn a_new_record_restores_to_a_later_generation_once() {
        let h = HandoffControl::new();
        assert_eq!(
            h.restore(0, [0; 4], (7, 0), |_, _| false),
            Err(HandoffError::OutOfRange)
        );
        assert_eq!(h.restore(4, [4; SLOT_WORDS], (7, 0), |_, _| false), Ok(4));
        assert_eq!(h.read(), (4, [4; SLOT_WORDS]));
        assert_eq!(
            h.restore(9, [9; SLOT_WORDS], (7, 0), |_, _| false),
            Err(HandoffError::Conflict { current: 4 })
        );
        assert_eq!(h.publish(4, [5; SLOT_WORDS], (7, 0), |_, _| false), Ok(5));
        assert_eq!(h.read(), (5, [5; SLOT_WORDS]));
    }

    #[test]
    fn a_busy_publisher_is_judged_by_its_full_identity() {
        let h = HandoffControl::new();
        h.publish(0, [1; SLOT_WORDS], (7, 0), |_, _| false).unwrap();
        // Publisher 9 (identity 9 << 40 | 1234) claimed and died.
        h.word
            .store(1 << GEN_SHIFT | 9 << PID_SHIFT | BUSY, Ordering::Relaxed);
        h.owner.store(9 << 40 | 1234, Ordering::Relaxed);
        let judged = std::cell::Cell::new((0, 0));
        let _ = h.publish(1, [2; SLOT_WORDS], (7, 0), |pid, who| {
            judged.set((pid, who));
            false
        });
        assert_eq!(judged.get(), (9, 9 << 40 | 1234));
        // An owner word of another pid is not this holder's.
        h.owner.store(8 << 40 | 1, Ordering::Relaxed);
        let _ = h.publish(1, [2; SLOT_WORDS], (7, 0), |pid, who| {
            judged.set((pid, who));
            false
        });
        assert_eq!(judged.get(), (9, 0));
    }
}
