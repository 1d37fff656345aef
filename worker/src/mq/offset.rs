//! Where consumer groups keep committed offsets: [`MemOffsetStore`] in
//! the process, or [`crate::kv::FabricKvStore`] on a block lease (a
//! restarted consumer resumes where it committed).

use std::collections::HashMap;
use std::convert::Infallible;

use crate::error::FabricError;

/// A store of committed offsets, by topic, group and partition.
pub trait OffsetStore {
    /// Why a load or save fails (`Infallible` for stores that cannot).
    type Error: Into<FabricError>;

    /// The offset committed for `(topic, group, partition)`, if any.
    ///
    /// # Errors
    /// The store could not be read.
    fn committed(
        &self,
        topic: &str,
        group: &str,
        partition: u32,
    ) -> Result<Option<u64>, Self::Error>;

    /// Saves `offsets` (`(partition, next offset to read)`) for `topic`
    /// and `group`, all or none.
    ///
    /// # Errors
    /// The store could not be written.
    fn save(&mut self, topic: &str, group: &str, offsets: &[(u32, u64)])
    -> Result<(), Self::Error>;
}

/// Committed offsets in this process's memory (lost when it exits).
#[derive(Clone, Debug, Default)]
pub struct MemOffsetStore {
    offsets: HashMap<(String, String, u32), u64>,
}

impl MemOffsetStore {
    /// An empty store.
    pub fn new() -> MemOffsetStore {
        MemOffsetStore::default()
    }

    /// The offset committed for `(topic, group, partition)`, if any.
    pub fn get(&self, topic: &str, group: &str, partition: u32) -> Option<u64> {
        self.offsets
            .get(&(topic.to_string(), group.to_string(), partition))
            .copied()
    }
}

impl OffsetStore for MemOffsetStore {
    type Error = Infallible;

    fn committed(
        &self,
        topic: &str,
        group: &str,
        partition: u32,
    ) -> Result<Option<u64>, Infallible> {
        Ok(self.get(topic, group, partition))
    }

    fn save(&mut self, topic: &str, group: &str, offsets: &[(u32, u64)]) -> Result<(), Infallible> {
        for &(partition, offset) in offsets {
            self.offsets
                .insert((topic.to_string(), group.to_string(), partition), offset);
        }
        Ok(())
    }
}
