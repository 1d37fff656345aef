//! Loom models of a topic partition: two producers appending into one
//! slot a lap apart, a reader racing a producer that laps it (overrun
//! detection), and backpressure holding a producer behind a group's
//! commits; a group member reading its assignment while a newcomer's
//! claim rebalances the group.

use grafos_shm_layout::heap::{HeapRing, HeapTopic, NoFutex};
use grafos_shm_layout::queue::Incarnation;
use grafos_shm_layout::topic::{Overflow, Partition, Read, TopicError};
use loom::thread;

use super::Held;

fn inc(n: u32) -> Incarnation {
    Incarnation::new(n).unwrap()
}

/// A record of two words, both `n`: a torn copy mixes two records' words.
fn record(n: u8) -> Vec<u8> {
    vec![n; 16]
}

/// Appends, yielding while the partition is full or the slot is still
/// written by a producer a lap behind.
fn append_spinning(p: &Partition<'_, HeapRing>, me: Incarnation, payload: &[u8]) -> u64 {
    loop {
        match p.append(me, payload) {
            Ok(offset) => return offset,
            Err(TopicError::Full | TopicError::Busy(_)) => thread::yield_now(),
            Err(e) => panic!("torn or lost: append failed: {e}"),
        }
    }
}

/// Reads `offset`, yielding while it is pending.
fn read_spinning(p: &Partition<'_, HeapRing>, offset: u64) -> (Read, Vec<u8>) {
    let mut buf = Vec::new();
    loop {
        match p.read(offset, &mut buf).unwrap() {
            Read::Pending(_) => thread::yield_now(),
            other => return (other, buf),
        }
    }
}

/// Two producers append one record each into a partition of one slot, so
/// the second offset's writer must wait for the first one's publish before
/// it takes the slot. Both appends succeed at offsets 0 and 1, and the
/// slot ends with the record of whoever got offset 1, whole.
pub fn two_producers_one_slot() {
    let heap = Held::new(HeapTopic::new(1, 1, 16, Overflow::Overwrite));
    let other = {
        let heap = heap.share();
        thread::spawn(move || append_spinning(&heap.partition(0), inc(2), &record(2)))
    };
    let mine = append_spinning(&heap.partition(0), inc(1), &record(1));
    let theirs = other.join().unwrap();
    let mut offsets = [mine, theirs];
    offsets.sort();
    assert_eq!(offsets, [0, 1], "two appends took one offset");
    let p = heap.partition(0);
    let (read, buf) = read_spinning(&p, 1);
    assert_eq!(read, Read::Record);
    let last = if mine == 1 { 1 } else { 2 };
    assert_eq!(
        buf,
        record(last),
        "torn or lost: the slot holds a mixed record"
    );
    assert!(matches!(
        read_spinning(&p, 0).0,
        Read::Lagged { lost: 1, resume: 1 }
    ));
}

/// A producer appends two records into a one-slot partition (the second
/// overwrites the first) while a reader reads offset 0: it gets record 0
/// whole, or learns it lagged; never a copy mixing both records.
pub fn reader_races_a_lapping_writer() {
    let heap = Held::new(HeapTopic::new(1, 1, 16, Overflow::Overwrite));
    let writer = {
        let heap = heap.share();
        thread::spawn(move || {
            let p = heap.partition(0);
            append_spinning(&p, inc(1), &record(1));
            append_spinning(&p, inc(1), &record(2));
        })
    };
    let p = heap.partition(0);
    let (read, buf) = read_spinning(&p, 0);
    match read {
        Read::Record => assert_eq!(buf, record(1), "torn or lost: a torn record was returned"),
        Read::Lagged { lost, resume } => assert_eq!((lost, resume), (1, 1)),
        Read::Hole | Read::Pending(_) => panic!("unexpected {read:?}"),
    }
    writer.join().unwrap();
}

/// Backpressure: a producer appends two records into a one-slot partition
/// that a group holds; the group's consumer reads each and commits it. The
/// producer waits for the commit, so the consumer never lags.
pub fn backpressure_never_overwrites() {
    let heap = Held::new(HeapTopic::new(1, 1, 16, Overflow::Backpressure));
    let group = heap.ctrl.group("g", 9, |_| false).unwrap();
    heap.ctrl.hold(group, &heap.partitions());
    let producer = {
        let heap = heap.share();
        thread::spawn(move || {
            let p = heap.partition(0);
            append_spinning(&p, inc(1), &record(1));
            append_spinning(&p, inc(1), &record(2));
        })
    };
    let p = heap.partition(0);
    for offset in 0..2 {
        let (read, buf) = read_spinning(&p, offset);
        assert_eq!(read, Read::Record, "lagged under backpressure");
        assert_eq!(buf, record(offset as u8 + 1), "torn or lost: wrong record");
        p.commit(group, offset + 1, &NoFutex);
    }
    producer.join().unwrap();
}

