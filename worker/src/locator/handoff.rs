//! Handoff records: where a relocatable structure lives now, published so
//! that every process rebinds to it.
//!
//! The live generation and locator sit in a small shared-memory segment
//! (`handoff.<block lease id>`), published by CAS against the generation
//! the writer expects (`grafos_shm_layout::handoff`): a second relocator,
//! or a restarted writer whose `initial` state says zero, gets `Conflict`
//! instead of rolling the generation back. After the CAS the writer
//! checkpoints the state into the block lease's file (A/B slots, sequence,
//! CRC, `pwrite`) as the durable copy; a reader takes the newer of the two,
//! so it finds the locator even when the segment is gone. The record owns
//! its block lease: its durable copy sits at the start of the lease's
//! file, so nothing else should `write_at` that lease.
//!
//! ```no_run
//! use grafos_worker::block::BlockBuilder;
//! use grafos_worker::fence::FenceEpoch;
//! use grafos_worker::locator::QueueLocator;
//! use grafos_worker::locator::handoff::{HandoffReader, HandoffState, HandoffWriter};
//! # fn main() -> grafos_worker::Result<()> {
//! let locator = QueueLocator::new(3, 0, 1);
//! let lease = BlockBuilder::new().min_blocks(64).lease_secs(600).acquire()?;
//! let initial = HandoffState { stage_id: 1, generation: FenceEpoch::zero(), locator };
//! let mut writer = HandoffWriter::new(initial, lease)?;
//! writer.publish(locator)?;
//! let mut reader: HandoffReader<QueueLocator> = HandoffReader::new(writer.into_block_lease())?;
//! assert_eq!(reader.current()?.locator, locator);
//! # Ok(()) }
//! ```

use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use grafos_shm_layout::handoff::{HandoffControl, HandoffError, SLOT_WORDS};
use grafos_shm_layout::wait::Futex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::block::BlockLease;
use crate::collections::durable::{Durable, SyncPolicy};
use crate::error::{FabricError, Result};
use crate::fence::FenceEpoch;
use crate::futex::LinuxFutex;
use crate::locator::QueueLocator;
use crate::participant::attach;
use crate::process::ProcessId;
use crate::registry::Mapped;
use crate::segment::SegmentName;

/// Largest encoded [`HandoffState`] the durable copy holds.
const MAX_STATE_LEN: u32 = 256;

/// A locator a handoff record can carry: four words in shared memory.
pub trait HandoffLocator: Copy + Serialize + DeserializeOwned {
    /// The locator as words.
    fn to_words(&self) -> [u64; SLOT_WORDS];
    /// The locator from words.
    fn from_words(words: [u64; SLOT_WORDS]) -> Self;
}

impl HandoffLocator for QueueLocator {
    fn to_words(&self) -> [u64; SLOT_WORDS] {
        [self.lease_id, self.offset, self.generation.value(), 0]
    }

    fn from_words(words: [u64; SLOT_WORDS]) -> Self {
        QueueLocator::new(words[0], words[1], words[2])
    }
}

/// What a handoff record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HandoffState<L> {
    /// The stage the record belongs to.
    pub stage_id: u64,
    /// The current generation.
    pub generation: FenceEpoch,
    /// Where the structure lives in that generation.
    pub locator: L,
}

