//! Durable checkpoints: a value kept in a file as two slots (A/B), each
//! with a sequence number and a CRC, written with `pwrite` (never through
//! a mapping, so a truncated file is an error, not SIGBUS).
//!
//! A checkpoint goes to the slot *not* holding the newest good value, so a
//! write torn by a crash (or scribbled afterwards) costs only itself:
//! `load` takes the valid slot with the highest sequence number, which is
//! the previous checkpoint.
//!
//! ```no_run
//! use grafos_worker::collections::durable::{Durable, SyncPolicy};
//! # fn main() -> grafos_worker::Result<()> {
//! let mut position: Durable<u64> = Durable::open("stage.ckpt", 64, SyncPolicy::Always)?;
//! let resume_from = position.load()?.unwrap_or(0);
//! position.checkpoint(&(resume_from + 100))?;
//! # Ok(()) }
//! ```
//!
//! A file that is empty, or zero-filled (a pre-allocated block lease), is
//! formatted on open.
//!
//! File layout (little-endian): a 64-byte header (`GRAFOSDB`, version,
//! slot size, CRC of the header), then slot A at 64 and slot B at
//! 64 + slot size. A slot: sequence (`u64`, 0 = never written), payload
//! length (`u32`), CRC-32 of sequence, length and payload (`u32`), then the
//! postcard-encoded value.

use std::fs::{File, OpenOptions};
use std::marker::PhantomData;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{FabricError, Result};

const MAGIC: [u8; 8] = *b"GRAFOSDB";
const VERSION: u32 = 1;
const HEADER: u64 = 64;
const SLOT_HEADER: u64 = 16;
/// Largest value a checkpoint file may be made for.
pub const MAX_VALUE_LEN: u32 = 1 << 20;

/// When checkpoints reach the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` after every checkpoint: survives a power cut.
    Always,
    /// `fdatasync` after every `n`th checkpoint.
    Every(u32),
    /// Never: survives any process dying, not the machine.
    Never,
}

