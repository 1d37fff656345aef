//! The segment header at offset 0 of every grafos segment.
//!
//! Layout (256 bytes, see docs/LAYOUT.md):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 80 | [`HeaderFields`]: written once by the creator, CRC-protected |
//! | 80 | 48 | reserved, zero |
//! | 128 | 8 | fence word ([`FenceWord`]): generation << 2 \| state |
//! | 136 | 120 | reserved, zero |
//!
//! The static fields are copied out of the segment and validated before any
//! other byte is trusted: magic, version, CRC, size, kind, token, payload.

use bytemuck::{Pod, Zeroable};

use crate::error::LayoutError;
use crate::sync::{AtomicU64, Ordering};

/// First eight bytes of every segment.
pub const MAGIC: [u8; 8] = *b"GRAFOS\0\x01";
/// Version of the byte layout described in docs/LAYOUT.md.
pub const LAYOUT_VERSION: u32 = 1;
/// Size of the header; the body starts here.
pub const HEADER_SIZE: usize = 256;

/// What a segment holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum SegmentKind {
    /// Bytes with no structure known to grafos (a plain memory lease).
    Raw = 1,
    /// An SPSC edge log with a committed position ([`crate::edge`]).
    EdgeLog = 2,
    /// An MPMC FabricQueue ([`crate::queue`]).
    Queue = 3,
    /// An instance registry ([`crate::registry::Registry`]).
    Registry = 4,
    /// An instance's counters ([`crate::registry::InstanceCounters`]).
    Counters = 5,
    /// The live part of a handoff record ([`crate::handoff`]).
    Handoff = 6,
}

impl SegmentKind {
    /// Decodes a kind read from a segment.
    pub fn from_raw(raw: u32) -> Option<SegmentKind> {
        match raw {
            1 => Some(SegmentKind::Raw),
            2 => Some(SegmentKind::EdgeLog),
            3 => Some(SegmentKind::Queue),
            4 => Some(SegmentKind::Registry),
            5 => Some(SegmentKind::Counters),
            6 => Some(SegmentKind::Handoff),
            _ => None,
        }
    }
}

/// How records of a payload type are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Codec {
    /// Raw bytes; the reader interprets them.
    Bytes = 0,
    /// A `bytemuck::Pod` value copied as its bytes.
    Pod = 1,
    /// A serde value encoded with postcard.
    Postcard = 2,
}

/// Describes the records a segment carries, checked on open so two programs
/// that disagree on the payload type fail early instead of misreading.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct TypeDescriptor {
    /// FNV-1a hash of the type's name (0 for raw bytes).
    pub type_hash: u64,
    /// `size_of` the type (0 for variable-length records).
    pub size: u32,
    /// `align_of` the type (1 for raw bytes).
    pub align: u32,
    /// A [`Codec`] value.
    pub codec: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

const _: () = assert!(std::mem::size_of::<TypeDescriptor>() == 24);

impl TypeDescriptor {
    /// Variable-length raw byte records.
    pub const BYTES: TypeDescriptor = TypeDescriptor {
        type_hash: 0,
        size: 0,
        align: 1,
        codec: Codec::Bytes as u32,
        reserved: 0,
    };

    /// Fixed-size records of the `Pod` type `T`.
    pub fn pod<T: Pod>() -> TypeDescriptor {
        TypeDescriptor {
            type_hash: fnv1a(std::any::type_name::<T>().as_bytes()),
            size: std::mem::size_of::<T>() as u32,
            align: std::mem::align_of::<T>() as u32,
            codec: Codec::Pod as u32,
            reserved: 0,
        }
    }

    /// Variable-length records of the serde type `T`, encoded with postcard.
    pub fn postcard<T: ?Sized>() -> TypeDescriptor {
        TypeDescriptor {
            type_hash: fnv1a(std::any::type_name::<T>().as_bytes()),
            size: 0,
            align: 1,
            codec: Codec::Postcard as u32,
            reserved: 0,
        }
    }
}

