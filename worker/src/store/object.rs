//! [`MemObjectStore`]: objects addressed by [`FabricUri`] in a
//! [`FabricHashMap`], one store per instance.
//!
//! An object is an entry of the map keyed `<bucket>/<key>`; its value is a
//! small header (size, times, content type) and the bytes, or, over the
//! large-object threshold, the id of a memory lease of its own that holds
//! them. A lookup is a hash-map get in shared memory, not a fetch.
//!
//! ```no_run
//! use grafos_worker::store::{FabricUri, MemObjectStore, ObjectStore};
//! # fn main() -> grafos_worker::Result<()> {
//! let store = MemObjectStore::new(256)?;
//! let uri: FabricUri = "fabric://default/images/cat.png".parse()?;
//! store.put(&uri, b"\x89PNG...", None)?;
//! assert_eq!(store.get(&uri)?.as_deref(), Some(&b"\x89PNG..."[..]));
//! # Ok(()) }
//! ```

use std::io::{Read, Seek, Write};
use std::time::Duration;

use crate::collections::map::{DEFAULT_LEASE_SECS, FabricHashMap, MapOptions};
use crate::error::{FabricError, Result};
use crate::host::unix_time_ms;
use crate::instance::{InstancePaths, instance_from_env};
use crate::mem::{MemBuilder, MemLease};
use crate::store::FabricUri;

/// Objects larger than this (bytes) get a lease of their own.
pub const DEFAULT_LARGE_OBJECT_BYTES: usize = 64 * 1024;
/// Longest content type.
pub const MAX_CONTENT_TYPE_LEN: usize = 255;
/// The content type of an object stored without one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

const MAGIC: &[u8; 4] = b"OBJ1";
const FLAG_LARGE: u32 = 1;
const HEADER: usize = 34;
/// Times a get retries when a large object's lease went away under it
/// (the object was replaced or deleted meanwhile).
const LARGE_RETRIES: usize = 3;

/// How to store one object (`None` in [`ObjectStore::put`] means all
/// defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Gone (gets return `None`, lists skip it) this long after the put.
    pub ttl: Option<Duration>,
    /// A MIME type; [`DEFAULT_CONTENT_TYPE`] if `None`.
    pub content_type: Option<String>,
}

/// What the store knows of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Bytes of data.
    pub size: u64,
    /// Its MIME type.
    pub content_type: String,
    /// Unix milliseconds of the put.
    pub created_ms: u64,
    /// Unix milliseconds after which it is gone, if it has a TTL.
    pub expires_ms: Option<u64>,
    /// The lease holding its bytes, for a large object.
    pub lease_id: Option<u64>,
}

/// Objects addressed by [`FabricUri`].
pub trait ObjectStore {
    /// Stores `data` at `uri` (replacing what was there).
    ///
    /// # Errors
    /// `InvalidArgument` for a URI of another instance or a bad content
    /// type; `NoBudget` when the pool is full; `LeaseExpired` once the
    /// store's leases ended.
    fn put(&self, uri: &FabricUri, data: &[u8], opts: Option<PutOptions>) -> Result<ObjectMeta>;

    /// The object's bytes; `Ok(None)` when absent or expired.
    ///
    /// # Errors
    /// As `put`.
    fn get(&self, uri: &FabricUri) -> Result<Option<Vec<u8>>>;

    /// The object's metadata; `Ok(None)` when absent or expired.
    ///
    /// # Errors
    /// As `put`.
    fn head(&self, uri: &FabricUri) -> Result<Option<ObjectMeta>>;

    /// Removes the object; whether it was there.
    ///
    /// # Errors
    /// As `put`.
    fn delete(&self, uri: &FabricUri) -> Result<bool>;

    /// The objects whose `<bucket>/<key>` starts with `prefix`, one map
    /// bucket at a time (bounded memory; objects stored or removed while
    /// it runs may or may not appear).
    ///
    /// # Errors
    /// As `put`.
    fn list(&self, prefix: &str) -> Result<ObjectList<'_>>;
}

/// The object store of an instance, in its shared memory.
#[derive(Clone, Debug)]
pub struct MemObjectStore {
    map: FabricHashMap,
    instance: String,
    large_object_bytes: usize,
    lease_secs: u64,
}

impl MemObjectStore {
    /// The store of the instance `GRAFOS_INSTANCE` names (else `default`):
    /// made with `buckets` buckets if the instance has none, opened if it
    /// has one (a restarted producer finds its objects).
    ///
    /// # Errors
    /// `InvalidArgument` for a bad bucket count; lease errors.
    pub fn new(buckets: u64) -> Result<MemObjectStore> {
        MemObjectStore::new_in(&instance_from_env(), buckets)
    }

