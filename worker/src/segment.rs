//! POSIX shared-memory segments: create, open-and-validate, unlink.
//!
//! A segment is `/dev/shm/grafos.<instance>.<object>`, mode 0600, sized
//! once at creation and reserved with `fallocate` (so a full tmpfs fails
//! here, not with SIGBUS later), mapped shared, and prefixed by a
//! [`SegmentHeader`] that openers validate before trusting anything else.

use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::Arc;

use grafos_shm_layout::LayoutError;
use grafos_shm_layout::header::{
    Expect, FenceState, FenceWord, HEADER_SIZE, HeaderFields, SegmentHeader, SegmentKind,
    TypeDescriptor,
};
use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{FallocateFlags, Mode};
use rustix::io::Errno;
use rustix::shm;

use crate::error::{FabricError, Result};

/// Longest instance name.
pub const MAX_INSTANCE_LEN: usize = 48;
/// Longest object name within an instance.
pub const MAX_OBJECT_LEN: usize = 160;

/// A segment's name: `grafos.<instance>.<object>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SegmentName(String);

impl SegmentName {
    /// Names `object` within `instance`.
    ///
    /// # Errors
    /// `InvalidName` unless the instance is 1-48 of `[A-Za-z0-9_-]` and the
    /// object 1-160 of `[A-Za-z0-9_.-]`.
    pub fn new(instance: &str, object: &str) -> Result<SegmentName> {
        validate_instance(instance)?;
        let bad = |reason| {
            Err(FabricError::InvalidName {
                name: object.to_owned(),
                reason,
            })
        };
        if object.is_empty() || object.len() > MAX_OBJECT_LEN {
            return bad("object names are 1 to 160 characters");
        }
        if !object
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return bad("object names use only A-Z a-z 0-9 _ . -");
        }
        Ok(SegmentName(format!(
            "{}{object}",
            instance_prefix(instance)
        )))
    }

    /// The name as it appears in `/dev/shm`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn shm_path(&self) -> String {
        format!("/{}", self.0)
    }
}

impl std::fmt::Display for SegmentName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks an instance name.
///
/// # Errors
/// `InvalidName` unless it is 1-48 of `[A-Za-z0-9_-]`.
pub fn validate_instance(instance: &str) -> Result<()> {
    let bad = |reason| {
        Err(FabricError::InvalidName {
            name: instance.to_owned(),
            reason,
        })
    };
    if instance.is_empty() || instance.len() > MAX_INSTANCE_LEN {
        return bad("instance names are 1 to 48 characters");
    }
    if !instance
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
    {
        return bad("instance names use only A-Z a-z 0-9 _ -");
    }
    Ok(())
}

/// The prefix of every segment of `instance` in `/dev/shm`.
pub fn instance_prefix(instance: &str) -> String {
    format!("grafos.{instance}.")
}

/// The object names of `instance`'s segments now in `/dev/shm`, sorted.
///
/// # Errors
/// `Io` if `/dev/shm` cannot be read.
pub fn list_segments(instance: &str) -> Result<Vec<String>> {
    let prefix = instance_prefix(instance);
    let entries = std::fs::read_dir("/dev/shm").map_err(|e| FabricError::Io {
        op: "read_dir",
        target: "/dev/shm".into(),
        source: e,
    })?;
    let mut objects: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    objects.sort();
    Ok(objects)
}

/// Opens segment `object` of `instance` if it holds a structure of
/// `kind`: `None` if it holds another kind, is gone since it was listed,
/// or has a name grafos would not make; otherwise the segment, or why it
/// could not be opened (for tools that visit every queue, say).
pub fn open_if_kind(instance: &str, object: &str, kind: SegmentKind) -> Option<Result<Segment>> {
    let name = SegmentName::new(instance, object).ok()?;
    let expect = Expect {
        kind: Some(kind),
        ..Expect::default()
    };
    // Not pre-faulted: visitors read a header and a few control words,
    // and a segment of another kind is dropped at once.
    match Segment::open_mapped(&name, &expect, false) {
        Err(FabricError::Layout {
            source: LayoutError::KindMismatch { .. },
            ..
        })
        | Err(FabricError::NotFound(_)) => None,
        opened => Some(opened),
    }
}

