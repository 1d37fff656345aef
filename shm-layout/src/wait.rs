//! Sleeping and waking on 32-bit sequence words in shared memory.
//!
//! Every place where a process may sleep has a [`WaitPoint`]: a futex
//! sequence word and a bitmask of registered sleepers. The protocol is the
//! store-buffering pattern:
//!
//! ```text
//! sleeper                              waker
//! s = seq.load(Acquire)                make the condition true
//! if ready() -> done                   fence(SeqCst)            (B)
//! waiters |= me                        if waiters != 0 {
//! fence(SeqCst)               (A)          seq += 1 (Release)
//! if ready() -> done                       futex_wake(seq)
//! futex_wait(seq, s)                   }
//! ```
//!
//! The fences (A) and (B) order each side's store before its load, so at
//! least one side sees the other: either the sleeper sees the condition, or
//! the waker sees the registration, bumps `seq` and the sleeper's
//! `futex_wait(seq, s)` returns at once or is woken. An uncontended waker
//! therefore pays one fence and one load, no system call.
//!
//! Registrations are per participant (one bit each), so the repair of a
//! dead sleeper clears its bit instead of leaving every later publish paying
//! for a wake-up.

use std::time::Instant;

use crate::mutant::{self, Mutant};
use crate::sync::{AtomicU32, AtomicU64, Ordering, fence, spin_loop};

/// How a process sleeps on a 32-bit word and wakes sleepers on it.
///
/// Linux implements it with `FUTEX_WAIT` / `FUTEX_WAKE` (not private: the
/// word lives in shared memory); the loom models use a Mutex/Condvar stand-in.
pub trait Futex {
    /// Sleeps while `word` holds `expected`, until woken or past `deadline`.
    /// May return early for no reason; callers re-check their condition.
    fn wait(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>);

    /// Sleeps while every `words[i].0` holds `words[i].1`, until one of them
    /// is woken or past `deadline`. May return early for no reason.
    fn wait_any(&self, words: &[(&AtomicU32, u32)], deadline: Option<Instant>);

    /// Wakes every sleeper on `word`.
    fn wake_all(&self, word: &AtomicU32);
}

/// One registered sleeper: a bit in a [`WaitPoint`]'s waiter mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiter(u64);

impl Waiter {
    /// The sleeper in registration slot `slot` (0..64).
    ///
    /// # Panics
    /// If `slot >= 64`.
    pub const fn slot(slot: u32) -> Waiter {
        assert!(slot < 64, "waiter slots are 0..64");
        Waiter(1 << slot)
    }
}

/// A place where processes sleep: a futex sequence word and the mask of
/// registered sleepers (16 bytes; see docs/LAYOUT.md).
#[repr(C)]
#[derive(Debug, Default)]
pub struct WaitPoint {
    /// Futex word, bumped by every change a sleeper waits for.
    seq: AtomicU32,
    /// Reserved, zero.
    reserved: AtomicU32,
    /// Bit `i` set: the participant in slot `i` is (about to be) asleep.
    waiters: AtomicU64,
}

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<WaitPoint>() == 16);

impl WaitPoint {
    /// A wait point with no sleepers (all zero, like fresh shared memory).
    pub fn new() -> WaitPoint {
        WaitPoint::default()
    }

    /// Waits until `ready()` returns true or `deadline` passes.
    ///
    /// Spins `spins` times first (cheap when the condition is near), then
    /// registers `who` and sleeps. Returns whether `ready()` became true.
    pub fn wait_until<F: Futex + ?Sized>(
        &self,
        futex: &F,
        who: Waiter,
        spins: u32,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        for _ in 0..spins {
            if ready() {
                return true;
            }
            spin_loop();
        }
        loop {
            // Acquire pairs with the Release bump in `wake`/`notify`: if we
            // see a bumped value, we also see the change it announced.
            let seen = self.seq.load(Ordering::Acquire);
            if ready() {
                return true;
            }
            self.register(who);
            if ready() {
                self.clear(who);
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.clear(who);
                return false;
            }
            futex.wait(&self.seq, seen, deadline);
            self.clear(who);
        }
    }

    /// Wakes the sleepers, if any, after the caller made their condition
    /// true. Costs one fence and one load when nobody sleeps.
    #[inline]
    pub fn wake<F: Futex + ?Sized>(&self, futex: &F) {
        if !mutant::active(Mutant::WaitSkipWakerFence) {
            // (B): orders the caller's publication before the load of
            // `waiters`; pairs with fence (A) in `register`.
            fence(Ordering::SeqCst);
        }
        if self.waiters.load(Ordering::Relaxed) != 0 {
            self.notify(futex);
        }
    }