/// A value checkpointed in a file (see the module docs).
#[derive(Debug)]
pub struct Durable<T> {
    file: File,
    path: PathBuf,
    slot_size: u64,
    policy: SyncPolicy,
    /// Sequence number of the newest good checkpoint (0: none).
    newest: u64,
    /// Which slot holds it.
    newest_slot: u64,
    unsynced: u32,
    _value: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Durable<T> {
    /// Opens the checkpoint file at `path`, creating it for values of up
    /// to `max_len` encoded bytes if it does not exist.
    ///
    /// # Errors
    /// `InvalidArgument` for a `max_len` of 0 or over [`MAX_VALUE_LEN`];
    /// `Corrupt`-style `Io` errors for a file that is not a checkpoint
    /// file or is truncated; `Io`.
    pub fn open(path: impl AsRef<Path>, max_len: u32, policy: SyncPolicy) -> Result<Durable<T>> {
        let path = path.as_ref().to_path_buf();
        if max_len == 0 || max_len > MAX_VALUE_LEN {
            return Err(FabricError::InvalidArgument(format!(
                "checkpoint values of {max_len} bytes (1 to {MAX_VALUE_LEN})"
            )));
        }
        let io = |op, source| FabricError::Io {
            op,
            target: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io("open", e))?;
        let len = file.metadata().map_err(|e| io("stat", e))?.len();
        let slot_size = if never_written(&file, len).map_err(|e| io("pread", e))? {
            // New, or zeroes (a pre-allocated block lease): format it.
            let slot_size = SLOT_HEADER + u64::from(max_len);
            file.write_all_at(&header(slot_size), 0)
                .and_then(|()| file.set_len(len.max(HEADER + 2 * slot_size)))
                .and_then(|()| file.sync_all())
                .map_err(|e| io("create", e))?;
            slot_size
        } else {
            read_header(&file, len, &path)?
        };
        let mut durable = Durable {
            file,
            path,
            slot_size,
            policy,
            newest: 0,
            newest_slot: 1,
            unsynced: 0,
            _value: PhantomData,
        };
        durable.scan()?;
        Ok(durable)
    }

    /// The last good checkpoint, `None` if there is none yet.
    ///
    /// # Errors
    /// `Io` if the file cannot be read (or is truncated); `Codec` if the
    /// newest good slot does not decode as `T`.
    pub fn load(&mut self) -> Result<Option<T>> {
        self.scan()?;
        if self.newest == 0 {
            return Ok(None);
        }
        let (_, payload) = self
            .read_slot(self.newest_slot)?
            .expect("scan found this slot good");
        postcard::from_bytes(&payload)
            .map(Some)
            .map_err(|e| FabricError::Codec(format!("checkpoint in {}: {e}", self.path.display())))
    }

    /// Replaces the checkpoint with `value` (in the other slot), syncing
    /// by the policy.
    ///
    /// # Errors
    /// `Codec` if it does not encode; `InvalidArgument` if it is larger
    /// than the file's slots; `Io`.
    pub fn checkpoint(&mut self, value: &T) -> Result<()> {
        // Several processes may checkpoint one file (writers of one
        // handoff record): one at a time, each after a fresh look at which
        // slot holds the newest.
        rustix::fs::flock(&self.file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| self.io("flock", e.into()))?;
        let result = self.scan().and_then(|()| self.write(value));
        let _ = rustix::fs::flock(&self.file, rustix::fs::FlockOperation::Unlock);
        result
    }

    fn write(&mut self, value: &T) -> Result<()> {
        let payload =
            postcard::to_allocvec(value).map_err(|e| FabricError::Codec(e.to_string()))?;
        let max = self.slot_size - SLOT_HEADER;
        if payload.len() as u64 > max {
            return Err(FabricError::InvalidArgument(format!(
                "a checkpoint of {} bytes; {} holds at most {max}",
                payload.len(),
                self.path.display()
            )));
        }
        let seq = self
            .newest
            .checked_add(1)
            .ok_or_else(|| FabricError::InvalidArgument("checkpoint sequence exhausted".into()))?;
        let slot = 1 - self.newest_slot;
        let mut record = Vec::with_capacity(SLOT_HEADER as usize + payload.len());
        record.extend_from_slice(&seq.to_le_bytes());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&slot_crc(seq, &payload).to_le_bytes());
        record.extend_from_slice(&payload);
        self.file
            .write_all_at(&record, self.slot_offset(slot))
            .map_err(|e| self.io("pwrite", e))?;
        self.unsynced += 1;
        let sync = match self.policy {
            SyncPolicy::Always => true,
            SyncPolicy::Every(n) => self.unsynced >= n.max(1),
            SyncPolicy::Never => false,
        };
        if sync {
            self.file.sync_data().map_err(|e| self.io("fdatasync", e))?;
            self.unsynced = 0;
        }
        self.newest = seq;
        self.newest_slot = slot;
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Finds the newest good slot.
    fn scan(&mut self) -> Result<()> {
        let len = self.file.metadata().map_err(|e| self.io("stat", e))?.len();
        let needed = HEADER + 2 * self.slot_size;
        if len < needed {
            return Err(truncated(&self.path, len, needed));
        }
        let (mut newest, mut newest_slot) = (0, 1);
        for slot in 0..2 {
            if let Some((seq, _)) = self.read_slot(slot)?
                && seq > newest
            {
                (newest, newest_slot) = (seq, slot);
            }
        }
        (self.newest, self.newest_slot) = (newest, newest_slot);
        Ok(())
    }

    /// A slot's sequence and payload, if it holds a good checkpoint.
    fn read_slot(&self, slot: u64) -> Result<Option<(u64, Vec<u8>)>> {
        let mut bytes = vec![0u8; self.slot_size as usize];
        self.file
            .read_exact_at(&mut bytes, self.slot_offset(slot))
            .map_err(|e| self.io("pread", e))?;
        let seq = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        if seq == 0 || len > self.slot_size - SLOT_HEADER {
            return Ok(None);
        }
        let payload = &bytes[SLOT_HEADER as usize..(SLOT_HEADER + len) as usize];
        Ok((slot_crc(seq, payload) == crc).then(|| (seq, payload.to_vec())))
    }

    fn slot_offset(&self, slot: u64) -> u64 {
        HEADER + slot * self.slot_size
    }

    fn io(&self, op: &'static str, source: std::io::Error) -> FabricError {
        FabricError::Io {
            op,
            target: self.path.display().to_string(),
            source,
        }
    }
}

/// Whether the file is empty or starts with a zeroed header (a file made
/// elsewhere, such as a block lease, before its first checkpoint).
fn never_written(file: &File, len: u64) -> std::io::Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    if len < HEADER {
        return Ok(false);
    }
    let mut h = [0u8; HEADER as usize];
    file.read_exact_at(&mut h, 0)?;
    Ok(h.iter().all(|&b| b == 0))
}