/// Unlinks `/dev/shm/grafos.<instance>.<object>` whatever the object's
/// characters (for removing what [`list_segments`] found, names that
/// [`SegmentName`] would refuse included).
///
/// # Errors
/// `InvalidName` for a bad instance or an object with a `/`; `NotFound`;
/// `Io`.
pub fn unlink_object(instance: &str, object: &str) -> Result<()> {
    validate_instance(instance)?;
    if object.is_empty() || object.contains('/') {
        return Err(FabricError::InvalidName {
            name: object.to_owned(),
            reason: "not a file name",
        });
    }
    let path = format!("/{}{object}", instance_prefix(instance));
    shm::unlink(&path).map_err(|e| match e {
        Errno::NOENT => FabricError::NotFound(path),
        e => FabricError::io("shm_unlink", path, e),
    })
}

/// What a new segment holds.
#[derive(Clone, Copy, Debug)]
pub struct SegmentSpec {
    /// Kind of structure in the body.
    pub kind: SegmentKind,
    /// Body size in bytes (the header comes on top).
    pub body_len: u64,
    /// Lease the segment belongs to (0 outside a pool).
    pub lease_id: u64,
    /// The instance's token.
    pub instance_token: u64,
    /// Records the body carries.
    pub payload: TypeDescriptor,
}

/// A mapped segment.
///
/// The mapping is shared with other processes, which may write any byte at
/// any time: the safe accessors return atomics or copies, never plain
/// references to mutable data, and everything read is validated.
#[derive(Clone)]
pub struct Segment {
    name: SegmentName,
    /// Shared by clones: one mapping for every structure placed in it.
    map: Arc<MmapRaw>,
    /// The inode mapped, to tell whether the name still leads to it.
    inode: u64,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name)
            .field("len", &self.map.len())
            .finish()
    }
}

/// Unlinks a half-made segment if creation fails.
struct UnlinkOnDrop<'a>(Option<&'a SegmentName>);

impl Drop for UnlinkOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.0 {
            let _ = shm::unlink(name.shm_path());
        }
    }
}

