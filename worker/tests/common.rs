//! Helpers shared by the worker's integration tests.

use grafos_worker::segment::{Segment, SegmentName, list_segments};

/// A unique instance for one test; on drop, unlinks its segments and
/// asserts nothing of the instance is left in /dev/shm.
pub struct TestInstance {
    pub name: String,
}

impl TestInstance {
    pub fn new(tag: &str) -> TestInstance {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TestInstance {
            name: format!("t{}-{tag}-{n}", std::process::id()),
        }
    }

    pub fn segment(&self, object: &str) -> SegmentName {
        SegmentName::new(&self.name, object).unwrap()
    }

    pub fn leftovers(&self) -> Vec<String> {
        list_segments(&self.name).unwrap()
    }
}

impl Drop for TestInstance {
    fn drop(&mut self) {
        for object in self.leftovers() {
            let _ = Segment::unlink(&self.segment(&object));
        }
        if !std::thread::panicking() {
            assert!(self.leftovers().is_empty(), "segments left in /dev/shm");
        }
    }
}
