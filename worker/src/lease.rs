//! What memory and block leases share: acquiring (waiting for budget if
//! asked), opening, renewing and releasing through the supervisor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::{LeaseGrant, LeaseKind, Reply, Request};
use crate::error::{FabricError, Result};
use crate::participant::{Attachment, attach};

/// How often an acquire that waits for budget asks again.
const BUDGET_RETRY: Duration = Duration::from_millis(10);

/// Sends an acquire request, asking again while the pool lacks budget and
/// `wait` has not run out.
pub(crate) fn acquire(
    instance: &str,
    request: &Request,
    kind: LeaseKind,
    wait: Option<Duration>,
) -> Result<(Arc<Attachment>, LeaseGrant)> {
    let attachment = attach(instance)?;
    let deadline = wait.and_then(|w| Instant::now().checked_add(w));
    loop {
        match attachment.call(request) {
            Err(FabricError::NoBudget { .. }) if deadline.is_some_and(|d| Instant::now() < d) => {
                std::thread::sleep(BUDGET_RETRY);
            }
            result => return Ok((attachment.clone(), grant(result?, kind)?)),
        }
    }
}

/// Becomes a holder of lease `lease_id`.
pub(crate) fn open(
    instance: &str,
    lease_id: u64,
    kind: LeaseKind,
) -> Result<(Arc<Attachment>, LeaseGrant)> {
    let attachment = attach(instance)?;
    let grant = grant(attachment.call(&Request::Open { lease_id })?, kind)?;
    Ok((attachment, grant))
}

/// Moves the lease's deadline to `lease_secs` from now; returns the new
/// deadline in Unix milliseconds.
pub(crate) fn renew(attachment: &Arc<Attachment>, lease_id: u64, lease_secs: u64) -> Result<u64> {
    match attachment.call(&Request::Renew {
        lease_id,
        lease_secs,
    })? {
        Reply::Renewed { deadline_ms } => Ok(deadline_ms),
        other => Err(unexpected(&other)),
    }
}

/// Stops holding the lease.
pub(crate) fn release(attachment: &Arc<Attachment>, lease_id: u64) -> Result<()> {
    match attachment.call(&Request::Release { lease_id })? {
        Reply::Done => Ok(()),
        other => Err(unexpected(&other)),
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
