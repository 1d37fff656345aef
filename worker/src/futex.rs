//! Linux futexes on words in shared memory.
//!
//! Non-private `FUTEX_WAIT` / `FUTEX_WAKE` (the words are shared between
//! processes), and `futex_waitv` (Linux >= 5.16) for waiting on several
//! words, with a polling fallback on older kernels.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use grafos_shm_layout::wait::Futex;
use rustix::thread::futex;

/// Futex system calls made by this process (waits and wakes), for tests
/// and diagnostics: an uncontended data path makes none.
static SYSCALLS: AtomicU64 = AtomicU64::new(0);

/// Set once `futex_waitv` turned out to be missing.
static NO_WAITV: AtomicBool = AtomicBool::new(false);

/// How often the `futex_waitv` fallback looks at the other words.
const FALLBACK_POLL: Duration = Duration::from_millis(1);

/// The number of futex system calls this process has made.
pub fn futex_syscalls() -> u64 {
    SYSCALLS.load(Ordering::Relaxed)
}

/// The Linux futex.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinuxFutex;

fn relative(deadline: Option<Instant>) -> Option<Option<rustix::time::Timespec>> {
    match deadline {
        None => Some(None),
        Some(d) => {
            let left = d.checked_duration_since(Instant::now())?;
            Some(Some(rustix::time::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            }))
        }
    }
}

impl Futex for LinuxFutex {
    fn wait(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>) {
        let Some(timeout) = relative(deadline) else {
            return;
        };
        SYSCALLS.fetch_add(1, Ordering::Relaxed);
        // EAGAIN (value changed), EINTR and ETIMEDOUT all mean "look again".
        let _ = futex::wait(word, futex::Flags::empty(), expected, timeout.as_ref());
    }

    fn wait_any(&self, words: &[(&AtomicU32, u32)], deadline: Option<Instant>) {
        if !NO_WAITV.load(Ordering::Relaxed) {
            let mut waits = [futex::Wait::new(); 8];
            for (slot, (word, expected)) in waits.iter_mut().zip(words) {
                slot.val = u64::from(*expected);
                slot.uaddr = futex::WaitPtr::new(word.as_ptr().cast());
                slot.flags = futex::WaitFlags::SIZE_U32;
            }
            // futex_waitv takes an absolute CLOCK_MONOTONIC deadline, the
            // clock `Instant` uses on Linux.
            let absolute = deadline.map(|d| {
                let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
                let left = d.saturating_duration_since(Instant::now());
                let nanos = now.tv_nsec as u128 + u128::from(left.subsec_nanos());
                rustix::time::Timespec {
                    tv_sec: now.tv_sec + left.as_secs() as i64 + (nanos / 1_000_000_000) as i64,
                    tv_nsec: (nanos % 1_000_000_000) as i64,
                }
            });
            SYSCALLS.fetch_add(1, Ordering::Relaxed);
            match futex::waitv(
                &waits[..words.len()],
                futex::WaitvFlags::empty(),
                absolute.as_ref(),
                rustix::time::ClockId::Monotonic,
            ) {
                Err(rustix::io::Errno::NOSYS) => NO_WAITV.store(true, Ordering::Relaxed),
                _ => return,
            }
        }
        // Fallback: sleep on the first word, looking at the others every
        // millisecond (callers re-check their condition and loop).
        let poll = Instant::now() + FALLBACK_POLL;
        let until = deadline.map_or(poll, |d| d.min(poll));
        if words.iter().all(|(w, v)| w.load(Ordering::Acquire) == *v) {
            self.wait(words[0].0, words[0].1, Some(until));
        }
    }

    fn wake_all(&self, word: &AtomicU32) {
        SYSCALLS.fetch_add(1, Ordering::Relaxed);
        let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
    }
}
