//! Errors found while validating bytes read from a segment.

use crate::header::{SegmentKind, TypeDescriptor};

/// A segment's bytes do not describe what the opener expects. Shared memory
/// is untrusted input: every check that can fail on it reports one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayoutError {
    /// The segment is smaller than its header or its declared structure.
    TooSmall {
        /// Bytes present.
        size: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// The first eight bytes are not grafos' magic (not a grafos segment,
    /// or one whose creator has not finished writing its header).
    BadMagic,
    /// The creator has not finished initialising the segment (its fence
    /// word is still zero).
    Uninitialized,
    /// Written by a different layout version.
    VersionMismatch {
        /// Version in the segment.
        found: u32,
        /// Version this build speaks.
        expected: u32,
    },
    /// Belongs to another instance (or an earlier run of this one).
    ForeignToken,
    /// Holds another kind of structure.
    KindMismatch {
        /// Kind in the segment.
        found: SegmentKind,
        /// Kind the opener asked for.
        expected: SegmentKind,
    },
    /// Carries another payload type.
    TypeMismatch {
        /// Descriptor in the segment.
        found: TypeDescriptor,
        /// Descriptor the opener asked for.
        expected: TypeDescriptor,
    },
    /// A value read from the segment is out of range or inconsistent.
    Corrupt(&'static str),
}

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayoutError::TooSmall { size, needed } => {
                write!(f, "segment too small: {size} bytes, need {needed}")
            }
            LayoutError::BadMagic => f.write_str("not a grafos segment (bad magic)"),
            LayoutError::Uninitialized => f.write_str("segment not initialised yet"),
            LayoutError::VersionMismatch { found, expected } => {
                write!(f, "layout version {found}, this build speaks {expected}")
            }
            LayoutError::ForeignToken => f.write_str("segment belongs to another instance"),
            LayoutError::KindMismatch { found, expected } => {
                write!(f, "segment holds {found:?}, expected {expected:?}")
            }
            LayoutError::TypeMismatch { found, expected } => write!(
                f,
                "payload type mismatch: segment has hash {:#x} size {}, expected hash {:#x} size {}",
                found.type_hash, found.size, expected.type_hash, expected.size
            ),
            LayoutError::Corrupt(what) => write!(f, "corrupt segment: {what}"),
        }
    }
}

impl std::error::Error for LayoutError {}
