//! The bytes grafos processes agree on, and the lock-free algorithms that
//! run on them.
//!
//! Nothing here spawns a process, opens a socket or maps memory: the
//! algorithms work on a control block and a [`edge::RingBytes`] region, so
//! the same code runs on a mapped segment (in `grafos-worker`) and, under
//! `--cfg loom`, on a heap model ([`heap`]). Every value read from shared
//! memory is validated; a scribbled segment yields errors, never UB.
//!
//! docs/LAYOUT.md specifies every byte; the `const` asserts beside each
//! struct keep this code and that document in step.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, missing_docs)]

pub mod crash;
pub mod edge;
pub mod error;
pub mod handoff;
pub mod header;
pub mod heap;
pub mod map;
pub mod mutant;
pub mod queue;
pub mod registry;
pub mod sync;
pub mod topic;
pub mod wait;

pub use error::LayoutError;
