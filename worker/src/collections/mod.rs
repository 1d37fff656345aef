//! Shared-memory collections.
//!
//! * [`queue`]: the FabricQueue, a bounded MPMC work queue.
//! * [`durable`]: checkpoints in a file, safe against torn writes.

pub mod durable;
pub mod queue;
