//! Heap models of shared structures, for loom models and unit tests.
//!
//! Loom's atomics and cells cannot live in a mapped segment, so the models
//! put the same control blocks on the heap and the ring bytes in tracked
//! cells; the algorithm code they run is the production code.

use crate::edge::{Edge, EdgeControl, EdgeParams, RingBytes};
use crate::queue::{Queue, QueueControl, QueueParams};
use crate::sync::{AtomicU64, Ordering, UnsafeCell};

/// Ring bytes on the heap: one tracked cell per byte (under loom every
/// payload access is checked for races) and one atomic per 8-byte word for
/// header words.
///
/// Loom cannot mix atomic and plain access to the same bytes, so the two
/// views are kept apart; a payload write also stores the words it covers
/// into the atomic view (Relaxed), as the same bytes would read in a real
/// segment, so a stale word left by an older lap looks like one.
pub struct HeapRing {
    bytes: Box<[UnsafeCell<u8>]>,
    words: Box<[AtomicU64]>,
}

// SAFETY: concurrent access is governed by the algorithm's protocol, which
// is exactly what the models check; loom reports any racing access.
unsafe impl Sync for HeapRing {}
// SAFETY: the cells own plain bytes.
unsafe impl Send for HeapRing {}

impl HeapRing {
    /// `len` zero bytes (`len` a multiple of 8).
    pub fn new(len: usize) -> HeapRing {
        assert!(len.is_multiple_of(8));
        HeapRing {
            bytes: (0..len).map(|_| UnsafeCell::new(0)).collect(),
            words: (0..len / 8).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

// SAFETY: reads and writes touch exactly `off..off + n`, bounds-checked by
// slice indexing; `header` returns the word at `off`.
unsafe impl RingBytes for HeapRing {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    unsafe fn header(&self, off: u64) -> &AtomicU64 {
        &self.words[off as usize / 8]
    }

    unsafe fn write(&self, off: u64, src: &[u8]) {
        let cells = &self.bytes[off as usize..off as usize + src.len()];
        for (cell, byte) in cells.iter().zip(src) {
            // SAFETY: the caller guarantees no concurrent access.
            cell.with_mut(|p| unsafe { *p = *byte });
        }
        // Mirror whole words into the atomic view (payloads start 8-aligned;
        // a partial last word is completed with zero padding).
        if off.is_multiple_of(8) {
            for (i, chunk) in src.chunks(8).enumerate() {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                self.words[off as usize / 8 + i].store(u64::from_le_bytes(word), Ordering::Relaxed);
            }
        }
    }

    unsafe fn read(&self, off: u64, dst: &mut [u8]) {
        let cells = &self.bytes[off as usize..off as usize + dst.len()];
        for (cell, byte) in cells.iter().zip(dst) {
            // SAFETY: the caller guarantees no concurrent writer.
            *byte = cell.with(|p| unsafe { *p });
        }
    }
}

/// An edge log on the heap.
pub struct HeapEdge {
    /// The control block.
    pub ctrl: EdgeControl,
    /// The ring.
    pub ring: HeapRing,
}

impl HeapEdge {
    /// A log of `capacity` bytes whose positions start at `start`.
    ///
    /// # Panics
    /// If `capacity` is not a valid edge capacity.
    pub fn new(capacity: u64, start: u64) -> HeapEdge {
        let params = EdgeParams::new(capacity).expect("valid capacity");
        HeapEdge {
            ctrl: EdgeControl::new(params, start),
            ring: HeapRing::new(capacity as usize),
        }
    }

    /// Binds the algorithm to this log.
    pub fn edge(&self) -> Edge<'_, HeapRing> {
        Edge::new(&self.ctrl, &self.ring).expect("heap edge is consistent")
    }
}

/// A FabricQueue on the heap.
pub struct HeapQueue {
    /// The control block.
    pub ctrl: QueueControl,
    /// The slots.
    pub slots: HeapRing,
}

impl HeapQueue {
    /// A queue of `capacity` slots of `stride` payload bytes.
    ///
    /// # Panics
    /// If the parameters are out of range.
    pub fn new(capacity: u64, stride: u64) -> HeapQueue {
        let params = QueueParams::new(capacity, stride).expect("valid queue parameters");
        HeapQueue {
            slots: HeapRing::new(params.slots_len() as usize),
            ctrl: QueueControl::new(params),
        }
    }

    /// Binds the algorithm to this queue.
    pub fn queue(&self) -> Queue<'_, HeapRing> {
        Queue::new(&self.ctrl, &self.slots).expect("heap queue is consistent")
    }
}

/// The futex stand-in for loom models: one Mutex/Condvar pair shared by
/// every word (loom has no futex). A lost wake-up shows as a deadlock.
#[cfg(loom)]
#[derive(Default)]
pub struct LoomFutex {
    lock: loom::sync::Mutex<()>,
    cond: loom::sync::Condvar,
}

#[cfg(loom)]
impl crate::wait::Futex for LoomFutex {
    fn wait(
        &self,
        word: &crate::sync::AtomicU32,
        expected: u32,
        _deadline: Option<std::time::Instant>,
    ) {
        self.wait_any(&[(word, expected)], None);
    }

