//! Loom models of the FabricHashMap: a reader racing an insert, an
//! overwrite and a delete, and the reclamation rule (a pinned reader never
//! sees reused memory).

use grafos_shm_layout::heap::{HeapArenas, HeapMap, HeapRing};
use grafos_shm_layout::map::{Map, MapError, PinSlotId};
use loom::thread;

use super::Held;

const WRITER: u64 = 1;
const READER: u64 = 2;

fn alive(_: u64) -> bool {
    false
}

/// A map with one bucket (every key in one chain) and the two pin slots
/// claimed: the writer's and the reader's.
fn setup(arena_len: u64) -> (Held<HeapMap>, PinSlotId, PinSlotId) {
    let heap = Held::new(HeapMap::new(1, &[arena_len]));
    let map = heap.map();
    let writer = map.claim_pin_slot(WRITER, alive).unwrap();
    let reader = map.claim_pin_slot(READER, alive).unwrap();
    (heap, writer, reader)
}

fn put(map: &Map<'_, HeapRing, HeapArenas>, slot: PinSlotId, key: &[u8], value: &[u8]) {
    map.lock(WRITER, slot, alive, None)
        .unwrap()
        .insert(key, value)
        .unwrap();
}

fn get(map: &Map<'_, HeapRing, HeapArenas>, slot: PinSlotId, key: &[u8]) -> Option<Vec<u8>> {
    let pin = map.pin(slot);
    let mut out = Vec::new();
    map.get_into(&pin, key, &mut out).unwrap().then_some(out)
}

/// A reader racing an insert sees nothing or the whole value.
pub fn insert_races_get() {
    let (heap, w, r) = setup(1024);
    let writer = heap.share();
    let t = thread::spawn(move || put(&writer.map(), w, b"k", b"value-1"));
    let seen = get(&heap.map(), r, b"k");
    assert!(
        seen.is_none() || seen.as_deref() == Some(&b"value-1"[..]),
        "half-written entry seen: {seen:?}"
    );
    t.join().unwrap();
}

/// A reader racing an overwrite sees the old or the new value, never
/// neither.
pub fn overwrite_races_get() {
    let (heap, w, r) = setup(1024);
    put(&heap.map(), w, b"k", b"old");
    let writer = heap.share();
    let t = thread::spawn(move || put(&writer.map(), w, b"k", b"new"));
    let seen = get(&heap.map(), r, b"k");
    assert!(
        matches!(seen.as_deref(), Some(b"old") | Some(b"new")),
        "overwrite seen as {seen:?}"
    );
    t.join().unwrap();
}

/// A reader racing a delete sees the key present or absent, and the rest
/// of the chain all along.
pub fn delete_races_get() {
    let (heap, w, r) = setup(1024);
    // One bucket: the chain is a -> b.
    put(&heap.map(), w, b"b", b"vb");
    put(&heap.map(), w, b"a", b"va");
    let writer = heap.share();
    let t = thread::spawn(move || {
        let map = writer.map();
        assert!(
            map.lock(WRITER, w, alive, None)
                .unwrap()
                .remove(b"a")
                .unwrap()
        );
    });
    let map = heap.map();
    let a = get(&map, r, b"a");
    assert!(
        matches!(a.as_deref(), None | Some(b"va")),
        "deleted key seen as {a:?}"
    );
    let b = get(&map, r, b"b");
    assert_eq!(
        b.as_deref(),
        Some(&b"vb"[..]),
        "a delete hid the rest of the chain"
    );
    t.join().unwrap();
}

/// The reclamation rule: the writer deletes `k`, collects, and writes two
/// new entries into an arena with room for two blocks (so the second
/// reuses `k`'s block once its grace period is over); a reader pinned
/// while `k` was reachable never sees that block reused.
pub fn pinned_reader_never_sees_reuse() {
    // Blocks of 64 bytes at 64 and 128.
    let (heap, w, r) = setup(192);
    put(&heap.map(), w, b"k", b"old-value");
    let writer = heap.share();
    let t = thread::spawn(move || {
        let map = writer.map();
        let mut lock = map.lock(WRITER, w, alive, None).unwrap();
        lock.remove(b"k").unwrap();
        lock.insert(b"x", b"xxxxxxxxx").unwrap();
        match lock.insert(b"y", b"yyyyyyyyy") {
            // Reused k's block: the reader must have moved on.
            Ok(_) => {}
            // The reader held the grace period back.
            Err(MapError::OutOfMemory { .. }) => {}
            Err(e) => panic!("insert failed: {e}"),
        }
    });
    let seen = get(&heap.map(), r, b"k");
    assert!(
        matches!(seen.as_deref(), None | Some(b"old-value")),
        "reader saw reused memory: {seen:?}"
    );
    t.join().unwrap();
}
