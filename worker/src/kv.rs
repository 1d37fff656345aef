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
use crate::instance::{InstancePaths, instance_from_env, open_locked};
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
        validate_name(name)?;
        let dir = InstancePaths::new(instance)?.runtime_dir().join("kv");
        std::fs::create_dir_all(&dir).map_err(|e| FabricError::from_io(&e))?;
        let lock_path = dir.join(format!("{name}.lock"));
        let _lock = open_locked(&lock_path)?;
        let id_path = dir.join(name);
        let existing = match std::fs::read_to_string(&id_path) {
            Ok(text) => Some(text.trim().parse::<u64>().map_err(|_| {
                FabricError::InvalidArgument(format!("{}: not a lease id", id_path.display()))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(FabricError::from_io(&e)),
        };
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
                let tmp = dir.join(format!(".{name}.tmp"));
                std::fs::write(&tmp, format!("{}\n", lease.lease_id()))
                    .and_then(|()| std::fs::rename(&tmp, &id_path))
                    .map_err(|e| FabricError::from_io(&e))?;
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

/// Checks a store name: 1 to 64 of `[A-Za-z0-9._-]`, not starting with a
/// dot.
fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(FabricError::InvalidName {
            name: name.to_string(),
            reason: "a store name is 1 to 64 of letters, digits, '.', '_' and '-', not starting with '.'",
        })
    }
}
