//! Keeping leases alive: a [`RenewalManager`] renews the leases registered
//! with it whenever [`RenewalManager::tick`] finds them due. Stop ticking
//! (the process hangs, exits or dies) and they expire: that is the point
//! of a lease.
//!
//! ```no_run
//! use grafos_worker::leasekit::{RenewalManager, RenewalPolicy};
//! use grafos_worker::mem::MemBuilder;
//! use grafos_worker::host::unix_time_secs;
//! # fn main() -> grafos_worker::Result<()> {
//! let lease = MemBuilder::new().min_bytes(4096).lease_secs(10).acquire()?;
//! let mut renewals = RenewalManager::new();
//! renewals.register(lease.lease_id(), lease.deadline_ms() / 1000, RenewalPolicy::new(10));
//! let summary = renewals.tick(unix_time_secs());
//! assert!(summary.failed.is_empty());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use crate::error::{FabricError, Result};
use crate::instance::instance_from_env;
use crate::lease;

/// When and how a lease is renewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewalPolicy {
    /// Each renewal moves the deadline this many seconds past now.
    pub lease_secs: u64,
    /// Renew once the deadline is this close (seconds).
    pub renew_before_secs: u64,
}

impl RenewalPolicy {
    /// Renews to `lease_secs` from now once a third of that is left.
    pub fn new(lease_secs: u64) -> RenewalPolicy {
        RenewalPolicy {
            lease_secs,
            renew_before_secs: lease_secs.div_ceil(3),
        }
    }

    /// Renews once the deadline is `secs` away.
    pub fn renew_before(mut self, secs: u64) -> RenewalPolicy {
        self.renew_before_secs = secs;
        self
    }
}

/// What one [`RenewalManager::tick`] did.
#[derive(Debug, Default)]
pub struct RenewalSummary {
    /// Leases renewed.
    pub renewed: Vec<u64>,
    /// Leases whose renewal failed and that are still registered (a
    /// transient failure: the next tick tries again).
    pub failed: Vec<(u64, FabricError)>,
    /// Leases that cannot be renewed any more (expired, poisoned, gone):
    /// no longer registered.
    pub lost: Vec<(u64, FabricError)>,
    /// Registered leases whose deadline is within their renewal window
    /// after this tick (renewals failing, or a window larger than the TTL).
    pub expiring_soon: Vec<u64>,
}

#[derive(Debug)]
struct Registration {
    deadline_secs: u64,
    policy: RenewalPolicy,
}

/// Renews registered leases when they come due.
#[derive(Debug)]
pub struct RenewalManager {
    instance: String,
    leases: BTreeMap<u64, Registration>,
}

impl Default for RenewalManager {
    fn default() -> Self {
        RenewalManager::new()
    }
}

impl RenewalManager {
    /// A manager for leases of the instance `GRAFOS_INSTANCE` names (else
    /// `default`).
    pub fn new() -> RenewalManager {
        RenewalManager::for_instance(&instance_from_env())
    }

    /// A manager for leases of `instance`.
    pub fn for_instance(instance: &str) -> RenewalManager {
        RenewalManager {
            instance: instance.to_owned(),
            leases: BTreeMap::new(),
        }
    }

    /// Renews `lease_id` (whose deadline is `deadline_secs`, Unix seconds)
    /// by `policy` from now on; registering it again replaces the entry.
    pub fn register(&mut self, lease_id: u64, deadline_secs: u64, policy: RenewalPolicy) {
        self.leases.insert(
            lease_id,
            Registration {
                deadline_secs,
                policy,
            },
        );
    }

    /// Stops renewing `lease_id`; whether it was registered.
    pub fn unregister(&mut self, lease_id: u64) -> bool {
        self.leases.remove(&lease_id).is_some()
    }

    /// Leases registered now.
    pub fn registered(&self) -> impl Iterator<Item = u64> + '_ {
        self.leases.keys().copied()
    }

    /// Renews every lease due at `now_secs` (Unix seconds).
    pub fn tick(&mut self, now_secs: u64) -> RenewalSummary {
        let mut summary = RenewalSummary::default();
        let due: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, r)| r.deadline_secs.saturating_sub(now_secs) <= r.policy.renew_before_secs)
            .map(|(&id, _)| id)
            .collect();
        for lease_id in due {
            let policy = self.leases[&lease_id].policy;
            match self.renew(lease_id, policy.lease_secs) {
                Ok(deadline_ms) => {
                    self.leases
                        .get_mut(&lease_id)
                        .expect("due leases are registered")
                        .deadline_secs = deadline_ms / 1000;
                    summary.renewed.push(lease_id);
                }
                Err(
                    e @ (FabricError::LeaseExpired(_)
                    | FabricError::LeasePoisoned(_)
                    | FabricError::UnknownLease(_)),
                ) => {
                    self.leases.remove(&lease_id);
                    summary.lost.push((lease_id, e));
                }
                Err(e) => summary.failed.push((lease_id, e)),
            }
        }
        summary.expiring_soon = self
            .leases
            .iter()
            .filter(|(_, r)| r.deadline_secs.saturating_sub(now_secs) <= r.policy.renew_before_secs)
            .map(|(&id, _)| id)
            .collect();
        summary
    }

    fn renew(&self, lease_id: u64, lease_secs: u64) -> Result<u64> {
        lease::renew(&self.instance, lease_id, lease_secs)
    }
}
