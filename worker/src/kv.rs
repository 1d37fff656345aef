//! [`FabricKvStore`]: a small durable key-value store, named per instance,
//! kept as A/B records (sequence number and CRC each, see
//! [`crate::collections::durable`]) in a block lease. A torn write loses
//! only itself; every process of the instance opens the store by name.
//! Used as the durable offset store of consumer groups.
//!
//! ```no_run
//! use grafos_worker::kv::FabricKvStore;
//! # fn main() -> grafos_worker::Result<()> {
//! let mut kv = FabricKvStore::open("offsets")?;
//! kv.put("greeting", b"hello")?;
//! assert_eq!(kv.get("greeting")?.as_deref(), Some(&b"hello"[..]));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::block::{BLOCK_SIZE, BlockBuilder, BlockLease};
use crate::collections::durable::{Durable, SyncPolicy};
use crate::error::{FabricError, Result};
use crate::instance::{
    instance_from_env, names_dir, open_locked, read_lease_id, validate_object_name, write_lease_id,
};
use crate::mq::offset::OffsetStore;

/// Encoded bytes a store holds unless made larger.
pub const DEFAULT_KV_BYTES: u32 = 256 << 10;
/// TTL of a store's block lease (seconds); every write renews it once
/// half of it has passed.
pub const DEFAULT_KV_LEASE_SECS: u64 = 3600;

type Entries = BTreeMap<String, Vec<u8>>;

/// A durable map of string keys to byte values (see the module docs).
/// Writes from several processes are serialised by a lock file; each
/// write stores the whole map, so keep it small (offsets, checkpoints).
#[derive(Debug)]
pub struct FabricKvStore {
    name: String,
    lease: BlockLease,
    durable: Durable<Entries>,
    lock_path: PathBuf,
}

impl FabricKvStore {
    /// Store `name` of the instance `GRAFOS_INSTANCE` names, created if
    /// new. Writes are not synced to the device: the store survives any
    /// process dying, not the machine (see [`FabricKvStore::open_with`]).
    ///
    /// # Errors
    /// `InvalidName`; lease and I/O errors.
    pub fn open(name: &str) -> Result<FabricKvStore> {
        FabricKvStore::open_with(
            &instance_from_env(),
            name,
            DEFAULT_KV_BYTES,
            SyncPolicy::Never,
        )
    }

    /// Store `name` of `instance` holding up to `max_bytes` encoded,
    /// synced as `policy` says.
    ///
    /// # Errors
    /// As [`FabricKvStore::open`]; `InvalidArgument` for a size out of
    /// range.
    pub fn open_with(
        instance: &str,
        name: &str,
        max_bytes: u32,
        policy: SyncPolicy,
    ) -> Result<FabricKvStore> {
        validate_object_name(name)?;
        let dir = names_dir(instance, "kv")?;
        let lock_path = dir.join(format!("{name}.lock"));
        let _lock = open_locked(&lock_path)?;
        let existing = read_lease_id(&dir, name)?;
        let lease = match existing.map(|id| BlockLease::open_in(instance, id)) {
            Some(Ok(lease)) => lease,
            ended @ (Some(Err(FabricError::UnknownLease(_) | FabricError::LeaseExpired(_)))
            | None) => {
                if let Some(Err(e)) = ended {
                    tracing::warn!(
                        store = name,
                        "the key-value store's lease ended ({e}): its entries are gone; starting empty"
                    );
                }
                let bytes = 64 + 2 * (16 + u64::from(max_bytes));
                let lease = BlockBuilder::new()
                    .instance(instance)
                    .min_blocks(bytes.div_ceil(BLOCK_SIZE))
                    .lease_secs(DEFAULT_KV_LEASE_SECS)
                    .acquire()?;
                write_lease_id(&dir, name, lease.lease_id())?;
                lease
            }
            Some(Err(e)) => return Err(e),
        };
        let durable = Durable::open(lease.path(), max_bytes, policy)?;
        Ok(FabricKvStore {
            name: name.to_string(),
            lease,
            durable,
            lock_path,
        })
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The block lease holding it (renew it to keep the store).
    pub fn lease_id(&self) -> u64 {
        self.lease.lease_id()
    }

    /// Every entry, as last written by any process.
    ///
    /// # Errors
    /// Lease and I/O errors; `Codec` for an unreadable record.
    pub fn entries(&mut self) -> Result<BTreeMap<String, Vec<u8>>> {
        self.lease.check()?;
        Ok(self.durable.load()?.unwrap_or_default())
    }

    /// The value of `key`.
    ///
    /// # Errors
    /// As [`FabricKvStore::entries`].
    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.entries()?.remove(key))
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// As [`FabricKvStore::update`].
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.update(|entries| {
            entries.insert(key.to_string(), value.to_vec());
        })
    }

    /// Removes `key`; returns whether it was there.
    ///
    /// # Errors
    /// As [`FabricKvStore::update`].
    pub fn remove(&mut self, key: &str) -> Result<bool> {
        let mut found = false;
        self.update(|entries| found = entries.remove(key).is_some())?;
        Ok(found)
    }

    /// Applies `change` to the newest entries and writes them, all under
    /// the store's lock (writers of other processes wait).
    ///
    /// # Errors
    /// Lease and I/O errors; `InvalidArgument` if the entries outgrow the
    /// store.
    pub fn update(&mut self, change: impl FnOnce(&mut Entries)) -> Result<()> {
        let _lock = open_locked(&self.lock_path)?;
        let mut entries = self.entries()?;
        change(&mut entries);
        self.durable.checkpoint(&entries)?;
        let half = DEFAULT_KV_LEASE_SECS * 1000 / 2;
        if self
            .lease
            .deadline_ms()
            .saturating_sub(crate::host::unix_time_ms())
            < half
        {
            self.lease.renew(DEFAULT_KV_LEASE_SECS)?;
        }
        Ok(())
    }

    /// Renews the store's lease for `lease_secs`.
    ///
    /// # Errors
    /// Lease errors.
    pub fn renew(&self, lease_secs: u64) -> Result<()> {
        self.lease.renew(lease_secs)
    }
}

fn offset_key(topic: &str, group: &str, partition: u32) -> String {
    format!("offset/{topic}/{group}/{partition}")
}

impl OffsetStore for FabricKvStore {
    type Error = FabricError;

    fn committed(&self, topic: &str, group: &str, partition: u32) -> Result<Option<u64>> {
        // `load` needs `&mut`; a fresh handle on the same file reads the
        // newest record without disturbing this one.
        let mut durable: Durable<Entries> = Durable::open(self.lease.path(), 1, SyncPolicy::Never)?;
        self.lease.check()?;
        let entries = durable.load()?.unwrap_or_default();
        match entries.get(&offset_key(topic, group, partition)) {
            None => Ok(None),
            Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
                .map(|b| Some(u64::from_le_bytes(b)))
                .map_err(|_| FabricError::Codec(format!("offset of {topic}/{group}/{partition}"))),
        }
    }

    fn save(&mut self, topic: &str, group: &str, offsets: &[(u32, u64)]) -> Result<()> {
        self.update(|entries| {
            for &(p, at) in offsets {
                entries.insert(offset_key(topic, group, p), at.to_le_bytes().to_vec());
            }
        })
    }
}
