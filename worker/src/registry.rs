//! Segments whose body is a block of atomics (the instance's registry and
//! counters, handoff records), mapped.

use std::marker::PhantomData;

use grafos_shm_layout::LayoutError;
use grafos_shm_layout::handoff::{CONTROL_SIZE as HANDOFF_SIZE, HandoffControl};
use grafos_shm_layout::header::{Expect, SegmentKind, TypeDescriptor};
use grafos_shm_layout::registry::{COUNTERS_SIZE, InstanceCounters, REGISTRY_SIZE, Registry};

use crate::error::{FabricError, Result};
use crate::segment::{Segment, SegmentName, SegmentSpec};

/// A body type made only of atomics, valid for any bytes (zeroes
/// included), that fits in a segment of its kind.
///
/// # Safety
/// Every bit pattern of `size_of::<Self>()` bytes is a valid `Self`, its
/// alignment is at most 128, and shared access goes through atomics only.
pub unsafe trait AtomicBody {
    /// The segment kind that holds it.
    const KIND: SegmentKind;
    /// Its size in bytes.
    const SIZE: u64;
}

// SAFETY: `Registry` is `repr(C)` atomics only, 128-aligned at most.
unsafe impl AtomicBody for Registry {
    const KIND: SegmentKind = SegmentKind::Registry;
    const SIZE: u64 = REGISTRY_SIZE;
}

// SAFETY: `InstanceCounters` is `repr(C)` atomics only, 128-aligned.
unsafe impl AtomicBody for InstanceCounters {
    const KIND: SegmentKind = SegmentKind::Counters;
    const SIZE: u64 = COUNTERS_SIZE;
}

// SAFETY: `HandoffControl` is `repr(C)` atomics only, 128-aligned.
unsafe impl AtomicBody for HandoffControl {
    const KIND: SegmentKind = SegmentKind::Handoff;
    const SIZE: u64 = HANDOFF_SIZE;
}

/// A mapped segment whose body is a `T`.
pub struct Mapped<T: AtomicBody> {
    segment: Segment,
    _body: PhantomData<T>,
}

impl<T: AtomicBody> std::fmt::Debug for Mapped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Mapped").field(&self.segment).finish()
    }
}

impl<T: AtomicBody> Mapped<T> {
    /// Creates and activates the segment (zeroed body).
    ///
    /// # Errors
    /// Those of [`Segment::create`].
    pub fn create(name: &SegmentName, instance_token: u64) -> Result<Mapped<T>> {
        let segment = Segment::create(
            name,
            &SegmentSpec {
                kind: T::KIND,
                body_len: T::SIZE,
                lease_id: 0,
                instance_token,
                payload: TypeDescriptor::BYTES,
            },
        )?;
        segment.activate();
        Ok(Mapped {
            segment,
            _body: PhantomData,
        })
    }

    /// Opens and validates the segment; `instance_token` is checked if
    /// given.
    ///
    /// # Errors
    /// Those of [`Segment::open`], and `Layout(TooSmall)` for a body
    /// smaller than `T`.
    pub fn open(name: &SegmentName, instance_token: Option<u64>) -> Result<Mapped<T>> {
        let segment = Segment::open(
            name,
            &Expect {
                kind: Some(T::KIND),
                instance_token,
                payload: None,
            },
        )?;
        if segment.body_len() < T::SIZE {
            return Err(FabricError::Layout {
                name: name.to_string(),
                source: LayoutError::TooSmall {
                    size: segment.body_len(),
                    needed: T::SIZE,
                },
            });
        }
        Ok(Mapped {
            segment,
            _body: PhantomData,
        })
    }

    /// The body.
    pub fn get(&self) -> &T {
        // SAFETY: the body holds at least `T::SIZE` bytes (checked on open,
        // sized on create), starts 256 bytes into a page-aligned mapping
        // (128-aligned), lives as long as `self`, and any bytes are a valid
        // `T` used through atomics only (`AtomicBody`).
        unsafe { &*self.segment.body().as_ptr().cast::<T>() }
    }

    /// The segment.
    pub fn segment(&self) -> &Segment {
        &self.segment
    }
}
