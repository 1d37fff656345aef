//! What memory and block leases share: acquiring (waiting for budget if
//! asked), opening, renewing, releasing and dropping holds through the
//! supervisor, and the process's count of its holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::control::{LeaseGrant, LeaseKind, Reply, Request};
use crate::error::{FabricError, Result};
use crate::participant::{Attachment, attach, call, note_hold, note_unhold};

/// How often an acquire that waits for budget asks again.
const BUDGET_RETRY: Duration = Duration::from_millis(10);

/// Sends an acquire request, asking again while the pool lacks budget and
/// `wait` has not run out. The grant counts as one hold of this process.
pub(crate) fn acquire(
    instance: &str,
    request: &Request,
    kind: LeaseKind,
    wait: Option<Duration>,
) -> Result<(Arc<Attachment>, LeaseGrant)> {
    let deadline = wait.and_then(|w| Instant::now().checked_add(w));
    loop {
        match call(instance, request) {
            Err(FabricError::NoBudget { .. }) if deadline.is_some_and(|d| Instant::now() < d) => {
                std::thread::sleep(BUDGET_RETRY);
            }
            result => {
                let grant = grant(result?, kind)?;
                note_hold(instance, grant.lease_id);
                return Ok((attach(instance)?, grant));
            }
        }
    }
}

/// Becomes a holder of lease `lease_id` (one more hold of this process).
pub(crate) fn open(
    instance: &str,
    lease_id: u64,
    kind: LeaseKind,
) -> Result<(Arc<Attachment>, LeaseGrant)> {
    let reply = call(instance, &Request::Open { lease_id })?;
    note_hold(instance, lease_id);
    match grant(reply, kind) {
        Ok(grant) => Ok((attach(instance)?, grant)),
        Err(e) => {
            unhold(instance, lease_id);
            Err(e)
        }
    }
}

/// Moves the lease's deadline to `lease_secs` from now; returns the new
/// deadline in Unix milliseconds.
pub(crate) fn renew(instance: &str, lease_id: u64, lease_secs: u64) -> Result<u64> {
    match call(
        instance,
        &Request::Renew {
            lease_id,
            lease_secs,
        },
    )? {
        Reply::Renewed { deadline_ms } => Ok(deadline_ms),
        other => Err(unexpected(&other)),
    }
}

/// Gives one hold back, ending the lease if it was the last.
pub(crate) fn release(instance: &str, lease_id: u64) -> Result<()> {
    note_unhold(instance, lease_id);
    match call(instance, &Request::Release { lease_id })? {
        Reply::Done => Ok(()),
        other => Err(unexpected(&other)),
    }
}

/// Drops one hold, leaving the lease to its deadline (a handle went away
/// without `release`). Best effort: with no supervisor to tell, the hold
/// ends with the process.
pub(crate) fn unhold(instance: &str, lease_id: u64) {
    note_unhold(instance, lease_id);
    if let Err(e) = call(instance, &Request::Unhold { lease_id }) {
        tracing::debug!(lease_id, "unhold: {e}");
    }
}

/// One handle's hold on a lease: it renews, it releases (ending the lease
/// if it was the last hold), and if its handle goes without `release`, it
/// drops the hold and leaves the lease to its deadline.
#[derive(Debug)]
pub(crate) struct Hold {
    instance: String,
    lease_id: u64,
    /// As of the last acquire, open or renewal through this hold (atomic:
    /// handles that share a hold across threads renew through `&self`).
    deadline_ms: AtomicU64,
    released: bool,
}

impl Hold {
    /// The hold a grant of lease `lease_id` gave this process.
    pub(crate) fn new(instance: &str, lease_id: u64, deadline_ms: u64) -> Hold {
        Hold {
            instance: instance.to_owned(),
            lease_id,
            deadline_ms: AtomicU64::new(deadline_ms),
            released: false,
        }
    }

    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    pub(crate) fn lease_id(&self) -> u64 {
        self.lease_id
    }

    pub(crate) fn deadline_ms(&self) -> u64 {
        self.deadline_ms.load(Ordering::Relaxed)
    }

    /// Moves the deadline to `lease_secs` from now.
    pub(crate) fn renew(&self, lease_secs: u64) -> Result<()> {
        // The supervisor's answer, even if earlier than before (a shorter
        // renewal); two renewals racing differ by their requests' gap.
        let deadline = renew(&self.instance, self.lease_id, lease_secs)?;
        self.deadline_ms.store(deadline, Ordering::Relaxed);
        Ok(())
    }

    /// Gives the hold back, ending the lease if it was the last.
    pub(crate) fn release(mut self) -> Result<()> {
        self.released = true;
        release(&self.instance, self.lease_id)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.released {
            unhold(&self.instance, self.lease_id);
        }
    }
}

/// Checks that `len` bytes at `offset` fit a lease of `size` bytes.
pub(crate) fn in_bounds(offset: u64, len: usize, size: u64) -> Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(FabricError::InvalidArgument(format!(
            "{len} bytes at offset {offset} overrun the lease's {size} bytes"
        ))),
    }
}

fn grant(reply: Reply, kind: LeaseKind) -> Result<LeaseGrant> {
    match reply {
        Reply::Lease(grant) if grant.kind == kind => Ok(grant),
        Reply::Lease(grant) => Err(FabricError::InvalidArgument(format!(
            "lease {} is a {:?} lease, not {kind:?}",
            grant.lease_id, grant.kind
        ))),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(reply: &Reply) -> FabricError {
    FabricError::Refused(format!("unexpected reply {reply:?}"))
}