    /// As [`MemObjectStore::new`], for `instance`.
    ///
    /// # Errors
    /// As [`MemObjectStore::new`].
    pub fn new_in(instance: &str, buckets: u64) -> Result<MemObjectStore> {
        MemObjectStore::with_options(&MapOptions {
            instance: instance.to_string(),
            ..MapOptions::new(buckets)
        })
    }

    /// As [`MemObjectStore::new`], with the map's arena size and lease TTL
    /// set (when the store is made; an existing store keeps its own).
    ///
    /// # Errors
    /// As [`MemObjectStore::new`].
    pub fn with_options(options: &MapOptions) -> Result<MemObjectStore> {
        let mut file = StoreFile::lock(&options.instance)?;
        if let Some(id) = file.lease_id()? {
            match FabricHashMap::open_in(&options.instance, id) {
                Ok(map) => return Ok(MemObjectStore::of(map, options)),
                // Gone: its leases ended. A fresh store replaces it.
                Err(
                    FabricError::UnknownLease(_)
                    | FabricError::LeaseExpired(_)
                    | FabricError::LeasePoisoned(_)
                    | FabricError::NotFound(_),
                ) => {}
                Err(e) => return Err(e),
            }
        }
        let map = FabricHashMap::with_options(options)?;
        file.set_lease_id(map.lease_id())?;
        Ok(MemObjectStore::of(map, options))
    }

    /// The existing store of the instance `GRAFOS_INSTANCE` names.
    ///
    /// # Errors
    /// `NotFound` if the instance has no store; lease errors
    /// (`LeaseExpired` once its leases ended).
    pub fn open() -> Result<MemObjectStore> {
        MemObjectStore::open_in(&instance_from_env())
    }

    /// The existing store of `instance`.
    ///
    /// # Errors
    /// As [`MemObjectStore::open`].
    pub fn open_in(instance: &str) -> Result<MemObjectStore> {
        let id = StoreFile::lock(instance)?
            .lease_id()?
            .ok_or_else(|| FabricError::NotFound(format!("object store of instance {instance}")))?;
        let map = FabricHashMap::open_in(instance, id)?;
        Ok(MemObjectStore::of(
            map,
            &MapOptions {
                instance: instance.to_string(),
                ..MapOptions::new(1)
            },
        ))
    }

    fn of(map: FabricHashMap, options: &MapOptions) -> MemObjectStore {
        MemObjectStore {
            lease_secs: map.lease_secs().max(1),
            map,
            instance: options.instance.clone(),
            large_object_bytes: DEFAULT_LARGE_OBJECT_BYTES,
        }
    }

    /// Objects over `bytes` go into leases of their own from now on.
    pub fn large_object_bytes(mut self, bytes: usize) -> MemObjectStore {
        self.large_object_bytes = bytes;
        self
    }

    /// The map under the store.
    pub fn map(&self) -> &FabricHashMap {
        &self.map
    }

    /// Every lease the store holds: the map's and the large objects'
    /// (register them with a `RenewalManager`, or call `renew`).
    ///
    /// # Errors
    /// As [`ObjectStore::put`].
    pub fn lease_ids(&self) -> Result<Vec<u64>> {
        let mut ids = self.map.lease_ids()?;
        ids.extend(self.large_object_leases()?);
        Ok(ids)
    }

