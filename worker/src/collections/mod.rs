//! Shared-memory collections.
//!
//! * [`queue`]: the FabricQueue, a bounded MPMC work queue.

pub mod queue;
