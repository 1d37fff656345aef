//! Draining on SIGTERM: a worker started by `grafos run` is stopped with
//! SIGTERM (and SIGKILL after a grace period). A worker that installs a
//! [`Drain`] gets a flag instead of dying: it finishes the record in hand,
//! checkpoints, commits and exits 0.
//!
//! ```no_run
//! use std::time::Duration;
//! use grafos_worker::drain::Drain;
//! # fn handle(_: Vec<u8>) {}
//! # fn main() -> grafos_worker::Result<()> {
//! # let queue: grafos_worker::collections::queue::FabricQueue = todo!();
//! let drain = Drain::install()?;
//! while !drain.requested() {
//!     // Wait in short slices, so a SIGTERM is noticed within one.
//!     match queue.pop(Some(Duration::from_millis(100))) {
//!         Ok(record) => handle(record),
//!         Err(grafos_worker::layout::queue::QueueError::TimedOut) => {}
//!         Err(e) => return Err(e.into()),
//!     }
//! }
//! // checkpoint, commit, then return: exit code 0.
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{FabricError, Result};

/// Set by the signal handler.
static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// The process's drain flag, raised by SIGTERM or SIGINT.
#[derive(Clone, Copy, Debug)]
pub struct Drain(());

impl Drain {
    /// Catches SIGTERM and SIGINT from now on: they raise the flag instead
    /// of ending the process.
    ///
    /// # Errors
    /// `Io` if a handler cannot be installed.
    pub fn install() -> Result<Drain> {
        for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
            // SAFETY: the handler only stores to an atomic, which is
            // async-signal-safe; the sigaction struct is fully initialised
            // from zeroes, its mask emptied by sigemptyset.
            let rc = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_stop_signal as *const () as usize;
                // Interrupted system calls restart: the flag is for the
                // worker's loop to see, not an error for its I/O.
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(FabricError::Io {
                    op: "sigaction",
                    target: name.into(),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(Drain(()))
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        REQUESTED.load(Ordering::Relaxed)
    }
}

/// The id `grafos run` gave this worker (`GRAFOS_WORKER_ID`: the worker's
/// name, and `.N` for replica N of several).
pub fn worker_id() -> Option<String> {
    std::env::var("GRAFOS_WORKER_ID").ok()
}
