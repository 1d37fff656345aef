//! Loom models of the FabricQueue (`grafos_shm_layout::queue`).
//!
//! Capacities of 1 or 2 slots with 8-byte strides; records of one or two
//! bytes, held in tracked cells, so a missing Release/Acquire pair shows
//! as a causality violation and a lost wake-up as a deadlock.

use grafos_shm_layout::heap::{HeapQueue, HeapRing, LoomFutex};
use grafos_shm_layout::queue::{Incarnation, Queue, QueueError};
use grafos_shm_layout::sync::{AtomicU64, Ordering};
use grafos_shm_layout::wait::Waiter;
use loom::sync::Arc;

use super::Held;
use loom::thread;

fn inc(n: u32) -> Incarnation {
    Incarnation::new(n).unwrap()
}

/// Pushes, sleeping while full (waiter bit = incarnation).
fn push_blocking(
    q: &Queue<'_, HeapRing>,
    me: Incarnation,
    futex: &LoomFutex,
    data: &[u8],
) -> Result<u64, QueueError> {
    loop {
        match q.try_push(me, data, futex) {
            Err(QueueError::Full) => {
                q.wait_for_space(Waiter::slot(me.get()), futex, 0, None);
            }
            other => return other,
        }
    }
}

/// Pops, sleeping while empty.
fn pop_blocking(
    q: &Queue<'_, HeapRing>,
    me: Incarnation,
    futex: &LoomFutex,
) -> Result<Vec<u8>, QueueError> {
    loop {
        if let Some(record) = q.try_pop(me, futex)? {
            return Ok(record);
        }
        q.wait_for_data(Waiter::slot(me.get()), futex, 0, None);
    }
}

/// Pops (sleeping while empty) into `drained` until the queue says
/// `Sealed`.
fn drain_until_sealed(
    q: &Queue<'_, HeapRing>,
    me: Incarnation,
    futex: &LoomFutex,
    drained: &mut Vec<Vec<u8>>,
) {
    loop {
        match pop_blocking(q, me, futex) {
            Ok(r) => drained.push(r),
            Err(QueueError::Sealed) => return,
            Err(e) => panic!("pop failed: {e}"),
        }
    }
}

/// Takes one record by hand: take, copy out, release (which fails if
/// another consumer took the same record).
fn take_one(q: &Queue<'_, HeapRing>, me: Incarnation, futex: &LoomFutex) -> Vec<u8> {
    loop {
        if let Some(taken) = q.try_take(me, futex).unwrap() {
            let mut out = vec![0; taken.len() as usize];
            q.copy_out(&taken, &mut out);
            q.release(taken)
                .expect("record taken twice: its release failed");
            q.wake_producers(futex);
            return out;
        }
        q.wait_for_data(Waiter::slot(me.get()), futex, 0, None);
    }
}

/// Two producers, one consumer, two slots: both records arrive, whole.
/// Covers the publishing CAS (Release) and the consumer's Acquire load.
pub fn two_producers_one_consumer() {
    let heap = Held::new(HeapQueue::new(2, 8));
    let futex = Held::new(LoomFutex::default());
    let producers: Vec<_> = [1u8, 2]
        .into_iter()
        .map(|p| {
            let (heap, futex) = (heap.share(), futex.share());
            thread::spawn(move || {
                push_blocking(&heap.queue(), inc(u32::from(p)), &futex, &[p, p]).unwrap();
            })
        })
        .collect();
    let q = heap.queue();
    let mut got = vec![
        pop_blocking(&q, inc(3), &futex).unwrap(),
        pop_blocking(&q, inc(3), &futex).unwrap(),
    ];
    for p in producers {
        p.join().unwrap();
    }
    got.sort();
    assert_eq!(got, vec![vec![1, 1], vec![2, 2]], "records lost or torn");
}

/// One producer (the main thread, pushing while the other consumer may
/// already wait), two consumers: each record is taken exactly once.
/// Covers the consumer's claiming CAS.
pub fn one_producer_two_consumers() {
    let heap = Held::new(HeapQueue::new(2, 8));
    let futex = Held::new(LoomFutex::default());
    let consumer = {
        let (heap, futex) = (heap.share(), futex.share());
        thread::spawn(move || take_one(&heap.queue(), inc(2), &futex))
    };
    let q = heap.queue();
    q.try_push(inc(1), &[1], &*futex).unwrap();
    q.try_push(inc(1), &[2], &*futex).unwrap();
    let mine = take_one(&q, inc(3), &futex);
    let theirs = consumer.join().unwrap();
    assert_ne!(mine, theirs, "record taken twice");
    let mut got = vec![mine, theirs];
    got.sort();
    assert_eq!(got, vec![vec![1], vec![2]]);
}