/// The live part of a record, raised to the durable copy's generation if
/// it was made anew (its segment lost): the generation never goes back.
fn live_at_least<L: HandoffLocator>(
    lease: &BlockLease,
    durable: &mut Durable<HandoffState<L>>,
) -> Result<Mapped<HandoffControl>> {
    let live = live(lease)?;
    let Some(state) = durable.load()? else {
        return Ok(live);
    };
    let stored = state.generation.value();
    let deadline = Instant::now() + RESTORE_WAIT;
    loop {
        let current = live.get().generation();
        if current >= stored {
            return Ok(live);
        }
        if current > 0 {
            return Err(FabricError::Refused(format!(
                "handoff record of lease {} forked: live generation {current}, durable {stored}",
                lease.lease_id()
            )));
        }
        match live
            .get()
            .restore(stored, state.locator.to_words(), me(), is_dead)
        {
            Ok(_) => {
                LinuxFutex.wake_all(low_half(live.get()));
                return Ok(live);
            }
            // Someone else restored or published first: look again.
            Err(HandoffError::Conflict { .. }) => {}
            Err(HandoffError::Busy { pid }) if Instant::now() < deadline => {
                tracing::debug!(pid, "waiting for a handoff restore in progress");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How long opening a record waits for another process's restore.
const RESTORE_WAIT: Duration = Duration::from_secs(2);

/// This process as a handoff publisher: its pid and full identity.
fn me() -> (u32, u64) {
    (std::process::id(), ProcessId::current().pack())
}

/// Whether a BUSY publisher found in the way is gone: by its full
/// identity once it stored it (a recycled pid is not it), else by pid.
fn is_dead(pid: u32, identity: u64) -> bool {
    if identity != 0 {
        !ProcessId::unpack(identity).is_alive()
    } else {
        ProcessId::of(pid).is_none()
    }
}

/// The live part of a record: its segment, created by whoever comes
/// first.
fn live(lease: &BlockLease) -> Result<Mapped<HandoffControl>> {
    let attachment = attach(lease.instance())?;
    let name = SegmentName::new(lease.instance(), &format!("handoff.{}", lease.lease_id()))?;
    let token = attachment.instance_token();
    match Mapped::open(&name, Some(token)) {
        Err(FabricError::NotFound(_)) => match Mapped::create(&name, token) {
            Err(FabricError::AlreadyExists(_)) => Mapped::open(&name, Some(token)),
            created => created,
        },
        opened => opened,
    }
}

/// What writers and readers both hold: the block lease, the live record
/// and the durable copy.
struct Record<L: HandoffLocator> {
    lease: BlockLease,
    live: Mapped<HandoffControl>,
    durable: Durable<HandoffState<L>>,
}

impl<L: HandoffLocator> Record<L> {
    fn open(lease: BlockLease) -> Result<Record<L>> {
        // No fsync: a handoff must survive every process dying, not a
        // reboot (the structures it points at live in /dev/shm), so the
        // relocation path does not wait for the device.
        let mut durable = Durable::open(lease.path(), MAX_STATE_LEN, SyncPolicy::Never)?;
        let live = live_at_least(&lease, &mut durable)?;
        Ok(Record {
            lease,
            live,
            durable,
        })
    }

    /// The live record, after checking the lease, mapped anew if its
    /// segment was removed (and maybe made again): one that is no longer
    /// the named one reaches nobody.
    fn live(&mut self) -> Result<&HandoffControl> {
        self.lease.check()?;
        if !self.live.segment().is_current() {
            self.live = live_at_least(&self.lease, &mut self.durable)?;
        }
        Ok(self.live.get())
    }
}

impl<L: HandoffLocator> Record<L> {
    /// Publishes `locator` as the generation after `state`'s, which then
    /// becomes the new state; on `Conflict`, `state` becomes what is
    /// current.
    fn publish(&mut self, state: &mut HandoffState<L>, locator: L) -> Result<FenceEpoch> {
        let live = self.live()?;
        let published = live.publish(state.generation.value(), locator.to_words(), me(), is_dead);
        match published {
            Ok(generation) => {
                LinuxFutex.wake_all(low_half(live));
                state.generation = FenceEpoch::from_value(generation);
                state.locator = locator;
                // The durable copy, after the CAS: a crash between the two
                // leaves the live record newer, which readers prefer. A
                // failure here leaves the publication made (readers have
                // it) and the durable copy one behind until the next one.
                let durable = &mut self.durable;
                let written = durable.load().and_then(|stored| match stored {
                    Some(s) if s.generation >= state.generation => Ok(()),
                    _ => durable.checkpoint(state),
                });
                if let Err(e) = written {
                    tracing::error!(
                        generation,
                        "handoff published, but its durable copy was not written: {e}"
                    );
                }
                Ok(state.generation)
            }
            Err(e) => {
                if let HandoffError::Conflict { .. } = e {
                    let (generation, words) = live.read();
                    state.generation = FenceEpoch::from_value(generation);
                    state.locator = L::from_words(words);
                }
                Err(e.into())
            }
        }
    }
}

/// Publishes new locators.
pub struct HandoffWriter<L: HandoffLocator> {
    state: HandoffState<L>,
    record: Record<L>,
}

impl<L: HandoffLocator> std::fmt::Debug for HandoffWriter<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandoffWriter")
            .field("stage_id", &self.state.stage_id)
            .field("generation", &self.state.generation)
            .field("lease", &self.record.lease.lease_id())
            .finish()
    }
}

impl<L: HandoffLocator> HandoffWriter<L> {
    /// A writer for the record kept on `lease`, believing `initial` is
    /// current (a `publish` from a stale belief gets `Conflict`).
    ///
    /// # Errors
    /// If the live segment or the durable copy cannot be opened.
    pub fn new(initial: HandoffState<L>, lease: BlockLease) -> Result<HandoffWriter<L>> {
        Ok(HandoffWriter {
            state: initial,
            record: Record::open(lease)?,
        })
    }

    /// Publishes `locator` as the next generation after the one this
    /// writer believes current; returns the new generation.
    ///
    /// # Errors
    /// `Handoff(Conflict)` if another generation is current (this writer
    /// then believes that one: publish again to supersede it);
    /// `Handoff(Busy)` if a live publisher is in the middle; the lease's
    /// errors.
    pub fn publish(&mut self, locator: L) -> Result<FenceEpoch> {
        self.record.publish(&mut self.state, locator)
    }

    /// What this writer believes current.
    pub fn state(&self) -> &HandoffState<L> {
        &self.state
    }

    /// The block lease, for a reader.
    pub fn into_block_lease(self) -> BlockLease {
        self.record.lease
    }
}

/// Reads the current locator, and waits for newer ones.
pub struct HandoffReader<L: HandoffLocator> {
    record: Record<L>,
}

impl<L: HandoffLocator> std::fmt::Debug for HandoffReader<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandoffReader")
            .field("lease", &self.record.lease.lease_id())
            .finish()
    }
}

