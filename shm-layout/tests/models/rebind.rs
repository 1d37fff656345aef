//! Loom model of a relocation and the rebinding of both ends: a relocator
//! seals an edge log, carries what it holds into a fresh one at the same
//! positions and publishes the new generation on a handoff record; the
//! producer, whose publish the seal refused, pushes again into the new
//! log; the consumer reads the old log to its end, rebinds, and skips
//! what it already had. Every record arrives once, in order, and the
//! carried bytes are read only after they were written (loom tracks
//! every payload byte).

use grafos_shm_layout::edge::{Edge, EdgeError};
use grafos_shm_layout::handoff::{HandoffControl, SLOT_WORDS};
use grafos_shm_layout::heap::{HeapEdge, HeapRing, LoomFutex};
use loom::thread;

use super::Held;

/// The handoff locators of the two logs.
const OLD: [u64; SLOT_WORDS] = [1; SLOT_WORDS];
const NEW: [u64; SLOT_WORDS] = [2; SLOT_WORDS];

fn nobody_alive(_: u32, _: u64) -> bool {
    true
}

/// The two logs and the record that names the current one.
struct Placement {
    old: HeapEdge,
    new: HeapEdge,
    handoff: HandoffControl,
}

impl Placement {
    /// The log a handle bound to the current generation uses, waiting
    /// (yielding) until the record names the new one.
    fn wait_for_new(&self) -> Edge<'_, HeapRing> {
        while self.handoff.generation() < 2 {
            thread::yield_now();
        }
        assert_eq!(
            self.handoff.read(),
            (2, NEW),
            "a rebinder reads the published locator"
        );
        self.new.edge()
    }
}

/// Record 1 pushed before, record 2 while the log is relocated; the
/// consumer gets each exactly once, in order.
pub fn relocation_rebinds_both_ends() {
    let p = Held::new(Placement {
        old: HeapEdge::new(64, 0),
        new: HeapEdge::new(64, 0),
        handoff: HandoffControl::new(),
    });
    p.handoff.publish(0, OLD, (1, 0), nobody_alive).unwrap();
    // Record 1 is in the old log before anything races: it is carried.
    let mut cur = p.old.edge().producer_cursor().unwrap();
    p.old.edge().try_push(&mut cur, &[1]).unwrap();

    let producer = {
        let p = p.share();
        thread::spawn(move || {
            let old = p.old.edge();
            let mut next = 2u8;
            match old.try_push(&mut cur, &[next]) {
                Ok(_) => next += 1,
                Err(EdgeError::Sealed) => {}
                Err(e) => panic!("push failed: {e}"),
            }
            if next <= 2 {
                // Follow the relocation and push again what was refused.
                let new = p.wait_for_new();
                let mut cur = new.producer_cursor().expect("the new log's producer");
                while next <= 2 {
                    new.try_push(&mut cur, &[next])
                        .expect("push after rebinding");
                    next += 1;
                }
            }
        })
    };

    let consumer = {
        let p = p.share();
        thread::spawn(move || {
            let mut got = Vec::new();
            let mut delivered = 0;
            let old = p.old.edge();
            let mut cur = old.consumer_cursor().unwrap();
            loop {
                match old.try_next(&mut cur) {
                    Ok(Some(r)) => {
                        let mut b = [0];
                        old.copy_out(&r, &mut b);
                        got.push(b[0]);
                        delivered = r.next();
                    }
                    Ok(None) => thread::yield_now(),
                    Err(EdgeError::Sealed) => break,
                    Err(e) => panic!("read failed: {e}"),
                }
            }
            let new = p.wait_for_new();
            let mut cur = new.consumer_cursor().unwrap();
            while got.len() < 2 {
                match new.try_next(&mut cur).expect("read after rebinding") {
                    // Carried, and delivered before the move: skip.
                    Some(r) if r.position() < delivered => {}
                    Some(r) => {
                        let mut b = [0];
                        new.copy_out(&r, &mut b);
                        got.push(b[0]);
                    }
                    None => thread::yield_now(),
                }
            }
            got
        })
    };

    // The relocator: seal, carry from the committed position, publish.
    let old = p.old.edge();
    let end = old.seal(&LoomFutex::default()).unwrap();
    let (_, from, _) = old.positions();
    old.carry_into(&p.new.edge(), from, end).unwrap();
    p.handoff.publish(1, NEW, (2, 0), nobody_alive).unwrap();

    producer.join().unwrap();
    let got = consumer.join().unwrap();
    assert_eq!(got, [1, 2], "every record once, in order");
}