    /// Moves the deadline of every lease of the store `lease_secs` ahead.
    ///
    /// # Errors
    /// The first renewal that failed.
    pub fn renew(&self, lease_secs: u64) -> Result<()> {
        let mut first = self.map.renew(lease_secs).err();
        for id in self.large_object_leases()? {
            // Renewing takes a hold; this one ends with the handle.
            let renewed = MemLease::open_in(&self.instance, id).and_then(|l| l.renew(lease_secs));
            if let Err(e) = renewed {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The leases of the large objects stored now (an object that cannot
    /// be read is skipped, not an error: it holds no lease to renew).
    fn large_object_leases(&self) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        for uri in self.list("")? {
            if let Ok(Some(id)) = uri
                .and_then(|uri| self.head(&uri))
                .map(|m| m.and_then(|m| m.lease_id))
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    fn map_key(&self, uri: &FabricUri) -> Result<MapKey> {
        if uri.instance() != self.instance {
            return Err(FabricError::InvalidArgument(format!(
                "{uri} names instance {:?}; this store is {:?}'s",
                uri.instance(),
                self.instance
            )));
        }
        Ok(MapKey::new(uri.bucket(), uri.key()))
    }

    /// Reads a large object's bytes from its lease.
    fn read_large(&self, size: u64, id: u64) -> Result<Vec<u8>> {
        let lease = MemLease::open_in(&self.instance, id)?;
        if size > lease.len() {
            return Err(FabricError::InvalidArgument(format!(
                "large object of {size} bytes in lease {id} of {} bytes",
                lease.len()
            )));
        }
        let mut data = vec![0; size as usize];
        lease.read_at(0, &mut data)?;
        Ok(data)
    }

    /// Ends the lease of a large object nobody links to any more.
    fn release_large(&self, id: u64) {
        match MemLease::open_in(&self.instance, id) {
            Ok(lease) => {
                if let Err(e) = lease.release() {
                    tracing::debug!(lease_id = id, "releasing a large object: {e}");
                }
            }
            Err(e) => tracing::debug!(lease_id = id, "releasing a large object: {e}"),
        }
    }
}

impl ObjectStore for MemObjectStore {
    fn put(&self, uri: &FabricUri, data: &[u8], opts: Option<PutOptions>) -> Result<ObjectMeta> {
        let key = self.map_key(uri)?;
        let opts = opts.unwrap_or_default();
        let content_type = opts
            .content_type
            .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_string());
        if content_type.len() > MAX_CONTENT_TYPE_LEN {
            return Err(FabricError::InvalidArgument(format!(
                "content type of {} bytes: at most {MAX_CONTENT_TYPE_LEN}",
                content_type.len()
            )));
        }
        let created_ms = unix_time_ms();
        let large = if data.len() > self.large_object_bytes {
            let lease = MemBuilder::new()
                .instance(&self.instance)
                .min_bytes(data.len() as u64)
                .lease_secs(self.lease_secs)
                .acquire()?;
            lease.write_at(0, data)?;
            Some(lease)
        } else {
            None
        };
        let meta = ObjectMeta {
            size: data.len() as u64,
            content_type,
            created_ms,
            expires_ms: opts
                .ttl
                .map(|t| created_ms.saturating_add(t.as_millis() as u64)),
            lease_id: large.as_ref().map(MemLease::lease_id),
        };
        let header = encode(&meta, &[]);
        let inline = if large.is_some() { &[][..] } else { data };
        let mut old = Vec::with_capacity(REFERENCE_PREFIX);
        let stored = self.map.write(|w| {
            let had = w.get_prefix_into(&key, REFERENCE_PREFIX, &mut old)?;
            w.insert_parts(&key, &[&header, inline])?;
            Ok(had)
        });
        match stored {
            Ok(had) => {
                if let Some(id) = had.then(|| large_reference(&old)).flatten() {
                    self.release_large(id);
                }
                Ok(meta)
            }
            Err(e) => {
                if let Some(lease) = large {
                    let _ = lease.release();
                }
                Err(e)
            }
        }
    }

    fn get(&self, uri: &FabricUri) -> Result<Option<Vec<u8>>> {
        let key = self.map_key(uri)?;
        let mut value = Vec::new();
        let mut last = None;
        for _ in 0..LARGE_RETRIES {
            if !self.map.get_into(&key, &mut value)? {
                return Ok(None);
            }
            let decoded = decode(&value).map_err(|what| corrupt(uri, what))?;
            if decoded.expired() {
                return Ok(None);
            }
            let Some(id) = decoded.lease_id else {
                // The value's own allocation, its header shifted out.
                let header = value.len() - decoded.inline.len();
                value.drain(..header);
                return Ok(Some(value));
            };
            match self.read_large(decoded.size, id) {
                Ok(data) => return Ok(Some(data)),
                // Replaced or deleted under us: look again.
                Err(
                    e @ (FabricError::UnknownLease(_)
                    | FabricError::LeaseExpired(_)
                    | FabricError::NotFound(_)),
                ) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("a retry happened"))
    }

    fn head(&self, uri: &FabricUri) -> Result<Option<ObjectMeta>> {
        let key = self.map_key(uri)?;
        let Some(value) = self.map.get(&key)? else {
            return Ok(None);
        };
        let decoded = decode(&value).map_err(|what| corrupt(uri, what))?;
        Ok((!decoded.expired()).then(|| decoded.meta()))
    }

    fn delete(&self, uri: &FabricUri) -> Result<bool> {
        let key = self.map_key(uri)?;
        let mut old = Vec::new();
        let had = self.map.write(|w| {
            let had = w.get_prefix_into(&key, REFERENCE_PREFIX, &mut old)?;
            if had {
                w.remove(&key)?;
            }
            Ok(had)
        })?;
        if let Some(id) = had.then(|| large_reference(&old)).flatten() {
            self.release_large(id);
        }
        Ok(had)
    }

    fn list(&self, prefix: &str) -> Result<ObjectList<'_>> {
        // Fail now, not at the first `next`, if the store is gone.
        self.map.stats()?;
        Ok(ObjectList {
            store: self,
            prefix: prefix.to_string(),
            bucket: 0,
            pending: Vec::new(),
        })
    }
}

/// The objects under a prefix (see [`ObjectStore::list`]), in no
/// particular order.
pub struct ObjectList<'a> {
    store: &'a MemObjectStore,
    prefix: String,
    bucket: u64,
    pending: Vec<String>,
}

impl Iterator for ObjectList<'_> {
    type Item = Result<FabricUri>;

    fn next(&mut self) -> Option<Result<FabricUri>> {
        loop {
            if let Some(key) = self.pending.pop() {
                let Some((bucket, key)) = key.split_once('/') else {
                    continue;
                };
                let uri = match FabricUri::new(&self.store.instance, bucket, key) {
                    Ok(uri) => uri,
                    Err(_) => continue,
                };
                match self.store.head(&uri) {
                    Ok(Some(_)) => return Some(Ok(uri)),
                    Ok(None) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
            if self.bucket >= self.store.map.buckets() {
                return None;
            }
            let prefix = self.prefix.as_bytes();
            let pending = &mut self.pending;
            let walked = self.store.map.keys_in_bucket(self.bucket, |key| {
                if key.starts_with(prefix)
                    && let Ok(key) = std::str::from_utf8(key)
                {
                    pending.push(key.to_string());
                }
            });
            self.bucket += 1;
            if let Err(e) = walked {
                self.bucket = u64::MAX;
                return Some(Err(e));
            }
        }
    }
}

fn corrupt(uri: &FabricUri, what: &'static str) -> FabricError {
    FabricError::InvalidArgument(format!("object {uri} is unreadable: {what}"))
}

fn encode(meta: &ObjectMeta, inline: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + meta.content_type.len() + inline.len().max(8));
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(
        &(if meta.lease_id.is_some() {
            FLAG_LARGE
        } else {
            0
        })
        .to_le_bytes(),
    );
    v.extend_from_slice(&meta.size.to_le_bytes());
    v.extend_from_slice(&meta.created_ms.to_le_bytes());
    v.extend_from_slice(&meta.expires_ms.unwrap_or(0).to_le_bytes());
    v.extend_from_slice(&(meta.content_type.len() as u16).to_le_bytes());
    v.extend_from_slice(meta.content_type.as_bytes());
    match meta.lease_id {
        Some(id) => v.extend_from_slice(&id.to_le_bytes()),
        None => v.extend_from_slice(inline),
    }
    v
}

/// An object's key in the map, `<bucket>/<key>`, built on the stack.
struct MapKey {
    buf: [u8; crate::store::MAX_BUCKET_LEN + 1 + crate::store::MAX_KEY_LEN],
    len: usize,
}

impl MapKey {
    /// The key of a parsed URI's parts (whose lengths parsing bounded).
    fn new(bucket: &str, key: &str) -> MapKey {
        let mut k = MapKey {
            buf: [0; crate::store::MAX_BUCKET_LEN + 1 + crate::store::MAX_KEY_LEN],
            len: bucket.len() + 1 + key.len(),
        };
        k.buf[..bucket.len()].copy_from_slice(bucket.as_bytes());
        k.buf[bucket.len()] = b'/';
        k.buf[bucket.len() + 1..k.len].copy_from_slice(key.as_bytes());
        k
    }
}

impl std::ops::Deref for MapKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Bytes of a stored value that hold everything but inline data (enough
/// to find a large object's lease).
const REFERENCE_PREFIX: usize = HEADER + MAX_CONTENT_TYPE_LEN + 8;

/// The lease of a large object whose stored value starts with `prefix`.
fn large_reference(prefix: &[u8]) -> Option<u64> {
    if prefix.len() < HEADER || &prefix[..4] != MAGIC {
        return None;
    }
    let flags = u32::from_le_bytes(prefix[4..8].try_into().expect("4 bytes"));
    let body = HEADER + u16::from_le_bytes([prefix[32], prefix[33]]) as usize;
    let id = prefix.get(body..body + 8)?;
    (flags & FLAG_LARGE != 0).then(|| u64::from_le_bytes(id.try_into().expect("8 bytes")))
}

/// A stored value, parsed in place (checked: it came from shared memory).
#[derive(Debug, PartialEq, Eq)]
struct Decoded<'a> {
    size: u64,
    created_ms: u64,
    expires_ms: Option<u64>,
    content_type: &'a str,
    lease_id: Option<u64>,
    /// The inline bytes (empty for a large object).
    inline: &'a [u8],
}

impl Decoded<'_> {
    fn expired(&self) -> bool {
        self.expires_ms.is_some_and(|t| unix_time_ms() >= t)
    }

    fn meta(&self) -> ObjectMeta {
        ObjectMeta {
            size: self.size,
            content_type: self.content_type.to_string(),
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            lease_id: self.lease_id,
        }
    }
}

fn decode(value: &[u8]) -> std::result::Result<Decoded<'_>, &'static str> {
    if value.len() < HEADER || &value[..4] != MAGIC {
        return Err("bad object header");
    }
    let u32_at = |i: usize| u32::from_le_bytes(value[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(value[i..i + 8].try_into().expect("8 bytes"));
    let flags = u32_at(4);
    let size = u64_at(8);
    let body = HEADER + u16::from_le_bytes([value[32], value[33]]) as usize;
    let content_type = value
        .get(HEADER..body)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or("bad content type")?;
    let rest = &value[body..];
    let (lease_id, inline) = if flags & FLAG_LARGE != 0 {
        let id = rest.get(..8).ok_or("short large-object reference")?;
        (
            Some(u64::from_le_bytes(id.try_into().expect("8 bytes"))),
            &[][..],
        )
    } else {
        if rest.len() as u64 != size {
            return Err("object size disagrees with its bytes");
        }
        (None, rest)
    };
    let expires = u64_at(24);
    Ok(Decoded {
        size,
        created_ms: u64_at(16),
        expires_ms: (expires != 0).then_some(expires),
        content_type,
        lease_id,
        inline,
    })
}

/// `<runtime dir>/object-store`: the lease id of the instance's store,
/// read and written under an exclusive `flock` (two processes making the
/// store at once end up with one).
struct StoreFile {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl StoreFile {
    fn lock(instance: &str) -> Result<StoreFile> {
        let paths = InstancePaths::new(instance)?;
        let io = |e: std::io::Error| FabricError::from_io(&e);
        std::fs::create_dir_all(paths.runtime_dir()).map_err(io)?;
        let path = paths.runtime_dir().join("object-store");
        let file = crate::instance::open_locked(&path)?;
        Ok(StoreFile { file, path })
    }

    fn lease_id(&mut self) -> Result<Option<u64>> {
        let mut text = String::new();
        self.file
            .read_to_string(&mut text)
            .map_err(|e| FabricError::from_io(&e))?;
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            FabricError::InvalidArgument(format!(
                "{}: not a lease id: {text:?}",
                self.path.display()
            ))
        })
    }

    fn set_lease_id(&mut self, id: u64) -> Result<()> {
        let io = |e: std::io::Error| FabricError::from_io(&e);
        self.file.set_len(0).map_err(io)?;
        self.file.rewind().map_err(io)?;
        writeln!(self.file, "{id}").map_err(io)
    }
}

/// Lease TTL of a store made without options (seconds).
pub const DEFAULT_STORE_LEASE_SECS: u64 = DEFAULT_LEASE_SECS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_scribbles_are_refused() {
        let meta = ObjectMeta {
            size: 3,
            content_type: "text/plain".into(),
            created_ms: 5,
            expires_ms: Some(9),
            lease_id: None,
        };
        let v = encode(&meta, b"abc");
        let decoded = decode(&v).unwrap();
        assert_eq!(
            (decoded.meta(), decoded.inline),
            (meta.clone(), &b"abc"[..])
        );
        let large = ObjectMeta {
            lease_id: Some(42),
            size: 1 << 20,
            ..meta
        };
        assert_eq!(decode(&encode(&large, &[])).unwrap().meta(), large);
        assert_eq!(large_reference(&encode(&large, &[])), Some(42));
        assert_eq!(large_reference(&v), None);
        assert!(decode(&v[..10]).is_err());
        let mut bad = v.clone();
        bad[32] = 200;
        assert!(decode(&bad).is_err());
        let mut bad = v;
        bad[8] = 4;
        assert!(decode(&bad).is_err());
    }
}
