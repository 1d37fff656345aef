//! Shared-memory leases: a segment of the instance's pool, held until its
//! deadline unless renewed.
//!
//! ```no_run
//! use grafos_worker::mem::MemBuilder;
//! # fn main() -> grafos_worker::Result<()> {
//! let lease = MemBuilder::new().min_bytes(1 << 20).lease_secs(30).acquire()?;
//! lease.write_at(0, b"hello")?;
//! lease.renew(30)?;
//! lease.release()?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use grafos_shm_layout::header::{Expect, FenceState};

use crate::control::{LeaseKind, Request};
use crate::error::{FabricError, Result};
use crate::instance::instance_from_env;
use crate::lease::{self, Hold};
use crate::participant::Attachment;
use crate::segment::{Segment, SegmentName};

/// Lease time when none is given.
pub const DEFAULT_LEASE_SECS: u64 = 60;

/// Asks the supervisor for a shared-memory lease.
#[derive(Clone, Debug)]
pub struct MemBuilder {
    instance: String,
    min_bytes: u64,
    lease_secs: u64,
    wait: Option<Duration>,
}

impl Default for MemBuilder {
    fn default() -> Self {
        MemBuilder::new()
    }
}

impl MemBuilder {
    /// A request on the instance `GRAFOS_INSTANCE` names (else `default`)
    /// for a [`DEFAULT_LEASE_SECS`] lease; set its size with `min_bytes`.
    pub fn new() -> MemBuilder {
        MemBuilder {
            instance: instance_from_env(),
            min_bytes: 0,
            lease_secs: DEFAULT_LEASE_SECS,
            wait: None,
        }
    }

    /// The instance to lease from.
    pub fn instance(mut self, instance: &str) -> MemBuilder {
        self.instance = instance.to_owned();
        self
    }

    /// At least this many bytes (rounded up to whole pages).
    pub fn min_bytes(mut self, bytes: u64) -> MemBuilder {
        self.min_bytes = bytes;
        self
    }

    /// Time to live in seconds.
    pub fn lease_secs(mut self, secs: u64) -> MemBuilder {
        self.lease_secs = secs;
        self
    }

    /// If the pool lacks budget, wait up to `wait` for some to come back
    /// instead of failing at once.
    pub fn wait_for_budget(mut self, wait: Duration) -> MemBuilder {
        self.wait = Some(wait);
        self
    }

    /// Leases the segment and maps it.
    ///
    /// # Errors
    /// `NoBudget` (with the free bytes) if the pool cannot cover it;
    /// `InvalidArgument` for a zero or absurd size or TTL; `Disconnected`
    /// if no supervisor runs.
    pub fn acquire(self) -> Result<MemLease> {
        let request = Request::AcquireMem {
            min_bytes: self.min_bytes,
            lease_secs: self.lease_secs,
        };
        let (attachment, grant) =
            lease::acquire(&self.instance, &request, LeaseKind::Mem, self.wait)?;
        MemLease::map(
            &attachment,
            grant.lease_id,
            &grant.location,
            grant.deadline_ms,
        )
        .inspect_err(|_| {
            // Nobody else knows of it: give it back.
            let _ = lease::release(&self.instance, grant.lease_id);
        })
    }
}

/// A leased shared-memory segment, mapped.
///
/// Once the lease expires (or is poisoned) every call returns
/// `LeaseExpired` (or `LeasePoisoned`); the mapping stays valid while the
/// handle lives, so nothing here touches freed memory.
#[derive(Debug)]
pub struct MemLease {
    hold: Hold,
    segment: Segment,
}

impl MemLease {
    /// Opens lease `lease_id` of the instance `GRAFOS_INSTANCE` names (else
    /// `default`), becoming one of its holders.
    ///
    /// # Errors
    /// `UnknownLease`, `LeaseExpired`, `LeasePoisoned`, `Disconnected`.
    pub fn open(lease_id: u64) -> Result<MemLease> {
        MemLease::open_in(&instance_from_env(), lease_id)
    }

    /// Opens lease `lease_id` of `instance`.
    ///
    /// # Errors
    /// As [`MemLease::open`].
    pub fn open_in(instance: &str, lease_id: u64) -> Result<MemLease> {
        let (attachment, grant) = lease::open(instance, lease_id, LeaseKind::Mem)?;
        MemLease::map(&attachment, lease_id, &grant.location, grant.deadline_ms)
            .inspect_err(|_| lease::unhold(instance, lease_id))
    }