/// 64-bit FNV-1a, used for type-name hashes (stable across builds, unlike
/// `TypeId`).
pub const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The static part of the header, written once by the creator.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct HeaderFields {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// A [`SegmentKind`] value.
    pub kind: u32,
    /// Size of the whole segment in bytes, header included.
    pub total_size: u64,
    /// The lease this segment belongs to (0 when created outside a pool).
    pub lease_id: u64,
    /// The instance's random token; a segment of another instance (or of an
    /// earlier run of this one) carries a different token.
    pub instance_token: u64,
    /// Offset of the body ([`HEADER_SIZE`]).
    pub body_offset: u64,
    /// The records the body carries.
    pub payload: TypeDescriptor,
    /// CRC-32 (IEEE) of bytes 0..72 of this struct.
    pub checksum: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

const _: () = {
    assert!(std::mem::size_of::<HeaderFields>() == 80);
    assert!(std::mem::offset_of!(HeaderFields, kind) == 12);
    assert!(std::mem::offset_of!(HeaderFields, total_size) == 16);
    assert!(std::mem::offset_of!(HeaderFields, instance_token) == 32);
    assert!(std::mem::offset_of!(HeaderFields, payload) == 48);
    assert!(std::mem::offset_of!(HeaderFields, checksum) == 72);
};

/// Bytes of [`HeaderFields`] covered by its checksum.
const CHECKSUMMED: usize = std::mem::offset_of!(HeaderFields, checksum);

impl HeaderFields {
    /// Fields for a new segment; the checksum is filled in.
    pub fn new(
        kind: SegmentKind,
        total_size: u64,
        lease_id: u64,
        instance_token: u64,
        payload: TypeDescriptor,
    ) -> HeaderFields {
        let mut fields = HeaderFields {
            magic: MAGIC,
            layout_version: LAYOUT_VERSION,
            kind: kind as u32,
            total_size,
            lease_id,
            instance_token,
            body_offset: HEADER_SIZE as u64,
            payload,
            checksum: 0,
            reserved: 0,
        };
        fields.checksum = fields.compute_checksum();
        fields
    }

    fn compute_checksum(&self) -> u32 {
        crc32fast::hash(&bytemuck::bytes_of(self)[..CHECKSUMMED])
    }

    /// Checks fields copied out of a segment of `actual_size` bytes against
    /// what the opener expects.
    ///
    /// # Errors
    /// The first mismatch found, as a typed [`LayoutError`].
    pub fn validate(&self, actual_size: u64, expect: &Expect) -> Result<SegmentKind, LayoutError> {
        if self.magic != MAGIC {
            return Err(LayoutError::BadMagic);
        }
        if self.layout_version != LAYOUT_VERSION {
            return Err(LayoutError::VersionMismatch {
                found: self.layout_version,
                expected: LAYOUT_VERSION,
            });
        }
        if self.checksum != self.compute_checksum() {
            return Err(LayoutError::Corrupt("header checksum mismatch"));
        }
        if self.total_size != actual_size {
            return Err(LayoutError::Corrupt(
                "header size differs from the segment's",
            ));
        }
        if self.body_offset != HEADER_SIZE as u64 {
            return Err(LayoutError::Corrupt("body offset is not the header size"));
        }
        let kind =
            SegmentKind::from_raw(self.kind).ok_or(LayoutError::Corrupt("unknown segment kind"))?;
        if let Some(expected) = expect.kind
            && kind != expected
        {
            return Err(LayoutError::KindMismatch {
                found: kind,
                expected,
            });
        }
        if let Some(token) = expect.instance_token
            && self.instance_token != token
        {
            return Err(LayoutError::ForeignToken);
        }
        if let Some(payload) = expect.payload
            && self.payload != payload
        {
            return Err(LayoutError::TypeMismatch {
                found: self.payload,
                expected: payload,
            });
        }
        Ok(kind)
    }
}

/// What an opener requires of a segment; `None` accepts any value.
#[derive(Clone, Copy, Debug, Default)]
pub struct Expect {
    /// Required kind.
    pub kind: Option<SegmentKind>,
    /// Required instance token.
    pub instance_token: Option<u64>,
    /// Required payload descriptor.
    pub payload: Option<TypeDescriptor>,
}

/// Lifecycle state of a segment, held in the fence word's low two bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceState {
    /// In use.
    Active = 0,
    /// Replaced by a successor generation; handles must rebind.
    Relocated = 1,
    /// Its lease ran out; readable for a grace period, then unlinked.
    Expired = 2,
    /// Declared corrupt or dead; nothing may use it.
    Poisoned = 3,
}

/// The fence word's value: `generation << 2 | state`.
///
/// One acquire load tells a handle whether it is still valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceWord {
    /// Incremented every time the segment's contents move.
    pub generation: u64,
    /// Lifecycle state.
    pub state: FenceState,
}

impl FenceWord {
    /// Packs into the stored representation.
    pub const fn pack(self) -> u64 {
        (self.generation << 2) | self.state as u64
    }