/// A reader thread reads offset 0 once while a producer appends it: the
/// record whole, or nothing yet; never the slot's bytes from before the
/// publish.
pub fn one_look_reader() {
    let heap = Held::new(HeapTopic::new(1, 2, 16, Overflow::Overwrite));
    let reader = {
        let heap = heap.share();
        thread::spawn(move || {
            let mut buf = Vec::new();
            let read = heap.partition(0).read(0, &mut buf).unwrap();
            (read, buf)
        })
    };
    append_spinning(&heap.partition(0), inc(1), &record(1));
    let (read, buf) = reader.join().unwrap();
    match read {
        Read::Record => assert_eq!(
            buf,
            record(1),
            "torn or lost: a record read before it was written"
        ),
        Read::Pending(_) => {}
        other => panic!("unexpected {other:?}"),
    }
}

/// A producer publishes while a repairer, judging it dead, tombs its
/// claim: exactly one wins. A publish that returned Ok is read back; one
/// refused leaves a hole; the next lap may take the slot either way.
pub fn repair_races_a_publish() {
    let heap = Held::new(HeapTopic::new(1, 1, 16, Overflow::Overwrite));
    let member = heap
        .ctrl
        .attach(5, |_| false, &heap.partitions(), &NoFutex)
        .unwrap();
    let producer = {
        let heap = heap.share();
        thread::spawn(move || {
            let p = heap.partition(0);
            let claim = p.claim(member.incarnation(), 16).unwrap();
            p.fill(&claim, &record(1));
            p.publish(claim)
        })
    };
    let repairer = {
        let heap = heap.share();
        thread::spawn(move || {
            heap.ctrl
                .repair_dead(1, |holder| holder == 5, &heap.partitions(), &NoFutex)
                .unwrap()
        })
    };
    let published = producer.join().unwrap();
    repairer.join().unwrap();
    let p = heap.partition(0);
    let (read, buf) = read_spinning(&p, 0);
    match published {
        Ok(0) => {
            assert_eq!(
                read,
                Read::Record,
                "torn or lost: an acknowledged record was tombed"
            );
            assert_eq!(buf, record(1));
        }
        Err(TopicError::ClaimRepaired) => assert_eq!(read, Read::Hole),
        other => panic!("unexpected publish {other:?}"),
    }
    assert_eq!(append_spinning(&p, inc(2), &record(2)), 1);
}

/// A group starts holding while a producer appends two records into a
/// one-slot partition: the record at the group's first cursor is never
/// overwritten before the group reads and commits it.
pub fn hold_races_an_append() {
    let heap = Held::new(HeapTopic::new(1, 1, 16, Overflow::Backpressure));
    let group = heap.ctrl.group("g", 9, |_| false).unwrap();
    let producer = {
        let heap = heap.share();
        thread::spawn(move || {
            let p = heap.partition(0);
            append_spinning(&p, inc(1), &record(1));
            append_spinning(&p, inc(1), &record(2));
        })
    };
    heap.ctrl.hold(group, &heap.partitions());
    let p = heap.partition(0);
    let first = p.cursor(group);
    if first < 2 {
        let (read, buf) = read_spinning(&p, first);
        assert_eq!(read, Read::Record, "lagged under backpressure");
        assert_eq!(buf, record(first as u8 + 1), "torn or lost: wrong record");
        p.commit(group, first + 1, &NoFutex);
    }
    producer.join().unwrap();
}

/// Member `a` owns all four partitions; `b` joins on another thread,
/// which hands `b` two of them (two owner words change). `a` reads its
/// assignment meanwhile: all four (before), its two (after), or
/// `Rebalancing`, never a mix of the two rebalances' words.
pub fn assignment_races_a_rebalance() {
    let heap = Held::new(HeapTopic::new(4, 1, 8, Overflow::Overwrite));
    let all = heap.partitions();
    let group = heap.ctrl.group("g", 9, |_| false).unwrap();
    let (a, owned) = heap
        .ctrl
        .claim_member(group, "a", 1, 0, 30_000, |_| false, &all)
        .unwrap();
    assert_eq!(owned.len(), 4);
    // Both actors on spawned threads (loom explores their interleavings).
    let joiner = {
        let heap = heap.share();
        thread::spawn(move || {
            let all = heap.partitions();
            heap.ctrl
                .claim_member(group, "b", 2, 0, 30_000, |_| false, &all)
                .unwrap()
                .1
                .len()
        })
    };
    let reader = {
        let heap = heap.share();
        thread::spawn(move || {
            let all = heap.partitions();
            match heap.ctrl.assignment(group, a, &all) {
                Ok(mine) => {
                    let parts: Vec<u64> = mine.iter().map(|o| o.partition).collect();
                    assert!(
                        parts == [0, 1, 2, 3] || parts == [0, 1],
                        "a mix of two rebalances: {parts:?}"
                    );
                }
                Err(TopicError::Rebalancing) => {}
                Err(e) => panic!("assignment failed: {e}"),
            }
        })
    };
    reader.join().unwrap();
    assert_eq!(joiner.join().unwrap(), 2);
}
