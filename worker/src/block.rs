//! Block-storage leases: a pre-allocated file in the instance's data dir,
//! read and written with `pread`/`pwrite` (not through a mapping, so a
//! truncated file is an error, not SIGBUS).
//!
//! ```no_run
//! use grafos_worker::block::BlockBuilder;
//! # fn main() -> grafos_worker::Result<()> {
//! let lease = BlockBuilder::new().min_blocks(16).lease_secs(30).acquire()?;
//! lease.write_at(0, b"checkpoint")?;
//! lease.sync()?;
//! # Ok(()) }
//! ```

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use grafos_shm_layout::registry::lease_state;

pub use crate::control::BLOCK_SIZE;
use crate::control::{LeaseGrant, LeaseKind, Request};
use crate::error::{FabricError, Result};
use crate::instance::instance_from_env;
use crate::lease::{self, Hold};
use crate::mem::DEFAULT_LEASE_SECS;
use crate::participant::Attachment;

/// Asks the supervisor for a block lease.
#[derive(Clone, Debug)]
pub struct BlockBuilder {
    instance: String,
    min_blocks: u64,
    lease_secs: u64,
    wait: Option<Duration>,
}

impl Default for BlockBuilder {
    fn default() -> Self {
        BlockBuilder::new()
    }
}

impl BlockBuilder {
    /// A request on the instance `GRAFOS_INSTANCE` names (else `default`)
    /// for a [`DEFAULT_LEASE_SECS`] lease; set its size with `min_blocks`.
    pub fn new() -> BlockBuilder {
        BlockBuilder {
            instance: instance_from_env(),
            min_blocks: 0,
            lease_secs: DEFAULT_LEASE_SECS,
            wait: None,
        }
    }

    /// The instance to lease from.
    pub fn instance(mut self, instance: &str) -> BlockBuilder {
        self.instance = instance.to_owned();
        self
    }

    /// At least this many blocks of [`BLOCK_SIZE`] bytes.
    pub fn min_blocks(mut self, blocks: u64) -> BlockBuilder {
        self.min_blocks = blocks;
        self
    }

    /// Time to live in seconds.
    pub fn lease_secs(mut self, secs: u64) -> BlockBuilder {
        self.lease_secs = secs;
        self
    }

    /// If the block pool lacks budget, wait up to `wait` for some to come
    /// back instead of failing at once.
    pub fn wait_for_budget(mut self, wait: Duration) -> BlockBuilder {
        self.wait = Some(wait);
        self
    }

    /// Leases the file and opens it.
    ///
    /// # Errors
    /// `NoBudget`, `InvalidArgument` for zero or absurd sizes or TTLs,
    /// `Disconnected`, `Io`.
    pub fn acquire(self) -> Result<BlockLease> {
        let request = Request::AcquireBlock {
            min_blocks: self.min_blocks,
            lease_secs: self.lease_secs,
        };
        let (attachment, grant) =
            lease::acquire(&self.instance, &request, LeaseKind::Block, self.wait)?;
        BlockLease::new(attachment, &grant).inspect_err(|_| {
            // Nobody else knows of it: give it back.
            let _ = lease::release(&self.instance, grant.lease_id);
        })
    }
}

/// A leased file. Every call checks the lease first: once it has expired
/// (or is poisoned) they return `LeaseExpired` (or `LeasePoisoned`).
#[derive(Debug)]
pub struct BlockLease {
    hold: Hold,
    /// For the registry, where the lease's state is read.
    attachment: Arc<Attachment>,
    bytes: u64,
    path: PathBuf,
    file: File,
}

impl BlockLease {
    /// Opens lease `lease_id` of the instance `GRAFOS_INSTANCE` names (else
    /// `default`), becoming one of its holders.
    ///
    /// # Errors
    /// `UnknownLease`, `LeaseExpired`, `LeasePoisoned`, `Disconnected`,
    /// `Io`.
    pub fn open(lease_id: u64) -> Result<BlockLease> {
        BlockLease::open_in(&instance_from_env(), lease_id)
    }