    /// Maps a granted lease; the hold becomes the handle's.
    fn map(
        attachment: &Attachment,
        lease_id: u64,
        object: &str,
        deadline_ms: u64,
    ) -> Result<MemLease> {
        let instance = attachment.paths().instance();
        let name = SegmentName::new(instance, object)?;
        let segment = Segment::open(
            &name,
            &Expect {
                instance_token: Some(attachment.instance_token()),
                ..Expect::default()
            },
        )?;
        if segment.fields().lease_id != lease_id {
            return Err(FabricError::InvalidArgument(format!(
                "segment {name} belongs to lease {}, not {lease_id}",
                segment.fields().lease_id
            )));
        }
        Ok(MemLease {
            hold: Hold::new(instance, lease_id, deadline_ms),
            segment,
        })
    }

    /// The lease's id (give it to another process to `open`).
    pub fn lease_id(&self) -> u64 {
        self.hold.lease_id()
    }

    /// Usable bytes (the segment body).
    pub fn len(&self) -> u64 {
        self.segment.body_len()
    }

    /// Whether the body is empty (never, for a granted lease).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The deadline in Unix milliseconds, as of the last acquire, open or
    /// renewal through this handle.
    pub fn deadline_ms(&self) -> u64 {
        self.hold.deadline_ms()
    }

    /// Ok while the lease is active.
    ///
    /// # Errors
    /// `LeaseExpired` or `LeasePoisoned`.
    pub fn check(&self) -> Result<()> {
        match self.segment.header().fence().state {
            FenceState::Active | FenceState::Relocated => Ok(()),
            FenceState::Expired => Err(FabricError::LeaseExpired(self.lease_id())),
            FenceState::Poisoned => Err(FabricError::LeasePoisoned(self.lease_id())),
        }
    }

    /// Moves the deadline to `lease_secs` from now.
    ///
    /// # Errors
    /// `LeaseExpired`, `LeasePoisoned`, `InvalidArgument` for a zero or
    /// absurd TTL, `Disconnected`.
    pub fn renew(&self, lease_secs: u64) -> Result<()> {
        self.check()?;
        self.hold.renew(lease_secs)
    }

    /// Stops holding the lease; when its last holder releases it, the
    /// segment is unlinked and its budget returns to the pool.
    ///
    /// # Errors
    /// `LeaseExpired` or `LeasePoisoned` (the hold is dropped all the
    /// same), `Disconnected`.
    pub fn release(self) -> Result<()> {
        let state = self.check();
        self.hold.release()?;
        state
    }

    /// Copies `buf.len()` bytes at `offset` out of the segment.
    ///
    /// # Errors
    /// `LeaseExpired`, `LeasePoisoned`, or `InvalidArgument` past the end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check()?;
        let start = self.bounds(offset, buf.len())?;
        // SAFETY: `start..start + buf.len()` is inside the mapped body
        // (`bounds`), which stays mapped while `self` lives. Other
        // processes may write those bytes while we copy: shared memory
        // between processes is outside Rust's memory model, and like every
        // shared-memory transport this copies plain bytes, for which any
        // value (torn or not) is valid; callers that need consistency
        // synchronise through atomics of their own.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.segment.body().as_ptr().add(start),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        Ok(())
    }

    /// Copies `data` into the segment at `offset`.
    ///
    /// # Errors
    /// `LeaseExpired`, `LeasePoisoned`, or `InvalidArgument` past the end.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check()?;
        let start = self.bounds(offset, data.len())?;
        // SAFETY: in bounds of the mapped body (`bounds`), which stays
        // mapped while `self` lives; `data` is our own memory, so the
        // ranges do not overlap. Concurrent access by other processes is
        // as for `read_at`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.segment.body().as_ptr().add(start),
                data.len(),
            );
        }
        Ok(())
    }

    /// The segment (for structures placed in the lease; they check its
    /// fence word themselves).
    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    fn bounds(&self, offset: u64, len: usize) -> Result<usize> {
        lease::in_bounds(offset, len, self.len()).map(|()| offset as usize)
    }
}