impl<L: HandoffLocator> HandoffReader<L> {
    /// A reader of the record kept on `lease`.
    ///
    /// # Errors
    /// If the live segment or the durable copy cannot be opened.
    pub fn new(lease: BlockLease) -> Result<HandoffReader<L>> {
        Ok(HandoffReader {
            record: Record::open(lease)?,
        })
    }

    /// The current state: the newer of the live record and the durable
    /// copy (the live one is gone after a reboot, or new and empty).
    ///
    /// # Errors
    /// `InvalidArgument` if nothing was ever published; the lease's and
    /// the file's errors.
    pub fn current(&mut self) -> Result<HandoffState<L>> {
        let (generation, words) = self.record.live()?.read();
        let stored = self.record.durable.load()?;
        match stored {
            Some(state) if state.generation.value() > generation => Ok(state),
            _ if generation > 0 => Ok(HandoffState {
                stage_id: stored.map_or(0, |s| s.stage_id),
                generation: FenceEpoch::from_value(generation),
                locator: L::from_words(words),
            }),
            _ => Err(FabricError::InvalidArgument(format!(
                "nothing published yet on handoff lease {}",
                self.record.lease.lease_id()
            ))),
        }
    }

    /// Publishes `locator` as the generation after `expected` (what the
    /// caller read with [`HandoffReader::current`]); returns the new state.
    /// A reader can publish too: whoever relocates a structure does.
    ///
    /// # Errors
    /// As [`HandoffWriter::publish`]; on `Conflict`, read `current` again.
    pub fn publish(&mut self, expected: HandoffState<L>, locator: L) -> Result<HandoffState<L>> {
        let mut state = expected;
        self.record.publish(&mut state, locator)?;
        Ok(state)
    }

    /// The futex word publications wake (the low half of the live
    /// generation word), with its value now: to sleep on it together with
    /// other words (`grafos_shm_layout::wait::wait_any_with`).
    pub fn futex_word(&self) -> (&AtomicU32, u32) {
        let live = self.record.live.get();
        // The value comes from a 64-bit load (see `low_half`).
        let now = live.word().load(std::sync::atomic::Ordering::Acquire) as u32;
        (low_half(live), now)
    }

    /// The live generation (one atomic load).
    pub fn generation(&self) -> FenceEpoch {
        FenceEpoch::from_value(self.record.live.get().generation())
    }

    /// Waits until a generation newer than `cached` is current, or
    /// `timeout` passes; returns the current state either way.
    ///
    /// # Errors
    /// As [`HandoffReader::current`].
    pub fn wait_newer(
        &mut self,
        cached: FenceEpoch,
        timeout: Option<Duration>,
    ) -> Result<HandoffState<L>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            // The expected futex value comes from the same 64-bit load
            // that gives the generation: every publication changes it.
            let word = self
                .record
                .live
                .get()
                .word()
                .load(std::sync::atomic::Ordering::Acquire);
            let now = self.current()?;
            if now.generation.is_stale(&cached) || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(now);
            }
            // A slice bounds the wait on a record whose segment was made
            // again (its wake-ups go to the new one).
            let slice = Instant::now() + Duration::from_millis(100);
            LinuxFutex.wait(
                low_half(self.record.live.get()),
                word as u32,
                Some(deadline.map_or(slice, |d| d.min(slice))),
            );
        }
    }

    /// The block lease.
    pub fn block_lease(&self) -> &BlockLease {
        &self.record.lease
    }

    /// The block lease, given back.
    pub fn into_block_lease(self) -> BlockLease {
        self.record.lease
    }
}

/// The low half of the handoff word, the futex sleepers wait on.
fn low_half(control: &HandoffControl) -> &AtomicU32 {
    // SAFETY: the word is an 8-aligned AtomicU64 inside `control`, living
    // as long as it; on a little-endian machine (the crate refuses to
    // build elsewhere) its first four bytes are its low half, a valid
    // 4-aligned AtomicU32. Rust's memory model does not define mixed-size
    // atomic accesses; this view is only handed to the kernel as a futex
    // address (FUTEX_WAIT reads the 32-bit word atomically, FUTEX_WAKE
    // reads nothing) and never loaded or stored by us: the value compared
    // comes from a 64-bit load, as `SegmentHeader::fence_futex` does.
    unsafe { &*std::ptr::from_ref(control.word()).cast::<AtomicU32>() }
}
