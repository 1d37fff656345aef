//! Where a structure lives now: a locator names a lease, an offset in it
//! and the generation it belongs to. Relocation publishes a new locator
//! (through a handoff record) and readers rebind to it.

pub mod handoff;

use serde::{Deserialize, Serialize};

use crate::fence::FenceEpoch;

/// Where a queue lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueueLocator {
    /// The memory lease holding the queue's segment (any process of the
    /// instance opens it by this id).
    pub lease_id: u64,
    /// Byte offset of the queue within the lease's segment body.
    pub offset: u64,
    /// The generation this placement belongs to: a locator of a later
    /// generation supersedes it.
    pub generation: FenceEpoch,
}

impl QueueLocator {
    /// A locator for the queue at `offset` in lease `lease_id`, of
    /// generation number `generation`.
    pub fn new(lease_id: u64, offset: u64, generation: u64) -> QueueLocator {
        QueueLocator {
            lease_id,
            offset,
            generation: FenceEpoch::from_value(generation),
        }
    }

    /// The lease.
    pub fn lease_id(&self) -> u64 {
        self.lease_id
    }

    /// The offset in the lease.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The generation.
    pub fn generation(&self) -> FenceEpoch {
        self.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_what_new_was_given() {
        let l = QueueLocator::new(7, 4096, 3);
        assert_eq!(
            (l.lease_id(), l.offset(), l.generation().value()),
            (7, 4096, 3)
        );
        let moved = QueueLocator::new(8, 0, 4);
        assert!(moved.generation().is_stale(&l.generation()));
    }
}