    /// Like [`WaitPoint::wake`], for a caller whose publication was a
    /// `SeqCst` read-modify-write (the edge log's header CAS): then a
    /// `SeqCst` load of `waiters` completes the pattern without a fence (in
    /// C++20 terms, the sleeper's fence (A) either precedes this load in
    /// the single total order S, so the load sees the registration, or
    /// follows the SeqCst publication in S, so the sleeper's re-check sees
    /// it). On x86-64 that makes an uncontended publish fence-free. Loom
    /// models `SeqCst` accesses only as `AcqRel`, so under loom this is the
    /// fenced `wake`, which its models check.
    #[inline]
    pub fn wake_after_seqcst_rmw<F: Futex + ?Sized>(&self, futex: &F) {
        #[cfg(loom)]
        self.wake(futex);
        #[cfg(not(loom))]
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.notify(futex);
        }
    }

    /// Bumps the sequence and wakes every sleeper, registered or not. Used
    /// for rare changes (seal, repair, expiry) and by `wake`.
    pub fn notify<F: Futex + ?Sized>(&self, futex: &F) {
        // Release pairs with the Acquire load of `seq` in `wait_until`.
        self.seq.fetch_add(1, Ordering::Release);
        futex.wake_all(&self.seq);
    }

    /// Removes `who`'s registration; the repair of a dead sleeper calls it.
    pub fn clear(&self, who: Waiter) {
        self.waiters.fetch_and(!who.0, Ordering::Relaxed);
    }

    /// Whether any sleeper is registered.
    pub fn has_waiters(&self) -> bool {
        self.waiters.load(Ordering::Relaxed) != 0
    }

    /// The current sequence value (diagnostics, and tests of the protocol).
    pub fn sequence(&self) -> u32 {
        self.seq.load(Ordering::Acquire)
    }

    fn register(&self, who: Waiter) {
        self.waiters.fetch_or(who.0, Ordering::Relaxed);
        if !mutant::active(Mutant::WaitSkipSleeperFence) {
            // (A): orders the registration before the caller's re-check of
            // its condition; pairs with fence (B) in `wake`.
            fence(Ordering::SeqCst);
        }
    }
}

/// Waits until `ready()` returns true or `deadline` passes, sleeping on
/// several wait points at once (an input and a handoff record, say).
///
/// Registers `who` on every point; any `wake` or `notify` on any of them
/// ends the sleep. Returns whether `ready()` became true.
pub fn wait_any<F: Futex + ?Sized>(
    futex: &F,
    points: &[&WaitPoint],
    who: Waiter,
    deadline: Option<Instant>,
    ready: impl FnMut() -> bool,
) -> bool {
    wait_any_with(futex, points, &[], who, deadline, ready)
}

/// Like [`wait_any`], sleeping also on `words`: futex words whose writers
/// wake every sleeper after each change (a handoff record's generation, a
/// segment's fence word), each with the value the caller read *before*
/// its first look at what `ready()` checks, so a change made after that
/// look ends the sleep at once.
pub fn wait_any_with<F: Futex + ?Sized>(
    futex: &F,
    points: &[&WaitPoint],
    words: &[(&AtomicU32, u32)],
    who: Waiter,
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> bool,
) -> bool {
    const MAX_POINTS: usize = 8;
    assert!(
        !points.is_empty() && points.len() + words.len() <= MAX_POINTS,
        "wait_any takes 1 to 8 points and words"
    );
    loop {
        let mut seen = [0u32; MAX_POINTS];
        for (slot, point) in seen.iter_mut().zip(points) {
            *slot = point.seq.load(Ordering::Acquire);
        }
        if ready() {
            return true;
        }
        for point in points {
            point.register(who);
        }
        let clear_all = || points.iter().for_each(|p| p.clear(who));
        if ready() {
            clear_all();
            return true;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            clear_all();
            return false;
        }
        let mut all: [(&AtomicU32, u32); MAX_POINTS] = [(&points[0].seq, 0); MAX_POINTS];
        for (i, point) in points.iter().enumerate() {
            all[i] = (&point.seq, seen[i]);
        }
        all[points.len()..points.len() + words.len()].copy_from_slice(words);
        futex.wait_any(&all[..points.len() + words.len()], deadline);
        clear_all();
    }
}