    fn wait_any(
        &self,
        words: &[(&crate::sync::AtomicU32, u32)],
        _deadline: Option<std::time::Instant>,
    ) {
        let guard = self.lock.lock().unwrap();
        // Checked under the lock that `wake_all` takes after its bump, as
        // the kernel checks a futex word under its hash-bucket lock.
        if words
            .iter()
            .all(|(w, v)| w.load(crate::sync::Ordering::Relaxed) == *v)
        {
            drop(self.cond.wait(guard).unwrap());
        }
    }

    fn wake_all(&self, _word: &crate::sync::AtomicU32) {
        let _guard = self.lock.lock().unwrap();
        self.cond.notify_all();
    }
}

/// A FabricHashMap on the heap: control block, bucket heads, and arenas of
/// fixed sizes (the first is arena 0; `grow` hands out the rest in order).
pub struct HeapMap {
    /// The control block.
    pub ctrl: crate::map::MapControl,
    /// The bucket heads.
    pub buckets: HeapRing,
    /// The arenas.
    pub arenas: HeapArenas,
}

/// Arenas of a [`HeapMap`].
pub struct HeapArenas {
    rings: Vec<HeapRing>,
}

impl HeapMap {
    /// A map of `buckets` buckets whose arenas have `arena_lens` bytes
    /// (multiples of 64; the first is arena 0).
    ///
    /// # Panics
    /// If `buckets` is out of range or `arena_lens` is empty.
    pub fn new(buckets: u64, arena_lens: &[u64]) -> HeapMap {
        let params = crate::map::MapParams::new(buckets).expect("valid bucket count");
        HeapMap {
            ctrl: crate::map::MapControl::new(params, arena_lens[0]),
            buckets: HeapRing::new(params.buckets_len() as usize),
            arenas: HeapArenas {
                rings: arena_lens
                    .iter()
                    .map(|&l| HeapRing::new(l as usize))
                    .collect(),
            },
        }
    }

    /// Binds the algorithm to this map.
    pub fn map(&self) -> crate::map::Map<'_, HeapRing, HeapArenas> {
        crate::map::Map::new(&self.ctrl, &self.buckets, &self.arenas)
            .expect("heap map is consistent")
    }
}

impl crate::map::Arenas for HeapArenas {
    type Bytes = HeapRing;

    fn arena(&self, index: u32, _lease_id: u64, _len: u64) -> Option<&HeapRing> {
        self.rings.get(index as usize)
    }

    fn grow(&self, index: u32, min_len: u64) -> Option<(u64, u64)> {
        let ring = self.rings.get(index as usize)?;
        (ring.len() >= min_len).then_some((u64::from(index), ring.len()))
    }
}

/// A futex that never sleeps (single-threaded tests and models that spin).
pub struct NoFutex;

impl crate::wait::Futex for NoFutex {
    fn wait(&self, _: &crate::sync::AtomicU32, _: u32, _: Option<std::time::Instant>) {}
    fn wait_any(&self, _: &[(&crate::sync::AtomicU32, u32)], _: Option<std::time::Instant>) {}
    fn wake_all(&self, _: &crate::sync::AtomicU32) {}
}

/// A topic on the heap: its control block, and each partition's control
/// block and slots.
pub struct HeapTopic {
    /// The topic's control block.
    pub ctrl: crate::topic::TopicControl,
    parts: Vec<(crate::topic::PartitionControl, HeapRing)>,
    geo: crate::topic::Geometry,
}

impl HeapTopic {
    /// A topic of `partitions` partitions of `capacity` records of up to
    /// `stride` bytes (groups released as soon as they are idle).
    ///
    /// # Panics
    /// If the parameters are out of range.
    pub fn new(
        partitions: u64,
        capacity: u64,
        stride: u64,
        overflow: crate::topic::Overflow,
    ) -> HeapTopic {
        let params = crate::topic::TopicParams::new(partitions, capacity, stride, overflow, 0)
            .expect("valid topic parameters");
        HeapTopic {
            geo: crate::topic::Geometry::validate(&params, params.total_len())
                .expect("consistent parameters"),
            ctrl: crate::topic::TopicControl::new(params),
            parts: (0..partitions)
                .map(|_| {
                    (
                        crate::topic::PartitionControl::new(),
                        HeapRing::new(params.slots_len() as usize),
                    )
                })
                .collect(),
        }
    }

    /// Binds the algorithm to partition `p`.
    pub fn partition(&self, p: usize) -> crate::topic::Partition<'_, HeapRing> {
        let (ctrl, slots) = &self.parts[p];
        crate::topic::Partition::new(&self.ctrl, ctrl, slots, self.geo)
    }

    /// Every partition, bound.
    pub fn partitions(&self) -> Vec<crate::topic::Partition<'_, HeapRing>> {
        (0..self.parts.len()).map(|p| self.partition(p)).collect()
    }
}