/// One slot, three records: the producer reuses the slot each lap while
/// the consumer may still be reading it. Covers the consumer's releasing
/// CAS (Release) and the producer's Acquire of the freed slot.
pub fn wraparound() {
    let heap = Held::new(HeapQueue::new(1, 8));
    let futex = Held::new(LoomFutex::default());
    let producer = {
        let (heap, futex) = (heap.share(), futex.share());
        thread::spawn(move || {
            let q = heap.queue();
            for r in 1..=3u8 {
                push_blocking(&q, inc(1), &futex, &[r, r]).unwrap();
            }
        })
    };
    let q = heap.queue();
    for r in 1..=3u8 {
        assert_eq!(
            pop_blocking(&q, inc(2), &futex).unwrap(),
            vec![r, r],
            "record out of order or torn"
        );
    }
    producer.join().unwrap();
    assert_eq!(q.positions().depth(), 0);
}

/// One slot: pop on empty finds nothing, push on full is refused, and a
/// push that sleeps on the full queue completes once the consumer frees
/// the slot. Covers the lap arithmetic that tells full from empty, and the
/// producer's side of the wake-up protocol. (Only the main thread ever
/// sleeps, so a lost wake-up is reported as a deadlock, cleanly.)
pub fn full_and_empty() {
    let heap = Held::new(HeapQueue::new(1, 8));
    let futex = Held::new(LoomFutex::default());
    let q = heap.queue();
    assert_eq!(q.try_pop(inc(1), &*futex), Ok(None), "empty queue popped");
    q.try_push(inc(1), &[1], &*futex).unwrap();
    assert_eq!(q.try_push(inc(1), &[9], &*futex), Err(QueueError::Full));
    let consumer = {
        let (heap, futex) = (heap.share(), futex.share());
        thread::spawn(move || heap.queue().try_pop(inc(2), &*futex).unwrap())
    };
    push_blocking(&q, inc(1), &futex, &[2]).unwrap();
    assert_eq!(consumer.join().unwrap(), Some(vec![1]));
    assert_eq!(q.try_pop(inc(1), &*futex), Ok(Some(vec![2])));
    assert_eq!(q.try_pop(inc(1), &*futex), Ok(None));
}

/// A producer stops between its slot CAS and its `tail` CAS (as under
/// SIGSTOP); another producer must help `tail` past it and push.
pub fn help_past_a_stopped_claimer() {
    let heap = Arc::new(HeapQueue::new(2, 8));
    let stopped = {
        let heap = heap.clone();
        thread::spawn(move || {
            // Claims and never advances `tail` (the claim is leaked). The
            // model asserts only on the other producer.
            drop(heap.queue().claim_slot(inc(1), 1));
        })
    };
    let pushed = heap.queue().try_push(inc(2), &[2], &LoomFutex::default());
    stopped.join().unwrap();
    assert!(
        pushed.is_ok(),
        "producer wedged behind a stopped claimer: {pushed:?}"
    );
}

/// A producer dies between its slot CAS and its `tail` CAS; repair tombs
/// its claim; a consumer skips the tomb while another producer pushes: the
/// push must get past the position (whose slot may already show the next
/// lap) instead of wedging.
pub fn help_past_a_repaired_claim() {
    let heap = Arc::new(HeapQueue::new(2, 8));
    let futex = Arc::new(LoomFutex::default());
    // Set once the consumer has skipped the tomb. The producer reads it
    // once (it never waits on it): when it reads true, the skip happened
    // before its push, the case where the slot at `tail` is a lap ahead.
    let skipped = Arc::new(AtomicU64::new(0));
    {
        let q = heap.queue();
        drop(q.claim_slot(inc(1), 1).unwrap());
        q.repair(100, inc(1), |_| true, &*futex).unwrap();
    }
    let consumer = {
        let (heap, futex, skipped) = (heap.clone(), futex.clone(), skipped.clone());
        thread::spawn(move || {
            let popped = heap.queue().try_pop(inc(3), &*futex).unwrap();
            skipped.store(1, Ordering::Release);
            popped
        })
    };
    let after_skip = skipped.load(Ordering::Acquire) == 1;
    let pushed = heap.queue().try_push(inc(2), &[2], &*futex);
    let early = consumer.join().unwrap();
    assert!(
        pushed.is_ok(),
        "producer wedged behind a repaired claim (pushing after the skip: {after_skip}): {pushed:?}"
    );
    let late = heap.queue().try_pop(inc(3), &*futex).unwrap();
    assert_eq!(
        early.or(late),
        Some(vec![2]),
        "the record after the tomb is delivered"
    );
}

/// A participant died holding a claim; a sweep of dead participants runs
/// while a live participant registers and pushes: the dead claim is
/// repaired, the live one is not, and the live record is delivered.
pub fn repair_dead_spares_the_living() {
    let heap = Arc::new(HeapQueue::new(2, 8));
    let futex = Arc::new(LoomFutex::default());
    let is_dead = |token: u64| token == 1;
    {
        let q = heap.queue();
        let dead = q.attach(1, is_dead, &*futex).unwrap();
        drop(q.try_claim(dead.incarnation(), 1, &*futex).unwrap());
    }
    let sweeper = {
        let (heap, futex) = (heap.clone(), futex.clone());
        thread::spawn(move || heap.queue().repair_dead(3, is_dead, &*futex).unwrap())
    };
    let q = heap.queue();
    let live = q.attach(2, is_dead, &*futex).unwrap();
    let pushed = q.try_push(live.incarnation(), &[2], &*futex);
    let report = sweeper.join().unwrap();
    assert!(
        pushed.is_ok(),
        "a live participant's claim was repaired: {pushed:?}"
    );
    assert_eq!(report.claims_tombed, 1, "the dead claim was not repaired");
    assert_eq!(q.try_pop(live.incarnation(), &*futex), Ok(Some(vec![2])));
}

