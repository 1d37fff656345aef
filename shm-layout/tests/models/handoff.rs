//! Loom models of the handoff record (`grafos_shm_layout::handoff`):
//! publication by CAS against the expected generation, readers that never
//! return a torn locator, and a dead publisher's claim reverted.
//!
//! A locator's four words all carry the number of the generation they
//! belong to, so a torn read shows as words that differ from the
//! generation read with them.

use grafos_shm_layout::handoff::{HandoffControl, HandoffError, SLOT_WORDS};
use grafos_shm_layout::sync::Ordering;
use loom::thread;

use super::Held;

/// Reads and checks that the locator is whole and belongs to the
/// generation read with it.
fn read_whole(h: &HandoffControl) -> u64 {
    whole(h.read())
}

/// Checks a read: the locator is whole and belongs to its generation.
/// (Concurrent reads run in a thread of their own and are checked after
/// every thread has joined, so a failed check unwinds no live thread.)
fn whole((generation, words): (u64, [u64; SLOT_WORDS])) -> u64 {
    let marks: [u64; SLOT_WORDS] = words.map(|w| w / 10);
    assert!(
        marks.iter().all(|&m| m == generation),
        "torn locator: generation {generation} read with {words:?}"
    );
    generation
}

/// A locator for generation `g` published by publisher `who`.
fn locator(g: u64, who: u64) -> [u64; SLOT_WORDS] {
    [g * 10 + who; SLOT_WORDS]
}

/// Two publishers expect generation 1; exactly one makes generation 2, and
/// a concurrent reader sees generation 1 or 2, whole.
pub fn handoff_two_publishers() {
    let h = Held::new(HandoffControl::new());
    h.publish(0, locator(1, 0), 1, |_| false).unwrap();
    let publishers: Vec<_> = [(10u32, 1u64), (11, 2)]
        .into_iter()
        .map(|(pid, who)| {
            let h = h.share();
            thread::spawn(move || h.publish(1, locator(2, who), pid, |_| false))
        })
        .collect();
    let reader = {
        let h = h.share();
        thread::spawn(move || h.read())
    };
    let results: Vec<_> = publishers.into_iter().map(|p| p.join().unwrap()).collect();
    let seen = whole(reader.join().unwrap());
    assert!(seen == 1 || seen == 2);
    let winners = results.iter().filter(|r| **r == Ok(2)).count();
    assert_eq!(winners, 1, "two publishers won (or none): {results:?}");
    for r in &results {
        assert!(
            matches!(
                r,
                Ok(2) | Err(HandoffError::Conflict { current: 2 }) | Err(HandoffError::Busy { .. })
            ),
            "{r:?}"
        );
    }
    assert_eq!(read_whole(&h), 2);
}

/// A reader racing two publications in a row (the second writes the slot
/// the first generation lived in) never returns a torn locator.
pub fn handoff_reader_during_two_publications() {
    let h = Held::new(HandoffControl::new());
    h.publish(0, locator(1, 0), 1, |_| false).unwrap();
    let publisher = {
        let h = h.share();
        thread::spawn(move || {
            h.publish(1, locator(2, 0), 7, |_| false).unwrap();
            h.publish(2, locator(3, 0), 7, |_| false).unwrap();
        })
    };
    let reader = {
        let h = h.share();
        thread::spawn(move || h.read())
    };
    publisher.join().unwrap();
    let seen = whole(reader.join().unwrap());
    assert!((1..=3).contains(&seen));
    assert_eq!(read_whole(&h), 3);
}

/// A publisher died after claiming generation 1 -> 2 and writing half a
/// slot. The next publisher reverts its claim and publishes; a reader
/// meanwhile sees generation 1 or 2, whole.
pub fn handoff_dead_publisher_reverted() {
    let h = Held::new(HandoffControl::new());
    h.publish(0, locator(1, 0), 1, |_| false).unwrap();
    // The dead publisher (pid 9): BUSY at generation 1, half of slot 0.
    h.word().store(1 << 24 | 9 << 1 | 1, Ordering::Relaxed);
    let publisher = {
        let h = h.share();
        thread::spawn(move || h.publish(1, locator(2, 0), 7, |pid| pid == 9))
    };
    let reader = {
        let h = h.share();
        thread::spawn(move || h.read())
    };
    let published = publisher.join().unwrap();
    let seen = whole(reader.join().unwrap());
    assert!(seen == 1 || seen == 2);
    assert_eq!(published, Ok(2));
    assert_eq!(read_whole(&h), 2);
}