impl Segment {
    /// Creates, sizes, reserves and maps a new segment, and writes its
    /// header. The fence word stays zero (openers get `Uninitialized`)
    /// until [`Segment::activate`], after the caller has set up the body.
    ///
    /// # Errors
    /// `AlreadyExists`, `NoSpace`, `InvalidArgument` for absurd sizes, or
    /// `Io`.
    pub fn create(name: &SegmentName, spec: &SegmentSpec) -> Result<Segment> {
        let total = spec
            .body_len
            .checked_add(HEADER_SIZE as u64)
            .filter(|&t| t <= isize::MAX as u64)
            .ok_or_else(|| {
                FabricError::InvalidArgument(format!("segment body of {} bytes", spec.body_len))
            })?;
        let fd = shm::open(
            name.shm_path(),
            shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| match e {
            Errno::EXIST => FabricError::AlreadyExists(name.to_string()),
            e => FabricError::io("shm_open", name.as_str(), e),
        })?;
        let mut cleanup = UnlinkOnDrop(Some(name));
        rustix::fs::ftruncate(&fd, total)
            .map_err(|e| FabricError::io("ftruncate", name.as_str(), e))?;
        match rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, total) {
            Ok(()) | Err(Errno::OPNOTSUPP) => {}
            Err(Errno::NOSPC) => {
                return Err(FabricError::NoSpace {
                    name: name.to_string(),
                    bytes: total,
                });
            }
            Err(e) => return Err(FabricError::io("fallocate", name.as_str(), e)),
        }
        let map = map(&fd, total, name, true)?;
        let segment = Segment {
            name: name.clone(),
            map: Arc::new(map),
            inode: inode(&fd, name)?,
        };
        let fields = HeaderFields::new(
            spec.kind,
            total,
            spec.lease_id,
            spec.instance_token,
            spec.payload,
        );
        // SAFETY: the mapping is at least HEADER_SIZE bytes and page-aligned;
        // nobody else uses the segment before `activate` publishes it.
        unsafe {
            segment
                .map
                .as_mut_ptr()
                .cast::<HeaderFields>()
                .write(fields)
        };
        cleanup.0 = None;
        Ok(segment)
    }

    /// Publishes a created segment: sets the fence word to generation 1,
    /// ACTIVE. Release pairs with the Acquire load in [`Segment::open`], so
    /// an opener that sees it also sees the header and the body set up
    /// before.
    pub fn activate(&self) {
        let fresh = FenceWord {
            generation: 0,
            state: FenceState::Active,
        };
        let active = FenceWord {
            generation: 1,
            state: FenceState::Active,
        };
        // A zero word is generation 0 ACTIVE, which `open` treats as
        // "not yet initialised".
        let _ = self.header().transition(fresh, active);
    }

    /// Opens and validates an existing segment.
    ///
    /// # Errors
    /// `NotFound`, `Layout` (too small, uninitialised, bad magic, version,
    /// corrupt, foreign token, kind or type mismatch), or `Io`.
    pub fn open(name: &SegmentName, expect: &Expect) -> Result<Segment> {
        Segment::open_mapped(name, expect, true)
    }

    /// As [`Segment::open`]; `populate` pre-faults the whole mapping (the
    /// data path then takes no page faults).
    fn open_mapped(name: &SegmentName, expect: &Expect, populate: bool) -> Result<Segment> {
        let fd =
            shm::open(name.shm_path(), shm::OFlags::RDWR, Mode::empty()).map_err(|e| match e {
                Errno::NOENT => FabricError::NotFound(name.to_string()),
                e => FabricError::io("shm_open", name.as_str(), e),
            })?;
        let size = rustix::fs::fstat(&fd)
            .map_err(|e| FabricError::io("fstat", name.as_str(), e))?
            .st_size as u64;
        let layout = |source| FabricError::Layout {
            name: name.to_string(),
            source,
        };
        if size < HEADER_SIZE as u64 {
            return Err(layout(LayoutError::TooSmall {
                size,
                needed: HEADER_SIZE as u64,
            }));
        }
        let segment = Segment {
            name: name.clone(),
            map: Arc::new(map(&fd, size, name, populate)?),
            inode: inode(&fd, name)?,
        };
        if segment.header().fence().generation == 0 {
            return Err(layout(LayoutError::Uninitialized));
        }
        segment.fields().validate(size, expect).map_err(layout)?;
        Ok(segment)
    }

    /// Removes a segment's name; mappings stay valid until unmapped.
    ///
    /// # Errors
    /// `NotFound` or `Io`.
    pub fn unlink(name: &SegmentName) -> Result<()> {
        shm::unlink(name.shm_path()).map_err(|e| match e {
            Errno::NOENT => FabricError::NotFound(name.to_string()),
            e => FabricError::io("shm_unlink", name.as_str(), e),
        })
    }

    /// Whether the segment's name still leads to this mapping (it was not
    /// unlinked, or unlinked and made again by someone else).
    pub fn is_current(&self) -> bool {
        rustix::fs::stat(format!("/dev/shm/{}", self.name.as_str()))
            .is_ok_and(|st| st.st_ino == self.inode)
    }

    /// The segment's name.
    pub fn name(&self) -> &SegmentName {
        &self.name
    }

    /// The header in the mapping (its fence word is live).
    pub fn header(&self) -> &SegmentHeader {
        // SAFETY: the mapping is at least HEADER_SIZE bytes, page-aligned
        // (so 128-aligned), lives as long as `self`, and SegmentHeader's
        // only mutable field is an atomic; its plain fields are read by
        // copy (`fields`).
        unsafe { &*self.map.as_ptr().cast::<SegmentHeader>() }
    }

    /// A copy of the header's static fields (as validated on open; another
    /// process may have changed them since, so re-validate what matters).
    pub fn fields(&self) -> HeaderFields {
        // SAFETY: in bounds and aligned as for `header`; a volatile copy of
        // a Pod struct is valid for any bytes.
        unsafe { std::ptr::read_volatile(self.map.as_ptr().cast::<HeaderFields>()) }
    }

    /// Start of the body.
    pub fn body(&self) -> NonNull<u8> {
        // SAFETY: the mapping is larger than HEADER_SIZE; the pointer is
        // in bounds and non-null.
        unsafe { NonNull::new_unchecked(self.map.as_mut_ptr().add(HEADER_SIZE)) }
    }

    /// Size of the body in bytes.
    pub fn body_len(&self) -> u64 {
        (self.map.len() - HEADER_SIZE) as u64
    }

    /// Checks that the segment is of `kind` and holds a control block of
    /// `control` bytes `offset` bytes into its body (0 for a structure with
    /// a segment of its own, more for one placed in a memory lease;
    /// 128-aligned); returns the region after the block and its length.
    ///
    /// # Errors
    /// `Layout` (`KindMismatch`, `Corrupt` or `TooSmall`).
    pub(crate) fn region_at(
        &self,
        kind: SegmentKind,
        offset: u64,
        control: u64,
    ) -> Result<(NonNull<u8>, u64)> {
        let layout = |source| FabricError::Layout {
            name: self.name.to_string(),
            source,
        };
        let found = self.fields().kind;
        if found != kind as u32 {
            return Err(layout(match SegmentKind::from_raw(found) {
                Some(found) => LayoutError::KindMismatch {
                    found,
                    expected: kind,
                },
                None => LayoutError::Corrupt("unknown segment kind"),
            }));
        }
        if !offset.is_multiple_of(128) {
            return Err(layout(LayoutError::Corrupt(
                "structure offset is not 128-aligned",
            )));
        }
        let needed = offset.saturating_add(control);
        let len = self.body_len().checked_sub(needed).ok_or_else(|| {
            layout(LayoutError::TooSmall {
                size: self.body_len(),
                needed,
            })
        })?;
        // SAFETY: offset + control <= body_len, so the region start is in
        // bounds.
        let start = unsafe { self.body().add(needed as usize) };
        Ok((start, len))
    }
}