    /// Opens lease `lease_id` of `instance`.
    ///
    /// # Errors
    /// As [`BlockLease::open`].
    pub fn open_in(instance: &str, lease_id: u64) -> Result<BlockLease> {
        let (attachment, grant) = lease::open(instance, lease_id, LeaseKind::Block)?;
        BlockLease::new(attachment, &grant).inspect_err(|_| lease::unhold(instance, lease_id))
    }

    /// Opens a granted lease's file; the hold becomes the handle's.
    fn new(attachment: Arc<Attachment>, grant: &LeaseGrant) -> Result<BlockLease> {
        let path = grant.location.as_str();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| FabricError::Io {
                op: "open",
                target: path.to_owned(),
                source,
            })?;
        Ok(BlockLease {
            hold: Hold::new(
                attachment.paths().instance(),
                grant.lease_id,
                grant.deadline_ms,
            ),
            attachment,
            bytes: grant.bytes,
            path: PathBuf::from(path),
            file,
        })
    }

    /// The instance the lease belongs to.
    pub fn instance(&self) -> &str {
        self.hold.instance()
    }

    /// The lease's id.
    pub fn lease_id(&self) -> u64 {
        self.hold.lease_id()
    }

    /// Size in bytes (whole blocks).
    pub fn len(&self) -> u64 {
        self.bytes
    }

    /// Whether the lease holds no bytes (never, for a granted lease).
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Size in blocks.
    pub fn blocks(&self) -> u64 {
        self.bytes / BLOCK_SIZE
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The deadline in Unix milliseconds, as of the last acquire, open or
    /// renewal through this handle.
    pub fn deadline_ms(&self) -> u64 {
        self.hold.deadline_ms()
    }

    /// Ok while the lease is active (its registry row says so).
    ///
    /// # Errors
    /// `LeaseExpired` (also once its row is gone) or `LeasePoisoned`.
    pub fn check(&self) -> Result<()> {
        match self.attachment.registry().lease(self.lease_id()) {
            Some(row) if row.state == lease_state::ACTIVE => Ok(()),
            Some(row) if row.state == lease_state::POISONED => {
                Err(FabricError::LeasePoisoned(self.lease_id()))
            }
            _ => Err(FabricError::LeaseExpired(self.lease_id())),
        }
    }

    /// Moves the deadline to `lease_secs` from now.
    ///
    /// # Errors
    /// `LeaseExpired`, `LeasePoisoned`, `InvalidArgument`, `Disconnected`.
    pub fn renew(&self, lease_secs: u64) -> Result<()> {
        self.check()?;
        self.hold.renew(lease_secs)
    }

    /// Stops holding the lease; when its last holder releases it, the file
    /// is removed and its budget returns to the pool.
    ///
    /// # Errors
    /// `LeaseExpired` or `LeasePoisoned` (the hold is dropped all the
    /// same), `Disconnected`.
    pub fn release(self) -> Result<()> {
        let state = self.check();
        self.hold.release()?;
        state
    }

    /// Reads `buf.len()` bytes at `offset`.
    ///
    /// # Errors
    /// `LeaseExpired`, `LeasePoisoned`, `InvalidArgument` past the end,
    /// `Io`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check()?;
        lease::in_bounds(offset, buf.len(), self.bytes)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.io("pread", e))
    }

    /// Writes `data` at `offset`.
    ///
    /// # Errors
    /// `LeaseExpired`, `LeasePoisoned`, `InvalidArgument` past the end,
    /// `Io`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check()?;
        lease::in_bounds(offset, data.len(), self.bytes)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| self.io("pwrite", e))
    }

    /// Flushes written data to the device.
    ///
    /// # Errors
    /// `LeaseExpired`, `LeasePoisoned`, `Io`.
    pub fn sync(&self) -> Result<()> {
        self.check()?;
        self.file.sync_data().map_err(|e| self.io("fdatasync", e))
    }

    fn io(&self, op: &'static str, source: std::io::Error) -> FabricError {
        FabricError::Io {
            op,
            target: self.path.display().to_string(),
            source,
        }
    }
}