/// Repair of a producer judged dead races its (late) publish: either the
/// publish wins and the record is delivered, or the repair wins and the
/// publish reports `ClaimRepaired`. Never Ok and lost.
pub fn repair_races_a_late_publish() {
    let heap = Arc::new(HeapQueue::new(2, 8));
    let futex = Arc::new(LoomFutex::default());
    let producer = {
        let heap = heap.clone();
        thread::spawn(move || heap.queue().try_push(inc(1), &[7], &LoomFutex::default()))
    };
    let repairer = {
        let (heap, futex) = (heap.clone(), futex.clone());
        thread::spawn(move || heap.queue().repair(100, inc(1), |_| true, &*futex).unwrap())
    };
    let pushed = producer.join().unwrap();
    let report = repairer.join().unwrap();
    let q = heap.queue();
    let popped = q.try_pop(inc(2), &*futex).unwrap();
    match pushed {
        Ok(_) => assert_eq!(popped, Some(vec![7]), "acknowledged record lost"),
        Err(e) => {
            assert_eq!(e, QueueError::ClaimRepaired);
            assert_eq!(popped, None, "a repaired claim was delivered");
            assert_eq!(report.claims_tombed, 1);
        }
    }
}

/// A full one-slot queue is sealed while a producer tries to push and a
/// consumer drains until `Sealed`: a push that returns Ok must have been
/// drained, even if the producer read `tail` before the seal and found the
/// slot freed after it.
pub fn seal_against_a_stale_tail() {
    let heap = Held::new(HeapQueue::new(1, 8));
    let futex = Held::new(LoomFutex::default());
    heap.queue().try_push(inc(1), &[1], &*futex).unwrap();
    let producer = {
        let (heap, futex) = (heap.share(), futex.share());
        thread::spawn(move || heap.queue().try_push(inc(1), &[2], &*futex))
    };
    let sealer = {
        let (heap, futex) = (heap.share(), futex.share());
        thread::spawn(move || heap.queue().seal(&*futex).unwrap())
    };
    let q = heap.queue();
    let mut drained = vec![q.try_pop(inc(2), &*futex).unwrap().unwrap()];
    sealer.join().unwrap();
    drain_until_sealed(&q, inc(2), &futex, &mut drained);
    let pushed = producer.join().unwrap();
    assert_eq!(drained[0], vec![1]);
    match pushed {
        Ok(_) => assert!(
            drained.contains(&vec![2]),
            "acknowledged record lost by the seal"
        ),
        Err(e) => assert!(matches!(e, QueueError::Sealed | QueueError::Full), "{e}"),
    }
}

/// A queue is sealed while a producer pushes and a consumer drains until
/// `Sealed` at the same time: a push that returns Ok must be drained. The
/// consumer may reach the sealed end while the producer's claim sits there
/// unpublished; the seal must kill that claim, not move `tail` past it.
/// (Needs three preemptions: run with `check_with_preemptions(3, ..)`.)
pub fn seal_while_draining() {
    let heap = Held::new(HeapQueue::new(1, 8));
    let futex = Held::new(LoomFutex::default());
    let producer = {
        let (heap, futex) = (heap.share(), futex.share());
        thread::spawn(move || heap.queue().try_push(inc(1), &[1], &*futex))
    };
    let sealer = {
        let (heap, futex) = (heap.share(), futex.share());
        thread::spawn(move || heap.queue().seal(&*futex).unwrap())
    };
    let q = heap.queue();
    let mut drained = Vec::new();
    drain_until_sealed(&q, inc(2), &futex, &mut drained);
    let pushed = producer.join().unwrap();
    sealer.join().unwrap();
    match pushed {
        Ok(_) => assert_eq!(
            drained,
            vec![vec![1]],
            "acknowledged record missed by the drain"
        ),
        Err(e) => {
            assert_eq!(e, QueueError::Sealed);
            assert!(drained.is_empty(), "a failed push was delivered");
        }
    }
}

/// A consumer sleeps on an empty queue until a producer's publish wakes
/// it (the producer's side is in `full_and_empty`).
pub fn blocking_no_lost_wakeup() {
    let heap = Held::new(HeapQueue::new(1, 8));
    let futex = Held::new(LoomFutex::default());
    let producer = {
        let (heap, futex) = (heap.share(), futex.share());
        thread::spawn(move || heap.queue().try_push(inc(1), &[2], &*futex).unwrap())
    };
    let q = heap.queue();
    assert_eq!(pop_blocking(&q, inc(2), &futex).unwrap(), vec![2]);
    producer.join().unwrap();
}
