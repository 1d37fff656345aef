//! Shared-memory collections.
//!
//! * [`queue`]: the FabricQueue, a bounded MPMC work queue.
//! * [`durable`]: checkpoints in a file, safe against torn writes.

pub mod durable;
pub mod map;
pub mod queue;

use crate::error::{FabricError, Result};

/// A value typed queues and edges carry, stored as bytes.
pub trait Item: Sized {
    /// The value's bytes.
    fn to_bytes(&self) -> std::borrow::Cow<'_, [u8]>;

    /// The value from its bytes.
    ///
    /// # Errors
    /// `Codec` if the bytes are not a value of this type.
    fn from_bytes(bytes: &[u8]) -> Result<Self>;
}

impl Item for Vec<u8> {
    fn to_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(bytes.to_vec())
    }
}

impl Item for String {
    fn to_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.as_bytes())
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self> {
        String::from_utf8(bytes.to_vec()).map_err(|e| FabricError::Codec(e.to_string()))
    }
}
