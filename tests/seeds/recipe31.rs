//! The recipe 31 seed: an object write notifies a topic with its
//! `FabricUri`; members of a `ConsumerGroup` read the object, process it
//! and write the result back; a `JobCoordinator` aggregates a batch; a
//! `RenewalManager` keeps every backing lease alive. Beside it: dead and
//! silent members, fencing, dead letters, jobs, fan-out and chaining.

// The alias prelude: the seed's module paths.
use grafos_worker::FabricError;
use grafos_worker::jobs::{JobCoordinator, MemoryOutputStore, RetryPolicy};
use grafos_worker::leasekit::{RenewalManager, RenewalPolicy};
use grafos_worker::mq::consumer::{Consumer, SeekPolicy};
use grafos_worker::mq::dlq::{DeadLetter, DlqRouter, Handled};
use grafos_worker::mq::group::ConsumerGroup;
use grafos_worker::mq::producer::Producer;
use grafos_worker::mq::topic::{TopicConfig, TopicManager};
use grafos_worker::store::{FabricUri, MemObjectStore, ObjectStore};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::SeedResult;

/// The role of a child process (a group member to be killed).
pub const MEMBER_ENV: &str = "GRAFOS_SEED_MEMBER";

fn instance() -> String {
    std::env::var("GRAFOS_INSTANCE").expect("the harness sets the instance")
}