fn inode(fd: &OwnedFd, name: &SegmentName) -> Result<u64> {
    Ok(rustix::fs::fstat(fd)
        .map_err(|e| FabricError::io("fstat", name.as_str(), e))?
        .st_ino)
}

/// Mappings up to this size are pre-faulted when asked (rings and control
/// blocks, whose pages are all hot); larger ones (a hash map's arenas)
/// fault pages in as they are touched, so opening one does not stall its
/// opener while a whole arena's page tables are filled.
const POPULATE_MAX: u64 = 8 << 20;

fn map(fd: &OwnedFd, len: u64, name: &SegmentName, populate: bool) -> Result<MmapRaw> {
    let mut options = MmapOptions::new();
    options.len(len as usize);
    if populate && len <= POPULATE_MAX {
        options.populate();
    }
    options.map_raw(fd).map_err(|e| FabricError::Io {
        op: "mmap",
        target: name.to_string(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique(tag: &str) -> String {
        format!("unit-{tag}-{}", std::process::id())
    }

    fn spec(kind: SegmentKind) -> SegmentSpec {
        SegmentSpec {
            kind,
            body_len: 4096,
            lease_id: 3,
            instance_token: 42,
            payload: TypeDescriptor::BYTES,
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(SegmentName::new("ok_1-2", "a.b-c_d").is_ok());
        for (instance, object) in [
            ("", "x"),
            ("a/b", "x"),
            ("a", ""),
            ("a", "x/y"),
            ("a", "x y"),
        ] {
            assert!(matches!(
                SegmentName::new(instance, object),
                Err(FabricError::InvalidName { .. })
            ));
        }
        assert!(SegmentName::new(&"i".repeat(49), "x").is_err());
    }

    #[test]
    fn create_open_validate_unlink() {
        let name = SegmentName::new(&unique("seg"), "raw").unwrap();
        let created = Segment::create(&name, &spec(SegmentKind::Raw)).unwrap();
        assert!(matches!(
            Segment::create(&name, &spec(SegmentKind::Raw)),
            Err(FabricError::AlreadyExists(_))
        ));
        let early = Segment::open(&name, &Expect::default()).unwrap_err();
        assert!(matches!(
            early,
            FabricError::Layout {
                source: LayoutError::Uninitialized,
                ..
            }
        ));
        created.activate();
        let opened = Segment::open(
            &name,
            &Expect {
                instance_token: Some(42),
                ..Expect::default()
            },
        )
        .unwrap();
        assert_eq!(opened.fields().lease_id, 3);
        assert_eq!(opened.body_len(), 4096);
        let foreign = Segment::open(
            &name,
            &Expect {
                instance_token: Some(7),
                ..Expect::default()
            },
        );
        assert!(matches!(
            foreign,
            Err(FabricError::Layout {
                source: LayoutError::ForeignToken,
                ..
            })
        ));
        Segment::unlink(&name).unwrap();
        assert!(matches!(
            Segment::open(&name, &Expect::default()),
            Err(FabricError::NotFound(_))
        ));
        assert!(matches!(
            Segment::unlink(&name),
            Err(FabricError::NotFound(_))
        ));
    }

    #[test]
    fn a_tiny_foreign_file_is_too_small() {
        let name = SegmentName::new(&unique("tiny"), "x").unwrap();
        let fd = shm::open(
            name.shm_path(),
            shm::OFlags::CREATE | shm::OFlags::RDWR,
            Mode::RUSR | Mode::WUSR,
        )
        .unwrap();
        rustix::fs::ftruncate(&fd, 10).unwrap();
        let err = Segment::open(&name, &Expect::default()).unwrap_err();
        Segment::unlink(&name).unwrap();
        assert!(matches!(
            err,
            FabricError::Layout {
                source: LayoutError::TooSmall { .. },
                ..
            }
        ));
    }
}
