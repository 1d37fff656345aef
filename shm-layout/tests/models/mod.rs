#![allow(dead_code)] // Each test binary runs a subset of the models.
//! Loom models shared by the model tests and their mutation checks.
//!
//! Each model runs the production algorithm on a heap model with tiny
//! capacities. `loom_models.rs` runs them as written (they must pass);
//! `loom_mutations.rs` runs each with its aimed mutation (it must fail).

pub mod handoff;
pub mod map;
pub mod queue;
pub mod rebind;
pub mod topic;

use grafos_shm_layout::edge::{Edge, EdgeError, ProducerCursor};
use grafos_shm_layout::heap::{HeapEdge, HeapRing, LoomFutex};
use grafos_shm_layout::sync::{AtomicU64, Ordering};
use grafos_shm_layout::wait::{WaitPoint, Waiter, wait_any};
use loom::sync::Arc;
use loom::thread;

/// Runs `f` under loom with the budget from the environment
/// (`LOOM_MAX_PREEMPTIONS`, default 2 here).
pub fn check(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

/// Runs `f` under loom with at least `bound` preemptions (for a model whose
/// race needs more than the default).
pub fn check_with_preemptions(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(builder.preemption_bound.unwrap_or(0).max(bound));
    builder.check(f);
}

/// Runs `f` under loom with one preemption, for a model whose threads
/// wait by spinning (each spin is a branch): with three spinning threads
/// two preemptions take longer than CI has (over 15 minutes), one takes
/// a second, and its aimed mutations still fail.
pub fn check_spinning(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(1);
    builder.max_branches = 100_000;
    builder.check(f);
}

/// A loom `Arc` held by a model's main thread, forgotten if that thread
/// unwinds: loom reports a deadlock by panicking in the thread that blocked
/// last, and dropping a loom object while unwinding would abort the whole
/// test process instead of failing the model.
pub struct Held<T>(Option<Arc<T>>);

impl<T> Held<T> {
    /// Holds `value`.
    pub fn new(value: T) -> Held<T> {
        Held(Some(Arc::new(value)))
    }

    /// Another handle for a spawned thread.
    pub fn share(&self) -> Arc<T> {
        Arc::clone(self.0.as_ref().expect("held until dropped"))
    }
}

impl<T> std::ops::Deref for Held<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_ref().expect("held until dropped")
    }
}

impl<T> Drop for Held<T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.0.take());
        }
    }
}

/// Pushes `data`, yielding while the ring is full.
fn push_spinning(edge: &Edge<'_, HeapRing>, cur: &mut ProducerCursor, data: &[u8]) {
    loop {
        match edge.try_push(cur, data) {
            Ok(_) => return,
            Err(EdgeError::Full) => thread::yield_now(),
            Err(e) => panic!("push failed: {e}"),
        }
    }
}

/// Producer and consumer on a 64-byte ring; records of 24, 32 and 24
/// framed bytes force reuse of committed space, a padding record and a
/// wrap onto bytes that held an older lap's headers. The consumer commits
/// the first two records together (one commit, no fence before it, so the
/// commit's own ordering is all that protects the reads), then the third. Payload bytes are tracked cells, so a missing
/// Release/Acquire pair shows as a causality violation; a stale header
/// left unzeroed shows as a phantom fourth record.
pub fn edge_wraparound() {
    let heap = Arc::new(HeapEdge::new(64, 0));
    let records: [&[u8]; 3] = [&[1; 16], &[2; 24], &[3; 16]];
    let producer = {
        let heap = heap.clone();
        thread::spawn(move || {
            let edge = heap.edge();
            let mut cur = edge.producer_cursor().unwrap();
            for data in records {
                push_spinning(&edge, &mut cur, data);
            }
        })
    };
    let edge = heap.edge();
    let futex = LoomFutex::default();
    let mut cur = edge.consumer_cursor().unwrap();
    for (i, expected) in records.iter().enumerate() {
        let record = loop {
            match edge.try_next(&mut cur).unwrap() {
                Some(r) => break r,
                None => thread::yield_now(),
            }
        };
        let mut buf = vec![0; record.len() as usize];
        edge.copy_out(&record, &mut buf);
        assert_eq!(&buf, expected, "record read out of order or torn");
        if i > 0 {
            edge.commit(&mut cur, record.next(), &futex).unwrap();
        }
    }
    producer.join().unwrap();
    assert_eq!(
        edge.try_next(&mut cur).unwrap(),
        None,
        "phantom record after the last one"
    );
}

/// A consumer reads two records, commits only the first and "dies"; a new
/// consumer resumes after the commit and sees the second record again,
/// while the producer is still appending.
pub fn edge_commit_reopen() {
    let heap = Arc::new(HeapEdge::new(64, 0));
    let producer = {
        let heap = heap.clone();
        thread::spawn(move || {
            let edge = heap.edge();
            let mut cur = edge.producer_cursor().unwrap();
            for value in 1..=3u8 {
                push_spinning(&edge, &mut cur, &[value; 8]);
            }
        })
    };
    let edge = heap.edge();
    let read = |cur: &mut _| loop {
        if let Some(r) = edge.try_next(cur).unwrap() {
            let mut buf = [0u8; 8];
            edge.copy_out(&r, &mut buf);
            break (buf[0], r.next());
        }
        thread::yield_now();
    };
    let mut first = edge.consumer_cursor().unwrap();
    let (one, after_one) = read(&mut first);
    assert_eq!(one, 1);
    edge.commit(&mut first, after_one, &LoomFutex::default())
        .unwrap();
    let (two, _) = read(&mut first);
    assert_eq!(two, 2);
    // The first consumer dies here without committing record 2.
    let mut second = edge.consumer_cursor().unwrap();
    assert_eq!(read(&mut second).0, 2, "uncommitted record not re-read");
    let (three, end) = read(&mut second);
    assert_eq!(three, 3);
    edge.commit(&mut second, end, &LoomFutex::default())
        .unwrap();
    producer.join().unwrap();
}

