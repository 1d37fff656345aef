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

use crate::mutant::{self, Mutant};
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
    /// current; `pid` is the publisher's, and `is_dead` judges a BUSY
    /// publisher found in the way (its publication is then reverted).
    ///
    /// # Errors
    /// `Conflict` if another generation is current (before or during this
    /// publication: a publisher judged dead loses); `Busy` if a live
    /// publisher is in the way; `OutOfRange`.
    pub fn publish(
        &self,
        expected: u64,
        locator: [u64; SLOT_WORDS],
        pid: u32,
        is_dead: impl Fn(u32) -> bool,
    ) -> Result<u64, HandoffError> {
        if expected >= MAX_GENERATION || u64::from(pid) > PID_MASK || pid == 0 {
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
                if !is_dead(holder) {
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
        // Release fence: a reader that sees any of the slot stores below
        // also sees the BUSY claim above (see `read`).
        fence(Ordering::Release);
        let next = expected + 1;
        let target = if mutant::active(Mutant::HandoffWriteLiveSlot) {
            expected % 2
        } else {
            next % 2
        };
        for (cell, value) in self.slots[target as usize].iter().zip(locator) {
            cell.store(value, Ordering::Relaxed);
        }
        // Release: readers that see generation `next` see its slot.
        self.word
            .compare_exchange(
                busy,
                next << GEN_SHIFT,
                Ordering::Release,
                Ordering::Relaxed,
            )
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
        assert_eq!(h.publish(0, [1, 2, 3, 4], 7, |_| false), Ok(1));
        assert_eq!(h.read(), (1, [1, 2, 3, 4]));
        // A writer that restarted believing generation 0 cannot roll back.
        assert_eq!(
            h.publish(0, [9; SLOT_WORDS], 8, |_| false),
            Err(HandoffError::Conflict { current: 1 })
        );
        assert_eq!(h.publish(1, [5, 6, 7, 8], 7, |_| false), Ok(2));
        assert_eq!(h.read(), (2, [5, 6, 7, 8]));
        assert_eq!(
            h.publish(2, [0; 4], 0, |_| false),
            Err(HandoffError::OutOfRange)
        );
    }

    #[test]
    fn a_dead_publishers_claim_is_reverted_and_a_live_ones_waited_for() {
        let h = HandoffControl::new();
        h.publish(0, [1; SLOT_WORDS], 7, |_| false).unwrap();
        // Publisher 9 claimed generation 1 -> 2, wrote half a slot, died.
        h.word
            .store(1 << GEN_SHIFT | 9 << PID_SHIFT | BUSY, Ordering::Relaxed);
        h.slots[0][0].store(42, Ordering::Relaxed);
        assert_eq!(h.read(), (1, [1; SLOT_WORDS]), "readers see the live slot");
        assert_eq!(
            h.publish(1, [2; SLOT_WORDS], 7, |_| false),
            Err(HandoffError::Busy { pid: 9 })
        );
        assert_eq!(h.publish(1, [2; SLOT_WORDS], 7, |pid| pid == 9), Ok(2));
        assert_eq!(h.read(), (2, [2; SLOT_WORDS]));
    }
}