    /// Unpacks a stored value (every value is valid).
    pub const fn unpack(raw: u64) -> FenceWord {
        let state = match raw & 3 {
            0 => FenceState::Active,
            1 => FenceState::Relocated,
            2 => FenceState::Expired,
            _ => FenceState::Poisoned,
        };
        FenceWord {
            generation: raw >> 2,
            state,
        }
    }
}

/// The header as it sits in the segment.
#[repr(C, align(128))]
pub struct SegmentHeader {
    /// Static fields; copy them out and validate before trusting them.
    pub fields: HeaderFields,
    reserved0: [u8; 48],
    /// Generation and state; see [`FenceWord`].
    fence: AtomicU64,
    reserved1: [u8; 120],
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<SegmentHeader>() == HEADER_SIZE);
    assert!(std::mem::offset_of!(SegmentHeader, fence) == 128);
};

impl SegmentHeader {
    /// Reads the fence word. Acquire pairs with the Release CAS of whoever
    /// changed the state, so a handle that sees RELOCATED also sees what the
    /// relocator wrote before.
    pub fn fence(&self) -> FenceWord {
        FenceWord::unpack(self.fence.load(Ordering::Acquire))
    }

    /// The fence word's low half (state and low generation bits), the word
    /// futex sleepers wait on for a state change.
    #[cfg(all(not(loom), target_endian = "little"))]
    pub fn fence_futex(&self) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: the fence word is an 8-aligned AtomicU64 living as long
        // as `self`; on a little-endian machine its first four bytes are
        // its low half, a valid, 4-aligned AtomicU32 for the same lifetime.
        // Rust's memory model does not define mixed-size atomic accesses
        // to one location; what this relies on is the hardware's (x86-64
        // and aarch64 make an aligned 4-byte access inside an 8-byte
        // atomic single-copy atomic) and the kernel's (FUTEX_WAIT reads
        // the 32-bit word atomically). Through this view we only load and
        // futex-wait; every store goes through the 64-bit word.
        unsafe { &*std::ptr::from_ref(&self.fence).cast::<std::sync::atomic::AtomicU32>() }
    }

    /// Changes the fence word from `current` to `new`.
    ///
    /// # Errors
    /// The value found instead, when it was not `current`.
    pub fn transition(&self, current: FenceWord, new: FenceWord) -> Result<(), FenceWord> {
        self.fence
            .compare_exchange(
                current.pack(),
                new.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| ())
            .map_err(FenceWord::unpack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_word_round_trips() {
        for state in [
            FenceState::Active,
            FenceState::Relocated,
            FenceState::Expired,
            FenceState::Poisoned,
        ] {
            let word = FenceWord {
                generation: 12345,
                state,
            };
            assert_eq!(FenceWord::unpack(word.pack()), word);
        }
    }

    #[test]
    fn fresh_fields_validate_and_every_single_bit_flip_is_caught() {
        let fields = HeaderFields::new(SegmentKind::EdgeLog, 4096, 7, 99, TypeDescriptor::BYTES);
        let expect = Expect {
            kind: Some(SegmentKind::EdgeLog),
            instance_token: Some(99),
            payload: None,
        };
        assert_eq!(fields.validate(4096, &expect), Ok(SegmentKind::EdgeLog));
        let bytes = bytemuck::bytes_of(&fields);
        for bit in 0..CHECKSUMMED * 8 + 32 {
            let mut copy = bytes.to_vec();
            copy[bit / 8] ^= 1 << (bit % 8);
            let flipped: HeaderFields = bytemuck::pod_read_unaligned(&copy);
            assert!(
                flipped.validate(4096, &expect).is_err(),
                "bit {bit} flip not caught"
            );
        }
    }

    #[test]
    fn mismatches_are_typed() {
        let fields = HeaderFields::new(SegmentKind::Raw, 4096, 0, 1, TypeDescriptor::pod::<u64>());
        let by = |e: Expect| fields.validate(4096, &e);
        assert_eq!(
            by(Expect {
                instance_token: Some(2),
                ..Expect::default()
            }),
            Err(LayoutError::ForeignToken)
        );
        assert!(matches!(
            by(Expect {
                kind: Some(SegmentKind::EdgeLog),
                ..Expect::default()
            }),
            Err(LayoutError::KindMismatch { .. })
        ));
        assert!(matches!(
            by(Expect {
                payload: Some(TypeDescriptor::pod::<u32>()),
                ..Expect::default()
            }),
            Err(LayoutError::TypeMismatch { .. })
        ));
        assert!(matches!(
            fields.validate(8192, &Expect::default()),
            Err(LayoutError::Corrupt(_))
        ));
    }
}
