//! The library a grafos worker process links.
//!
//! * [`mem`], [`block`]: leases of shared memory and block storage from
//!   the instance's supervisor; [`leasekit`] renews them.
//! * [`fence`], [`locator`]: generations and where a relocatable
//!   structure lives now.
//! * [`participant`]: this process as a participant of an instance.
//! * [`control`]: the protocol spoken with the supervisor.
//! * [`segment`]: POSIX shared-memory segments with a validated header.
//! * [`collections::queue`]: the FabricQueue, a bounded MPMC work queue
//!   whose claims survive their claimant's death.
//! * [`edge`]: edge logs, the single-producer single-consumer queue with a
//!   committed position (records survive a consumer crash).
//! * [`pipeline`]: relocatable edges, which move to a fresh segment and
//!   rebind both ends when theirs is lost.
//! * [`stream`]: pipelines of stages joined by relocatable edges, as
//!   threads or as worker processes.
//! * [`mq`]: topics (partitions are multi-producer ring logs), producers,
//!   consumers and offset stores.
//! * [`kv`]: a small durable key-value store on a block lease.
//! * [`store`]: object addresses, `fabric://<instance>/<bucket>/<key>`.
//! * [`futex`]: futex waits on words in shared memory.
//! * [`process`]: process identities that survive pid reuse.
//!
//! Shared memory is untrusted input: everything read from a segment is
//! validated, and garbage yields [`FabricError`]s, never undefined
//! behaviour. (Truncating another process's segment is outside that
//! promise: segments are mode 0600 and only their creator sizes them.)
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, missing_docs)]

// Every shared layout (and the futex views of 64-bit words) is
// little-endian.
#[cfg(target_endian = "big")]
compile_error!("grafos's shared-memory layouts are little-endian");

pub mod block;
pub mod collections;
pub mod control;
pub mod drain;
pub mod edge;
pub mod error;
pub mod fence;
pub mod futex;
pub mod host;
pub mod instance;
pub mod jobs;
pub mod kv;
mod lease;
pub mod leasekit;
pub mod locator;
mod mapped;
pub mod mem;
pub mod mq;
pub mod participant;
pub mod pipeline;
pub mod process;
pub mod registry;
pub mod segment;
pub mod store;
pub mod stream;

pub use error::{FabricError, Result};
pub use grafos_shm_layout as layout;