fn header(slot_size: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&slot_size.to_le_bytes());
    let crc = crc32fast::hash(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

fn read_header(file: &File, len: u64, path: &Path) -> Result<u64> {
    let bad = |what: &str| FabricError::Io {
        op: "open",
        target: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned()),
    };
    if len < HEADER {
        return Err(truncated(path, len, HEADER));
    }
    let mut h = [0u8; HEADER as usize];
    file.read_exact_at(&mut h, 0)
        .map_err(|source| FabricError::Io {
            op: "pread",
            target: path.display().to_string(),
            source,
        })?;
    if h[0..8] != MAGIC {
        return Err(bad("not a grafos checkpoint file"));
    }
    let crc = u32::from_le_bytes(h[20..24].try_into().expect("4 bytes"));
    if crc32fast::hash(&h[0..20]) != crc {
        return Err(bad("checkpoint file header is corrupt"));
    }
    if u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")) != VERSION {
        return Err(bad("checkpoint file of another version"));
    }
    let slot_size = u64::from_le_bytes(h[12..20].try_into().expect("8 bytes"));
    if !(SLOT_HEADER + 1..=SLOT_HEADER + u64::from(MAX_VALUE_LEN)).contains(&slot_size) {
        return Err(bad("checkpoint file header names an impossible slot size"));
    }
    Ok(slot_size)
}

fn truncated(path: &Path, len: u64, needed: u64) -> FabricError {
    FabricError::Io {
        op: "open",
        target: path.display().to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("checkpoint file truncated: {len} bytes, {needed} expected"),
        ),
    }
}