/// Makes topic `name` unless it exists (tests share one instance).
fn topic(topics: &mut TopicManager, name: &str, partitions: u32) -> SeedResult {
    match topics.create(
        name,
        TopicConfig {
            num_partitions: partitions,
            partition_capacity: 256,
            partition_stride: 512,
        },
    ) {
        Ok(()) | Err(FabricError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The seed's pipeline: put, notify, claim, poll, process, write back,
/// commit, heartbeat; a job over the results; renewals of every lease.
pub fn object_events_round_trip() -> SeedResult {
    let mut topics = TopicManager::new();
    topic(&mut topics, "object-events", 4)?;
    let store = MemObjectStore::new(256)?;
    let mut notifier = Producer::new("object-events");
    let keys: Vec<String> = (0..20).map(|i| format!("photo-{i}.jpg")).collect();
    for key in &keys {
        let uri = FabricUri::new(&instance(), "photos", key)?;
        store.put(&uri, format!("pixels of {key}").as_bytes(), None)?;
        notifier.send(&mut topics, uri.to_string().as_bytes())?;
    }

    let mut group = ConsumerGroup::new("processors", "object-events", 4, 30)?;
    let claimed = group.claim("worker-1")?;
    assert_eq!(
        claimed,
        vec![0, 1, 2, 3],
        "the only member owns every partition"
    );
    let mut consumer = Consumer::new("object-events", "processors");
    consumer.assign(&claimed);
    consumer.seek(&topics, &group, SeekPolicy::Committed)?;
    let mut done = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while done.len() < keys.len() && Instant::now() < deadline {
        for (_, message) in consumer.poll_timeout(&topics, 100, Duration::from_millis(50))? {
            let uri: FabricUri = std::str::from_utf8(&message.payload)?.parse()?;
            let Some(bytes) = store.get(&uri)? else {
                continue; // another test's notification
            };
            let result = FabricUri::new(&instance(), "results", uri.key())?;
            store.put(&result, &bytes.to_ascii_uppercase(), None)?;
            done.insert(uri.key().to_string());
        }
        consumer.commit(&mut group)?;
        group.heartbeat("worker-1")?;
    }
    assert_eq!(done.len(), keys.len(), "every notification was handled");

    let chunks: Vec<Vec<String>> = keys.chunks(6).map(<[String]>::to_vec).collect();
    let mut output_store = MemoryOutputStore::new();
    let coord = JobCoordinator::new(RetryPolicy::default());
    let work = |chunk: &Vec<String>| -> Result<u64, FabricError> {
        let mut bytes = 0;
        for key in chunk {
            let uri = FabricUri::new(&instance(), "results", key).map_err(FabricError::from)?;
            bytes += store.get(&uri)?.map_or(0, |b| b.len() as u64);
        }
        Ok(bytes)
    };
    let aggregate = |sizes: &[u64]| sizes.iter().sum::<u64>();
    let total = coord.run(&chunks, &mut output_store, work, aggregate)?;
    let expected: usize = keys.iter().map(|k| format!("pixels of {k}").len()).sum();
    assert_eq!(total, expected as u64);
    assert_eq!(output_store.len(), chunks.len());

    let mut renewals = RenewalManager::new();
    let mut backing = store.lease_ids()?;
    backing.push(topics.describe("object-events")?.lease_id);
    for &lease in &backing {
        // Deadline unknown here: due at once, renewed at the first tick.
        renewals.register(lease, 0, RenewalPolicy::new(600));
    }
    let summary = renewals.tick(grafos_worker::host::unix_time_secs());
    assert_eq!(summary.renewed.len(), backing.len(), "{summary:?}");
    assert!(summary.lost.is_empty() && summary.failed.is_empty());
    Ok(())
}

/// Commits for a partition that moved to a newcomer are refused; the
/// newcomer starts from the last commit, so what was read and not
/// committed is read again.
pub fn a_moved_partition_fences_the_old_member() -> SeedResult {
    let mut topics = TopicManager::new();
    topic(&mut topics, "fenced-events", 2)?;
    let mut producer = Producer::new("fenced-events");
    for i in 0..10u32 {
        producer.send_to(&mut topics, i % 2, format!("e{i}").as_bytes())?;
    }
    let mut one = ConsumerGroup::new("fence", "fenced-events", 2, 30)?;
    let mut c1 = Consumer::new("fenced-events", "fence");
    c1.assign(&one.claim("one")?);
    c1.seek(&topics, &one, SeekPolicy::Committed)?;
    assert_eq!(c1.poll(&topics, 4)?.len(), 4);
    c1.commit(&mut one)?;
    let read_not_committed = c1.poll(&topics, 100)?.len();
    assert_eq!(read_not_committed, 6);

    let mut two = ConsumerGroup::new("fence", "fenced-events", 2, 30)?;
    let taken = two.claim("two")?;
    assert_eq!(taken.len(), 1, "the newcomer gets its share");
    // Before it heartbeats, the old member still thinks it owns both: the
    // owner word in shared memory refuses the moved partition's commit.
    let moved = taken[0] as usize;
    let before = topics.describe("fenced-events")?.groups[0].committed[moved];
    let err = c1
        .commit(&mut one)
        .expect_err("a moved partition is fenced");
    assert!(err.is_fenced(), "{err}");
    let after = topics.describe("fenced-events")?.groups[0].committed[moved];
    assert_eq!(after, before, "nothing committed in the moved partition");
    assert!(
        one.heartbeat("one")?,
        "the old member learns its set changed"
    );
    let mut c2 = Consumer::new("fenced-events", "fence");
    c2.assign(&taken);
    c2.seek(&topics, &two, SeekPolicy::Committed)?;
    let again = c2.poll(&topics, 100)?;
    assert!(!again.is_empty(), "uncommitted records are read again");
    c2.commit(&mut two)?;
    // Re-assigned, the old member commits what it still owns.
    let kept = one.claim("one")?;
    assert_eq!(kept.len(), 1);
    assert_ne!(kept, taken);
    c1.assign(&kept);
    c1.commit(&mut one)?;
    Ok(())
}

/// A member alive but silent past the session timeout loses its
/// partitions; once it heartbeats again it is told, and claims anew.
pub fn a_silent_member_times_out() -> SeedResult {
    let mut topics = TopicManager::new();
    topic(&mut topics, "silent-events", 4)?;
    let session = Duration::from_millis(300);
    let mut quiet = ConsumerGroup::with_manager(&topics, "s", "silent-events", 4, session)?;
    let mut busy = ConsumerGroup::with_manager(&topics, "s", "silent-events", 4, session)?;
    quiet.claim("quiet")?;
    assert_eq!(busy.claim("busy")?.len(), 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while busy.assignment("busy").len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the silent member was not evicted"
        );
        if busy.heartbeat("busy")? {
            busy.claim("busy")?;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(quiet.heartbeat("quiet")?, "the evicted member is told");
    assert_eq!(quiet.claim("quiet")?.len(), 2, "and rejoins");
    let described = topics.describe("silent-events")?;
    let g = described
        .groups
        .iter()
        .find(|g| g.name == "s")
        .expect("group");
    assert!(g.coordination.evicted_silent >= 1);
    Ok(())
}

/// A member whose process is killed loses its partitions at once (long
/// before the 30 s session timeout): the survivor's heartbeat or the
/// supervisor evicts it.
pub fn a_dead_member_loses_partitions_at_once() -> SeedResult {
    let mut topics = TopicManager::new();
    topic(&mut topics, "dead-events", 4)?;
    let mut group = ConsumerGroup::new("d", "dead-events", 4, 30)?;
    assert_eq!(group.claim("survivor")?.len(), 4);
    let mut peer = spawn_member("dead-events", "d", "doomed")?;
    assert!(group.heartbeat("survivor")?);
    assert_eq!(group.claim("survivor")?.len(), 2);
    peer.kill()?;
    peer.wait()?;
    let killed = Instant::now();
    // Deadline: well under the session timeout, so only liveness can
    // explain the eviction.
    while group.assignment("survivor").len() < 4 {
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the dead member kept its partitions"
        );
        if group.heartbeat("survivor")? {
            group.claim("survivor")?;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let described = topics.describe("dead-events")?;
    let g = described
        .groups
        .iter()
        .find(|g| g.name == "d")
        .expect("group");
    assert_eq!(g.members.len(), 1);
    assert_eq!(g.members[0].partitions, vec![0, 1, 2, 3]);
    assert!(g.coordination.evicted_dead >= 1);
    Ok(())
}

/// The supervisor evicts a killed member when it sees the process die,
/// with no other member looking (the survivor does not heartbeat).
pub fn the_supervisor_evicts_a_dead_member() -> SeedResult {
    let mut topics = TopicManager::new();
    topic(&mut topics, "orphan-events", 4)?;
    let mut group = ConsumerGroup::new("o", "orphan-events", 4, 30)?;
    group.claim("quiet")?;
    let mut peer = spawn_member("orphan-events", "o", "doomed")?;
    let rebalances = crate::harness::counter("group_rebalances");
    peer.kill()?;
    peer.wait()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let described = topics.describe("orphan-events")?;
        let g = described
            .groups
            .iter()
            .find(|g| g.name == "o")
            .expect("group");
        if g.members.len() == 1 {
            assert_eq!(g.members[0].partitions, vec![0, 1, 2, 3]);
            break;
        }
        assert!(Instant::now() < deadline, "nobody evicted the dead member");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        crate::harness::counter("group_rebalances") > rebalances,
        "the supervisor's rebalance is counted"
    );
    assert!(group.heartbeat("quiet")?);
    assert_eq!(group.claim("quiet")?.len(), 4);
    Ok(())
}

/// Starts this binary as member `name` of `group` on `topic` (which has
/// four partitions) and waits until it has claimed half of them.
fn spawn_member(topic: &str, group: &str, name: &str) -> std::io::Result<std::process::Child> {
    let mut peer = Command::new(std::env::current_exe()?)
        .env(MEMBER_ENV, format!("{topic}:{group}:{name}"))
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(peer.stdout.take().expect("piped")).read_line(&mut line)?;
    assert_eq!(line.trim(), "claimed 2", "the peer's report: {line:?}");
    Ok(peer)
}

/// The child process of the dead-member tests: `spec` is
/// `topic:group:name`; claims the member, reports, and heartbeats until
/// it is killed.
pub fn member(spec: &str) {
    let run = || -> SeedResult {
        let mut parts = spec.splitn(3, ':');
        let (Some(topic), Some(group), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("bad member spec {spec:?}").into());
        };
        let mut group = ConsumerGroup::new(group, topic, 4, 30)?;
        let claimed = group.claim(name)?;
        println!("claimed {}", claimed.len());
        loop {
            group.heartbeat(name)?;
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    if let Err(e) = run() {
        println!("member failed: {e}");
        std::process::exit(1);
    }
}

/// Records that keep failing go to the dead-letter topic with their error
/// and attempt count; the others are handled once.
pub fn failing_records_go_to_the_dead_letter_topic() -> SeedResult {
    let mut topics = TopicManager::new();
    topic(&mut topics, "orders", 2)?;
    topic(&mut topics, "orders.dlq", 1)?;
    let mut producer = Producer::new("orders");
    for i in 0..12 {
        let body = if i % 4 == 3 {
            format!("order-{i}:poison")
        } else {
            format!("order-{i}:ok")
        };
        producer.send(&mut topics, body.as_bytes())?;
    }
    let mut dlq = DlqRouter::new("orders.dlq", 3);
    let mut consumer = Consumer::new("orders", "billing");
    consumer.assign(&[0, 1]);
    consumer.seek(
        &topics,
        &grafos_worker::mq::offset::MemOffsetStore::new(),
        SeekPolicy::Earliest,
    )?;
    let mut attempts: BTreeMap<String, u32> = BTreeMap::new();
    let mut billed = Vec::new();
    for (partition, message) in consumer.poll(&topics, 100)? {
        let handled = dlq.handle(&mut topics, "orders", partition, &message, |m| {
            let body = String::from_utf8_lossy(&m.payload).to_string();
            *attempts.entry(body.clone()).or_default() += 1;
            if body.ends_with(":poison") {
                Err(format!("cannot bill {body}"))
            } else {
                Ok(body)
            }
        })?;
        if let Handled::Done(body) = handled {
            billed.push(body);
        }
    }
    assert_eq!(billed.len(), 9);
    assert_eq!(dlq.dead_lettered(), 3);
    let mut letters = Consumer::new("orders.dlq", "audit");
    letters.assign(&[0]);
    letters.seek(
        &topics,
        &grafos_worker::mq::offset::MemOffsetStore::new(),
        SeekPolicy::Earliest,
    )?;
    let letters: Vec<DeadLetter> = letters
        .poll(&topics, 100)?
        .into_iter()
        .map(|(_, m)| DeadLetter::decode(&m.payload))
        .collect::<Result<_, _>>()?;
    assert_eq!(letters.len(), 3);
    for letter in &letters {
        let body = String::from_utf8_lossy(&letter.payload).to_string();
        assert!(body.ends_with(":poison"), "{body}");
        assert_eq!(letter.attempts, 3);
        assert_eq!(attempts[&body], 3, "tried exactly three times");
        assert_eq!(letter.topic, "orders");
        assert_eq!(letter.error, format!("cannot bill {body}"));
    }
    for body in &billed {
        assert_eq!(attempts[body], 1);
    }
    Ok(())
}

/// Retries with backoff; an output per chunk however often it ran; a run
/// again over the same store does only what is missing; chunks that fail
/// every attempt are reported.
pub fn jobs_retry_and_store_outputs_once() -> SeedResult {
    let chunks: Vec<u32> = (0..8).collect();
    let mut output_store = MemoryOutputStore::new();
    let coord = JobCoordinator::new(RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(1),
        multiplier: 2,
        max_backoff: Duration::from_millis(5),
    });
    let mut calls = BTreeMap::<u32, u32>::new();
    let flaky = |c: &u32| -> Result<u32, String> {
        let n = calls.entry(*c).or_default();
        *n += 1;
        // Chunks 2 and 5 fail twice before working.
        if (*c == 2 || *c == 5) && *n <= 2 {
            Err(format!("chunk {c}: transient"))
        } else {
            Ok(c * 10)
        }
    };
    let total = coord.run(&chunks, &mut output_store, flaky, |o| o.iter().sum::<u32>())?;
    assert_eq!(total, (0..8).map(|c| c * 10).sum::<u32>());
    assert_eq!(calls[&2], 3);
    assert_eq!(calls[&5], 3);
    assert_eq!(coord.stats().retries, 4);
    assert_eq!(output_store.len(), 8);
    assert_eq!(output_store.get(2), Some(&20));

    // A second run over the same outputs does nothing again.
    let again = coord.run(
        &chunks,
        &mut output_store,
        |_: &u32| -> Result<u32, String> { Err("must not run".into()) },
        |o| o.len(),
    )?;
    assert_eq!(again, 8);
    assert_eq!(coord.stats().skipped, 8);

    // A chunk that never works fails the job, the others' outputs stay.
    let mut partial = MemoryOutputStore::new();
    let err = coord
        .run(
            &chunks,
            &mut partial,
            |c: &u32| -> Result<u32, String> {
                if *c == 6 {
                    Err("always".into())
                } else {
                    Ok(*c)
                }
            },
            |o| o.len(),
        )
        .expect_err("chunk 6 fails");
    assert_eq!(err.failed.len(), 1);
    assert_eq!(err.failed[0].0, 6);
    assert_eq!(partial.len(), 7);
    assert_eq!(partial.refused(), 0);
    Ok(())
}

/// One put notifies several topics; each topic's group sees every
/// notification.
pub fn one_put_fans_out_to_several_groups() -> SeedResult {
    let mut topics = TopicManager::new();
    let fans = ["thumbnail-events", "index-events"];
    for t in fans {
        topic(&mut topics, t, 2)?;
    }
    let store = MemObjectStore::new(256)?;
    let mut notifiers: Vec<Producer> = fans.iter().map(|t| Producer::new(t)).collect();
    let mut sent = BTreeSet::new();
    for i in 0..30 {
        let uri = FabricUri::new(&instance(), "uploads", &format!("doc-{i}"))?;
        store.put(&uri, b"body", None)?;
        for n in &mut notifiers {
            n.send_keyed(
                &mut topics,
                uri.key().as_bytes(),
                uri.to_string().as_bytes(),
            )?;
        }
        sent.insert(uri.to_string());
    }
    for (t, g) in fans.iter().zip(["thumbnailers", "indexers"]) {
        let mut group = ConsumerGroup::new(g, t, 2, 30)?;
        let mut consumer = Consumer::new(t, g);
        consumer.assign(&group.claim("member-1")?);
        consumer.seek(&topics, &group, SeekPolicy::Committed)?;
        let seen: BTreeSet<String> = consumer
            .poll(&topics, 1000)?
            .into_iter()
            .map(|(_, m)| String::from_utf8_lossy(&m.payload).to_string())
            .collect();
        consumer.commit(&mut group)?;
        assert_eq!(seen, sent, "group {g} of {t}");
    }
    Ok(())
}

/// Stage 1 reads `object-events`-style notifications, writes its result
/// and notifies `stage-2-events`; stage 2 reads those and writes the
/// final result: every object goes through both stages.
pub fn stages_chain_through_a_second_topic() -> SeedResult {
    let mut topics = TopicManager::new();
    topic(&mut topics, "stage-1-events", 2)?;
    topic(&mut topics, "stage-2-events", 2)?;
    let store = MemObjectStore::new(256)?;
    let mut inbound = Producer::new("stage-1-events");
    for i in 0..25 {
        let uri = FabricUri::new(&instance(), "raw", &format!("rec-{i}"))?;
        store.put(&uri, format!("{i}").as_bytes(), None)?;
        inbound.send(&mut topics, uri.to_string().as_bytes())?;
    }
    let stage = |topics: &mut TopicManager,
                 from: &str,
                 group: &str,
                 bucket: &str,
                 to: Option<&str>|
     -> SeedResult {
        let mut members = ConsumerGroup::new(group, from, 2, 30)?;
        let mut consumer = Consumer::new(from, group);
        consumer.assign(&members.claim("only")?);
        consumer.seek(topics, &members, SeekPolicy::Committed)?;
        let mut next = to.map(Producer::new);
        for (_, m) in consumer.poll(topics, 1000)? {
            let uri: FabricUri = std::str::from_utf8(&m.payload)?.parse()?;
            let n: u64 = String::from_utf8(store.get(&uri)?.ok_or("object gone")?)?.parse()?;
            let out = FabricUri::new(&instance(), bucket, uri.key())?;
            store.put(&out, format!("{}", n * 2 + 1).as_bytes(), None)?;
            if let Some(p) = &mut next {
                p.send(topics, out.to_string().as_bytes())?;
            }
        }
        consumer.commit(&mut members)?;
        Ok(())
    };
    stage(
        &mut topics,
        "stage-1-events",
        "stage-1",
        "stage-1-out",
        Some("stage-2-events"),
    )?;
    stage(
        &mut topics,
        "stage-2-events",
        "stage-2",
        "stage-2-out",
        None,
    )?;
    for i in 0..25u64 {
        let uri = FabricUri::new(&instance(), "stage-2-out", &format!("rec-{i}"))?;
        let got = String::from_utf8(store.get(&uri)?.ok_or("no final result")?)?;
        assert_eq!(got, format!("{}", (i * 2 + 1) * 2 + 1), "rec-{i}");
    }
    Ok(())
}
