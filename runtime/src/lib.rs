//! The grafos supervisor and the pieces of the `grafos` command-line tool.
//!
//! * [`supervisor`]: the state of an instance's pool, leases and
//!   participants, and the answers to control requests.
//! * [`serve`]: the event loop around it (control socket, pidfds, reaper).
//! * [`up`]: starting (in the foreground or detached) and shutting down.
//! * [`topology`], [`group`]: `grafos run`'s workers and their supervision.
//! * [`status`]: what `grafos status` reads from shared memory.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, missing_docs)]

pub mod group;
pub mod run;
pub mod serve;
pub mod status;
pub mod supervisor;
pub mod topology;
pub mod up;