fn slot_crc(seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(&(payload.len() as u32).to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary file path, removed when dropped (a failing test leaves
    /// nothing behind).
    struct Temp(PathBuf);

    impl std::ops::Deref for Temp {
        type Target = PathBuf;

        fn deref(&self) -> &PathBuf {
            &self.0
        }
    }

    impl AsRef<Path> for Temp {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn temp(tag: &str) -> Temp {
        let path =
            std::env::temp_dir().join(format!("grafos-durable-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Temp(path)
    }

    /// Bytes of the slot holding the newest checkpoint, as written.
    fn slot_bytes(path: &Path, slot: u64, slot_size: u64) -> Vec<u8> {
        let file = File::open(path).unwrap();
        let mut bytes = vec![0u8; slot_size as usize];
        file.read_exact_at(&mut bytes, HEADER + slot * slot_size)
            .unwrap();
        bytes
    }

    #[test]
    fn checkpoints_survive_reopening() {
        let path = temp("reopen");
        let mut d: Durable<(u64, String)> = Durable::open(&path, 64, SyncPolicy::Always).unwrap();
        assert_eq!(d.load().unwrap(), None);
        for i in 0..5 {
            d.checkpoint(&(i, format!("position {i}"))).unwrap();
        }
        drop(d);
        let mut d: Durable<(u64, String)> = Durable::open(&path, 64, SyncPolicy::Never).unwrap();
        assert_eq!(d.load().unwrap(), Some((4, "position 4".into())));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_torn_or_scribbled_write_keeps_the_previous_checkpoint() {
        let path = temp("torn");
        let mut d: Durable<u64> = Durable::open(&path, 32, SyncPolicy::Never).unwrap();
        d.checkpoint(&7).unwrap(); // slot 0, seq 1
        d.checkpoint(&8).unwrap(); // slot 1, seq 2
        let slot_size = d.slot_size;
        // The next checkpoint (9) would go to slot 0 with seq 3: write what
        // it would write, cut short at every length, and scribble it.
        let probe_path = temp("probe");
        let mut probe: Durable<u64> = Durable::open(&probe_path, 32, SyncPolicy::Never).unwrap();
        probe.checkpoint(&0).unwrap();
        probe.checkpoint(&0).unwrap();
        probe.checkpoint(&9).unwrap();
        let whole = slot_bytes(probe.path(), 0, slot_size);
        std::fs::remove_file(probe.path()).unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let original = slot_bytes(&path, 0, slot_size);
        let record = SLOT_HEADER as usize + postcard::to_allocvec(&9u64).unwrap().len();
        for cut in 0..record {
            file.write_all_at(&original, HEADER).unwrap();
            file.write_all_at(&whole[..cut], HEADER).unwrap();
            assert_eq!(d.load().unwrap(), Some(8), "cut at {cut}");
        }
        // The whole write is the newer checkpoint: the cuts above were
        // refused for being cut, not for anything else.
        file.write_all_at(&whole[..record], HEADER).unwrap();
        assert_eq!(d.load().unwrap(), Some(9));
        let mut seed = 0x9e37_79b9u32;
        for _ in 0..200 {
            let junk: Vec<u8> = (0..slot_size)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            file.write_all_at(&junk, HEADER).unwrap();
            assert_eq!(d.load().unwrap(), Some(8));
        }
        // The next checkpoint lands in the scribbled slot and wins.
        d.checkpoint(&10).unwrap();
        assert_eq!(slot_bytes(&path, 0, slot_size)[0..8], 3u64.to_le_bytes());
        assert_eq!(d.load().unwrap(), Some(10));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_truncated_file_is_a_clear_error() {
        let path = temp("trunc");
        let mut d: Durable<u64> = Durable::open(&path, 32, SyncPolicy::Never).unwrap();
        d.checkpoint(&1).unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(HEADER + 10).unwrap();
        let e = d.load().unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        drop(d);
        let e = Durable::<u64>::open(&path, 32, SyncPolicy::Never)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        file.set_len(10).unwrap();
        let e = Durable::<u64>::open(&path, 32, SyncPolicy::Never)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        std::fs::write(&path, [0xABu8; 200]).unwrap();
        let e = Durable::<u64>::open(&path, 32, SyncPolicy::Never)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a grafos checkpoint file"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_zero_filled_file_is_formatted_in_place() {
        // A pre-allocated block lease: zeroes, larger than needed.
        let path = temp("zeroes");
        std::fs::write(&path, vec![0u8; 16 * 1024]).unwrap();
        let mut d: Durable<u64> = Durable::open(&path, 32, SyncPolicy::Never).unwrap();
        assert_eq!(d.load().unwrap(), None);
        d.checkpoint(&5).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16 * 1024);
        let mut again: Durable<u64> = Durable::open(&path, 32, SyncPolicy::Never).unwrap();
        assert_eq!(again.load().unwrap(), Some(5));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn oversized_values_and_sizes_are_refused() {
        let path = temp("size");
        assert!(Durable::<u64>::open(&path, 0, SyncPolicy::Never).is_err());
        let mut d: Durable<Vec<u8>> = Durable::open(&path, 16, SyncPolicy::Every(2)).unwrap();
        assert!(matches!(
            d.checkpoint(&vec![0u8; 64]),
            Err(FabricError::InvalidArgument(_))
        ));
        d.checkpoint(&vec![1u8; 8]).unwrap();
        assert_eq!(d.load().unwrap(), Some(vec![1u8; 8]));
        std::fs::remove_file(&path).unwrap();
    }
}