/// A producer races a sealer while the consumer reads and commits, and
/// the producer laps onto committed space. Every
/// record the producer saw acknowledged is read, none appears after the
/// seal's END, and the consumer ends on `Sealed`.
pub fn edge_seal_race() {
    let heap = Arc::new(HeapEdge::new(64, 0));
    let acked = Arc::new(AtomicU64::new(0));
    // Both sides sleep instead of spinning (loom explores spinning poorly);
    // the seal must wake them.
    let futex = Arc::new(LoomFutex::default());
    let producer = {
        let (heap, acked, futex) = (heap.clone(), acked.clone(), futex.clone());
        thread::spawn(move || {
            let edge = heap.edge();
            let Ok(mut cur) = edge.producer_cursor() else {
                return;
            };
            // Keeps trying after a Sealed error: every later push must
            // fail too (one that succeeded would land after the seal).
            for value in 1..=3u8 {
                loop {
                    match edge.try_push(&mut cur, &[value; 16]) {
                        Ok(_) => {
                            edge.wake_consumer(&*futex);
                            acked.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(EdgeError::Full) => {
                            edge.wait_for_space(&cur, 16, &*futex, 0, None);
                        }
                        Err(EdgeError::Sealed) => break,
                        Err(e) => panic!("seal violated: the producer got {e}"),
                    }
                }
            }
        })
    };
    let sealer = {
        let (heap, futex) = (heap.clone(), futex.clone());
        thread::spawn(move || heap.edge().seal(&*futex).unwrap())
    };
    let edge = heap.edge();
    let mut cur = edge.consumer_cursor().unwrap();
    let mut read = 0;
    loop {
        match edge.try_next(&mut cur) {
            Ok(Some(record)) => {
                read += 1;
                edge.commit(&mut cur, record.next(), &*futex).unwrap();
            }
            Ok(None) => {
                edge.wait_for_data(&cur, &*futex, 0, None);
            }
            Err(EdgeError::Sealed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    producer.join().unwrap();
    let end = sealer.join().unwrap();
    assert_eq!(
        cur.read_position(),
        end,
        "seal violated: a record appeared after the seal"
    );
    assert_eq!(
        read,
        acked.load(Ordering::Relaxed),
        "seal violated: acknowledged records missing"
    );
}

/// A sleeper waits for a flag; a waker sets it and wakes. A lost wake-up
/// leaves the sleeper blocked forever, which loom reports as a deadlock.
pub fn wait_no_lost_wakeup() {
    let point = Arc::new(WaitPoint::new());
    let flag = Arc::new(AtomicU64::new(0));
    let futex = Arc::new(LoomFutex::default());
    let waker = {
        let (point, flag, futex) = (point.clone(), flag.clone(), futex.clone());
        thread::spawn(move || {
            flag.store(1, Ordering::Release);
            point.wake(&*futex);
        })
    };
    let woke = point.wait_until(&*futex, Waiter::slot(0), 0, None, || {
        flag.load(Ordering::Acquire) == 1
    });
    assert!(woke);
    waker.join().unwrap();
    assert!(!point.has_waiters(), "registration left behind");
}

/// A consumer sleeps on an edge log until the producer's records arrive.
pub fn edge_blocking_read() {
    let heap = Arc::new(HeapEdge::new(64, 0));
    let futex = Arc::new(LoomFutex::default());
    let producer = {
        let (heap, futex) = (heap.clone(), futex.clone());
        thread::spawn(move || {
            let edge = heap.edge();
            let mut cur = edge.producer_cursor().unwrap();
            edge.try_push(&mut cur, &[9; 8]).unwrap();
            edge.wake_consumer(&*futex);
        })
    };
    let edge = heap.edge();
    let mut cur = edge.consumer_cursor().unwrap();
    let record = loop {
        if let Some(r) = edge.try_next(&mut cur).unwrap() {
            break r;
        }
        assert!(edge.wait_for_data(&cur, &*futex, 0, None));
    };
    assert_eq!(record.len(), 8);
    producer.join().unwrap();
}

/// A sleeper waits on two points at once; the waker changes the second.
pub fn wait_any_no_lost_wakeup() {
    let points = Arc::new([WaitPoint::new(), WaitPoint::new()]);
    let flag = Arc::new(AtomicU64::new(0));
    let futex = Arc::new(LoomFutex::default());
    let waker = {
        let (points, flag, futex) = (points.clone(), flag.clone(), futex.clone());
        thread::spawn(move || {
            flag.store(1, Ordering::Release);
            points[1].wake(&*futex);
        })
    };
    let woke = wait_any(
        &*futex,
        &[&points[0], &points[1]],
        Waiter::slot(3),
        None,
        || flag.load(Ordering::Acquire) == 1,
    );
    assert!(woke);
    waker.join().unwrap();
}
