//! Process identities that survive pid reuse.

use std::fmt;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

/// A process: its pid and its start time (clock ticks after boot), packed
/// into a non-zero `u64` for role words in shared memory:
/// `pid << 40 | (start_time & (2^40 - 1))`.
///
/// A recycled pid has a later start time, so a dead holder never looks
/// alive again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks after boot (field 22 of `/proc/PID/stat`),
    /// truncated to 40 bits.
    pub start_time: u64,
}

const START_BITS: u32 = 40;
const START_MASK: u64 = (1 << START_BITS) - 1;

impl ProcessId {
    /// The calling process.
    ///
    /// # Panics
    /// If `/proc/self/stat` cannot be read (no procfs).
    pub fn current() -> ProcessId {
        let pid = std::process::id();
        let (_, start) = stat(pid)
            .ok()
            .flatten()
            .expect("/proc/self/stat is readable");
        ProcessId {
            pid,
            start_time: start & START_MASK,
        }
    }

    /// The process `pid` now, if it runs.
    pub fn of(pid: u32) -> Option<ProcessId> {
        let (state, start) = stat(pid).ok().flatten()?;
        (state != 'Z' && state != 'X').then_some(ProcessId {
            pid,
            start_time: start & START_MASK,
        })
    }

    /// Packs into a role word.
    pub fn pack(self) -> u64 {
        (u64::from(self.pid) << START_BITS) | (self.start_time & START_MASK)
    }

    /// Unpacks a role word.
    pub fn unpack(raw: u64) -> ProcessId {
        ProcessId {
            pid: (raw >> START_BITS) as u32,
            start_time: raw & START_MASK,
        }
    }

    /// Whether this process is alive but stopped (SIGSTOP, or stopped by
    /// a tracer such as a debugger).
    pub fn is_stopped(self) -> bool {
        matches!(stat(self.pid), Ok(Some((state, start))) if start & START_MASK == self.start_time && (state == 'T' || state == 't'))
    }

    /// Whether this process is still running (not exited, not a zombie).
    /// A `/proc` that cannot be read for another reason (no file
    /// descriptors left, no memory, `hidepid`) says nothing, so the
    /// process counts as alive: judging the living dead would let another
    /// process take over its locks and reuse what it reads.
    pub fn is_alive(self) -> bool {
        match stat(self.pid) {
            Ok(Some((state, start))) => {
                start & START_MASK == self.start_time && state != 'Z' && state != 'X'
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(pid = self.pid, "cannot tell whether the process lives: {e}");
                true
            }
        }
    }
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} (started at tick {})", self.pid, self.start_time)
    }
}

/// Forks of this process image so far, as seen by each child (a child's
/// count is its parent's plus one): what tells a forked child that
/// identities cached by its parent are not its own.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn forked_child() {
    // Runs in the child right after `fork`; an atomic add is
    // async-signal-safe.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// The number of forks between the original process image and this
/// process (0 unless this is a forked child): cheap to compare with a
/// value cached earlier.
pub(crate) fn fork_generation() -> u64 {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a child handler that only does an atomic add;
        // the function lives as long as the program.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
        assert_eq!(rc, 0, "pthread_atfork failed");
    });
    FORKS.load(Ordering::Relaxed)
}

/// The calling process's packed identity (cached, and worked out again in
/// a forked child), for role and holder words.
pub(crate) fn me() -> u64 {
    static TOKEN: AtomicU64 = AtomicU64::new(0);
    static GENERATION: AtomicU64 = AtomicU64::new(0);
    let generation = fork_generation();
    // The cached generation is stored after the token and loaded before
    // it (Release / Acquire): a token read after a matching generation is
    // the one worked out in this process.
    if GENERATION.load(Ordering::Acquire) == generation {
        let token = TOKEN.load(Ordering::Acquire);
        if token != 0 {
            return token;
        }
    }
    let token = ProcessId::current().pack();
    TOKEN.store(token, Ordering::Release);
    GENERATION.store(generation, Ordering::Release);
    token
}

/// Whether the process a packed identity names is gone.
pub(crate) fn is_dead(owner: u64) -> bool {
    !ProcessId::unpack(owner).is_alive()
}

/// State letter and start time from `/proc/PID/stat`; `Ok(None)` when no
/// such process exists; an error when `/proc` could not be read (or made
/// no sense), which says nothing about the process.
fn stat(pid: u32) -> std::io::Result<Option<(char, u64)>> {
    let text = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => text,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ESRCH) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let parsed = parse_stat(&text);
    if parsed.is_none() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat does not parse"),
        ));
    }
    Ok(parsed)
}

/// State letter and start time from the text of a `stat` file.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start behind the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 3.. follow; start time is field 22, the 20th after the name.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive_and_round_trips() {
        let me = ProcessId::current();
        assert!(me.is_alive());
        assert_eq!(ProcessId::unpack(me.pack()), me);
        assert_ne!(me.pack(), 0);
    }

    #[test]
    fn a_reaped_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessId {
            pid: child.id(),
            start_time: stat(child.id()).ok().flatten().map_or(0, |s| s.1) & START_MASK,
        };
        child.wait().unwrap();
        assert!(!id.is_alive());
    }

    #[test]
    fn same_pid_other_start_time_is_dead() {
        let me = ProcessId::current();
        assert!(
            !ProcessId {
                start_time: me.start_time + 1,
                ..me
            }
            .is_alive()
        );
    }
}
