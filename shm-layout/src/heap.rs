//! Heap models of shared structures, for loom models and unit tests.
//!
//! Loom's atomics and cells cannot live in a mapped segment, so the models
//! put the same control blocks on the heap and the ring bytes in tracked
//! cells; the algorithm code they run is the production code.

use crate::edge::{Edge, EdgeControl, EdgeParams, RingBytes};
use crate::sync::UnsafeCell;

/// Ring bytes on the heap, one tracked cell per byte (under loom every
/// access is checked for races).
pub struct HeapRing {
    bytes: Box<[UnsafeCell<u8>]>,
}

// SAFETY: concurrent access is governed by the algorithm's protocol, which
// is exactly what the models check; loom reports any racing access.
unsafe impl Sync for HeapRing {}
// SAFETY: the cells own plain bytes.
unsafe impl Send for HeapRing {}

impl HeapRing {
    /// `len` zero bytes.
    pub fn new(len: usize) -> HeapRing {
        HeapRing {
            bytes: (0..len).map(|_| UnsafeCell::new(0)).collect(),
        }
    }
}

// SAFETY: reads and writes touch exactly `off..off + n`, bounds-checked by
// slice indexing.
unsafe impl RingBytes for HeapRing {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    unsafe fn write(&self, off: u64, src: &[u8]) {
        let cells = &self.bytes[off as usize..off as usize + src.len()];
        for (cell, byte) in cells.iter().zip(src) {
            // SAFETY: the caller guarantees no concurrent access.
            cell.with_mut(|p| unsafe { *p = *byte });
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
