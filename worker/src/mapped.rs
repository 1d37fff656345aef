//! Regions of mapped segments as the algorithms see them, and small
//! helpers shared by the handles that run them.

use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use grafos_shm_layout::edge::RingBytes;
use grafos_shm_layout::header::FenceState;

use crate::error::{FabricError, Result};
use crate::mem::MemLease;
use crate::segment::Segment;

/// The deadline `timeout` from now; a timeout too large to represent
/// (`Duration::MAX`, say) means no deadline.
pub(crate) fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// A byte region inside a mapped segment (an edge log's ring, a queue's
/// slots).
pub(crate) struct MappedRing {
    base: NonNull<u8>,
    len: u64,
}

impl MappedRing {
    /// The `len` bytes at `base`, which must stay mapped while this lives
    /// (the owner keeps the `Segment` beside it).
    pub(crate) fn new(base: NonNull<u8>, len: u64) -> MappedRing {
        MappedRing { base, len }
    }

    /// The `len` bytes at `off`, borrowed in place.
    ///
    /// # Safety
    /// `off + len <= self.len()`, and nobody writes those bytes while the
    /// slice lives.
    pub(crate) unsafe fn bytes(&self, off: u64, len: u64) -> &[u8] {
        debug_assert!(off + len <= self.len);
        // SAFETY: in bounds of the mapping per the caller, which also rules
        // out writers for the slice's life.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(off as usize), len as usize) }
    }

    /// The `len` bytes at `off`, to write in place.
    ///
    /// # Safety
    /// `off + len <= self.len()`, and nobody else reads or writes those
    /// bytes while the slice lives.
    // Shared memory: the mapping is shared by design; exclusive access to
    // these bytes is the protocol's promise, stated by the caller.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn bytes_mut(&self, off: u64, len: u64) -> &mut [u8] {
        debug_assert!(off + len <= self.len);
        // SAFETY: in bounds of the mapping per the caller, which also makes
        // this the only access to those bytes for the slice's life.
        unsafe {
            std::slice::from_raw_parts_mut(self.base.as_ptr().add(off as usize), len as usize)
        }
    }
}

// SAFETY: `read`/`write` copy exactly `off..off + n` of the mapping, which
// the owning `Segment` keeps alive; callers guarantee the bounds.
unsafe impl RingBytes for MappedRing {
    fn len(&self) -> u64 {
        self.len
    }

    unsafe fn header(&self, off: u64) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= self.len);
        // SAFETY: in bounds per the caller; the ring starts 128-aligned and
        // `off` is 8-aligned, so the word is aligned; an AtomicU64 is valid
        // for any bytes, and shared memory is only accessed through atomics
        // or through bytes the protocol assigns to one side.
        unsafe { &*self.base.as_ptr().add(off as usize).cast::<AtomicU64>() }
    }

    unsafe fn write(&self, off: u64, src: &[u8]) {
        debug_assert!(off + src.len() as u64 <= self.len);
        // SAFETY: in bounds per the caller; the edge protocol gives the
        // producer these bytes exclusively.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                self.base.as_ptr().add(off as usize),
                src.len(),
            )
        };
    }

    unsafe fn read(&self, off: u64, dst: &mut [u8]) {
        debug_assert!(off + dst.len() as u64 <= self.len);
        // SAFETY: in bounds per the caller; the producer does not write
        // published, uncommitted bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(off as usize),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
    }
}

/// What keeps a structure's segment mapped: a lease hold for workers; the
/// bare segment for the supervisor, which owns the leases and must not ask
/// itself for holds.
pub(crate) enum Backing {
    Lease(MemLease),
    Segment(Segment),
}

impl Backing {
    pub(crate) fn segment(&self) -> &Segment {
        match self {
            Backing::Lease(lease) => lease.segment(),
            Backing::Segment(segment) => segment,
        }
    }

    pub(crate) fn lease_id(&self) -> u64 {
        self.segment().fields().lease_id
    }

    pub(crate) fn len(&self) -> u64 {
        self.segment().body_len()
    }

    /// Ok while the lease is active.
    pub(crate) fn check(&self) -> Result<()> {
        match self {
            Backing::Lease(lease) => lease.check(),
            Backing::Segment(segment) => match segment.header().fence().state {
                FenceState::Active | FenceState::Relocated => Ok(()),
                FenceState::Expired => Err(FabricError::LeaseExpired(self.lease_id())),
                FenceState::Poisoned => Err(FabricError::LeasePoisoned(self.lease_id())),
            },
        }
    }
}
