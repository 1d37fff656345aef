//! The tests, in the order they run.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use grafos_worker::collections::queue::{FabricQueue, QueueConfig};
use grafos_worker::control::{
    Connection, ControlError, FRAME_HEADER, MAX_MESSAGE, Reply, Request, decode, encode,
};
use grafos_worker::host::unix_time_ms;
use grafos_worker::instance::InstancePaths;
use grafos_worker::segment::{SegmentName, list_segments};

use crate::{DEADLINE, Instance, text};

type Test = fn();

pub const ALL: &[(&str, Test)] = &[
    (
        "up_refuses_a_second_supervisor_and_down_cleans_up",
        up_twice_and_down,
    ),
    (
        "memory_lease_across_processes",
        memory_lease_across_processes,
    ),
    ("block_lease_across_processes", block_lease_across_processes),
    ("budget_refuses_and_recovers", budget_refuses_and_recovers),
    (
        "expiry_fails_handles_and_renewal_keeps_leases",
        expiry_and_renewal,
    ),
    ("poisoned_and_expired_by_hand", poison_and_expire_by_hand),
    (
        "killed_participant_is_repaired",
        killed_participant_is_repaired,
    ),
    (
        "stopped_claimer_is_killed_and_repaired",
        stopped_claimer_is_killed_and_repaired,
    ),
    (
        "handoff_across_processes_refuses_rollback_and_survives_its_segment",
        handoff_across_processes,
    ),
    (
        "bad_requests_through_the_socket",
        bad_requests_through_the_socket,
    ),
    (
        "scribbled_segments_yield_errors",
        scribbled_segments_yield_errors,
    ),
    ("up_after_a_dead_supervisor_adopts_its_leases", up_adopts),
    ("down_after_a_dead_supervisor", down_after_a_dead_supervisor),
];

/// The next number of a xorshift sequence (junk for scribbling, not
/// randomness anyone relies on).
fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn lease_id(answer: &str) -> u64 {
    answer
        .split_whitespace()
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no lease id in {answer:?}"))
}

fn leases(status: &serde_json::Value) -> &Vec<serde_json::Value> {
    status["leases"].as_array().expect("leases array")
}

fn lease_row(status: &serde_json::Value, id: u64) -> Option<&serde_json::Value> {
    leases(status).iter().find(|l| l["id"] == id)
}

fn up_twice_and_down() {
    let instance = Instance::new("twice");
    instance.up(&[]);
    let socket = instance.runtime_dir().join("control.sock");
    let mode = std::fs::metadata(&socket).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    assert_eq!(mode.unwrap(), 0o600, "socket mode");
    let second = instance.grafos(&["up", "--detach"]);
    assert!(!second.status.success());
    assert!(
        text(&second).contains("already up"),
        "second up said: {}",
        text(&second)
    );
    let names = list_segments(&instance.name).unwrap();
    assert_eq!(names, ["counters", "registry"]);
    instance.down();
    instance.assert_clean();
    let again = instance.down();
    assert!(again.contains("not up"), "{again}");
}

fn memory_lease_across_processes() {
    let instance = Instance::new("mem");
    instance.up(&[]);
    let (mut a, mut b) = (instance.peer(), instance.peer());
    let id = lease_id(&a.ok("acquire-mem 10000 30"));
    a.ok("write hello");
    b.ok(&format!("open-mem {id}"));
    assert_eq!(b.ok("read 5"), "hello");
    b.ok("renew 120");
    let status = instance.status();
    let row = lease_row(&status, id).expect("lease listed");
    assert_eq!(row["holders"], 2);
    assert_eq!(row["kind"], "mem");
    assert_eq!(row["bytes"], 12288, "rounded up to pages");
    assert!(row["ttl_left_ms"].as_u64().unwrap() > 60_000, "{row}");
    assert_eq!(status["memory_pool"]["used"], 12288);
    assert_eq!(status["participants"].as_array().unwrap().len(), 2);
    a.ok("release");
    // B still holds it.
    assert_eq!(b.ok("read 5"), "hello");
    b.ok("release");
    instance.await_status("the lease to go", |s| {
        leases(s).is_empty() && s["memory_pool"]["used"] == 0
    });
    assert_eq!(
        list_segments(&instance.name).unwrap(),
        ["counters", "registry"]
    );
    assert_eq!(instance.counter("leases_released"), 1);
    drop((a, b));
    instance.down();
    instance.assert_clean();
}

fn block_lease_across_processes() {
    let instance = Instance::new("blk");
    let data_dir = instance.root.join("blocks");
    instance.up(&["--data-dir", data_dir.to_str().unwrap()]);
    let (mut a, mut b) = (instance.peer(), instance.peer());
    let answer = a.ok("acquire-block 4 30");
    let id = lease_id(&answer);
    let path = answer.split_whitespace().nth(1).unwrap().to_owned();
    assert!(path.starts_with(data_dir.to_str().unwrap()), "{path}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * 4096);
    a.ok("write checkpoint-7");
    b.ok(&format!("open-block {id}"));
    assert_eq!(b.ok("read 12"), "checkpoint-7");
    b.ok("renew 60");
    a.ok("release");
    b.ok("release");
    instance.await_status("the block lease to go", |s| {
        leases(s).is_empty() && s["block_pool"]["used"] == 0
    });
    assert!(!std::path::Path::new(&path).exists(), "lease file left");
    drop((a, b));
    instance.down();
    instance.assert_clean();
}

fn budget_refuses_and_recovers() {
    let instance = Instance::new("budget");
    instance.up(&["--pool-size", "64K"]);
    let (mut a, mut b) = (instance.peer(), instance.peer());
    a.ok("acquire-mem 49152 30");
    let refused = b.cmd("acquire-mem 32768 30").unwrap_err();
    assert!(
        refused.contains("16384 of 65536 bytes free") && refused.contains("32768"),
        "{refused}"
    );
    assert_eq!(instance.counter("budget_refusals"), 1);
    // A waiting acquire gets its budget once A lets go.
    b.send("acquire-mem 32768 30 15000");
    instance.await_status("the waiting acquire to be refused once", |s| {
        s["counters"]["budget_refusals"].as_u64() >= Some(2)
    });
    a.ok("release");
    b.answer().expect("the waiting acquire succeeds");
    // A holder that dies keeps its lease until it expires; then the
    // budget comes back.
    let mut c = instance.peer();
    let short = lease_id(&c.ok("acquire-mem 16384 1"));
    c.kill();
    assert!(b.cmd("acquire-mem 32768 30").is_err(), "pool is full");
    instance.await_status("the dead holder's lease to expire", |s| {
        lease_row(s, short).is_none()
    });
    let mut d = instance.peer();
    d.ok("acquire-mem 16384 30");
    // Absurd, zero-size and zero-TTL requests are refused with a reason.
    for (request, reason) in [
        ("acquire-mem 0 30", "zero bytes"),
        ("acquire-mem 4096 0", "zero seconds"),
        (
            "acquire-mem 1099511627776 30",
            "exceed the whole memory pool",
        ),
        ("acquire-mem 4096 99999999999", "exceeds"),
        ("acquire-block 0 30", "zero bytes"),
        ("acquire-block 18446744073709551615 30", "overflow"),
    ] {
        let e = d.cmd(request).unwrap_err();
        assert!(e.contains(reason), "{request}: {e}");
    }
    drop((b, d));
    instance.down();
    instance.assert_clean();
}

fn expiry_and_renewal() {
    let instance = Instance::new("expiry");
    instance.up(&["--grace-secs", "1"]);
    let (mut kept, mut left) = (instance.peer(), instance.peer());
    let kept_answer = kept.ok("acquire-mem 4096 2");
    let first_deadline: u64 = kept_answer
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let short = lease_id(&left.ok("acquire-mem 4096 1"));
    left.ok("write before");
    // The renewal manager keeps one lease alive past its first deadline.
    kept.send("keep-alive 2 3500");
    let deadline = Instant::now() + DEADLINE;
    while left.cmd("check").is_ok() {
        assert!(Instant::now() < deadline, "lease {short} never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    for command in ["check", "read 6", "write after", "renew 10"] {
        let e = left.cmd(command).unwrap_err();
        assert!(
            e.contains(&format!("lease {short} has expired")),
            "{command}: {e}"
        );
    }
    let renewed: u64 = kept.answer().expect("keep-alive").parse().unwrap();
    assert!(renewed >= 1, "no renewal happened");
    assert!(
        unix_time_ms() > first_deadline,
        "the test outlived the first deadline"
    );
    kept.ok("check");
    // The expired segment is unlinked after the grace period even though
    // its holder still maps it; the budget waits for the holder to go.
    instance.await_status("the expired lease to be unlinked", |s| {
        lease_row(s, short).is_some_and(|l| l["state"] == "unlinked")
    });
    let segment = format!("lease.{short}");
    assert!(!list_segments(&instance.name).unwrap().contains(&segment));
    assert!(left.cmd("check").is_err());
    left.kill();
    instance.await_status("the budget to come back", |s| lease_row(s, short).is_none());
    assert!(instance.counter("leases_expired") >= 1);
    drop(kept);
    instance.down();
    instance.assert_clean();
}

fn poison_and_expire_by_hand() {
    let instance = Instance::new("drill");
    instance.up(&[]);
    let mut a = instance.peer();
    let poisoned = lease_id(&a.ok("acquire-mem 4096 60"));
    let out = instance.grafos(&["lease", "poison", &poisoned.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let e = a.cmd("check").unwrap_err();
    assert!(e.contains("poisoned"), "{e}");
    let mut b = instance.peer();
    let expired = lease_id(&b.ok("acquire-block 1 60"));
    assert!(
        instance
            .grafos(&["lease", "expire", &expired.to_string()])
            .status
            .success()
    );
    assert!(b.cmd("check").unwrap_err().contains("expired"));
    let unknown = instance.grafos(&["lease", "expire", "999999"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("no lease 999999"),
        "{}",
        text(&unknown)
    );
    assert_eq!(instance.counter("leases_poisoned"), 1);
    drop((a, b));
    instance.down();
    instance.assert_clean();
}

fn killed_participant_is_repaired() {
    let instance = Instance::new("repair");
    instance.up(&[]);
    let name = SegmentName::new(&instance.name, "jobs").unwrap();
    let queue = FabricQueue::create(&name, &QueueConfig::new(8, 32)).unwrap();
    // A killed process closes its socket before its pidfd turns readable:
    // every kill must still count as a death and be repaired.
    const KILLS: u64 = 20;
    for kill in 1..=KILLS {
        let mut worker = instance.peer();
        worker.ok("claim jobs");
        instance.await_status("the worker to attach", |s| {
            s["participants"].as_array().unwrap().len() == 1
        });
        worker.kill();
        instance.await_status("the repair", |s| {
            s["counters"]["participants_died"] == kill
                && s["counters"]["claims_repaired"] == kill
                && s["participants"].as_array().unwrap().is_empty()
        });
        // Pops skip the tombstone.
        assert_eq!(queue.try_pop().unwrap(), None);
    }
    assert_eq!(instance.counter("participants_detached"), 0);
    let status = instance.status();
    let row = &status["queues"][0];
    assert_eq!(row["name"], "jobs");
    assert_eq!(row["tombstones"], KILLS);
    // The queue flows past the dead claim.
    queue.try_push(b"after").unwrap();
    assert_eq!(queue.try_pop().unwrap().as_deref(), Some(&b"after"[..]));
    drop(queue);
    instance.down();
    instance.assert_clean();
}

fn bad_requests_through_the_socket() {
    let instance = Instance::new("garbage");
    instance.up(&[]);
    let paths = InstancePaths::in_root(&instance.name, &instance.root).unwrap();
    let connection = Connection::connect(&instance.name, &paths.socket()).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move || xorshift(&mut seed);
    let good = encode(&Request::AcquireMem {
        min_bytes: 4096,
        lease_secs: 10,
    });
    for i in 0..1200 {
        let message = match i % 4 {
            0 => (0..random() % 64).map(|_| random() as u8).collect(),
            1 => good[..(random() as usize % good.len())].to_vec(),
            2 => vec![0xAB; MAX_MESSAGE + 1 + (random() as usize % 4096)],
            _ => {
                let mut wrong = good.clone();
                wrong[4] = 2 + (random() % 200) as u8;
                wrong
            }
        };
        let reply = connection
            .exchange(&message)
            .expect("the supervisor replies");
        match decode::<Reply>(&reply) {
            Ok(Reply::Error(ControlError::Malformed(_) | ControlError::Version { .. })) => {}
            Ok(Reply::Error(ControlError::NotAttached)) if message.len() > FRAME_HEADER => {}
            other => panic!("message {i} ({} bytes) got {other:?}", message.len()),
        }
    }
    assert!(instance.counter("bad_messages") >= 1000);
    // A client that sends and never reads its replies is cut off (the
    // supervisor does not wait for it) ...
    let deaf = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::connect(
        &deaf,
        &rustix::net::SocketAddrUnix::new(paths.socket()).unwrap(),
    )
    .unwrap();
    rustix::net::sockopt::set_socket_timeout(
        &deaf,
        rustix::net::sockopt::Timeout::Send,
        Some(DEADLINE),
    )
    .unwrap();
    let ping = encode(&Request::Ping);
    let cut_off = (0..1_000_000)
        .find_map(|_| rustix::net::send(&deaf, &ping, rustix::net::SendFlags::NOSIGNAL).err());
    assert!(
        matches!(
            cut_off,
            Some(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET)
        ),
        "the deaf client was not cut off: {cut_off:?}"
    );
    // ... and idle connections do not crowd out the rest.
    let idle: Vec<_> = (0..300)
        .map(|_| Connection::connect(&instance.name, &paths.socket()).unwrap())
        .collect();
    // Still serving, on this connection and on new ones.
    assert!(matches!(
        connection.call(&Request::Ping),
        Ok(Reply::Pong { .. })
    ));
    let mut peer = instance.peer();
    peer.ok("acquire-mem 4096 30");
    drop((peer, idle));
    instance.down();
    instance.assert_clean();
}

fn scribbled_segments_yield_errors() {
    let instance = Instance::new("scribble");
    instance.up(&[]);
    let name = SegmentName::new(&instance.name, "jobs").unwrap();
    let queue = FabricQueue::create(&name, &QueueConfig::new(8, 32)).unwrap();
    drop(queue);
    let mut holder = instance.peer();
    let id = lease_id(&holder.ok("acquire-mem 4096 60"));
    let mut claimer = instance.peer();
    claimer.ok("claim jobs");
    // Another process (this one) writes random bytes over every segment of
    // the instance, headers included, in place (the size stays).
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for object in list_segments(&instance.name).unwrap() {
        let path = format!("/dev/shm/grafos.{}.{object}", instance.name);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        let junk: Vec<u8> = (0..len).map(|_| xorshift(&mut seed) as u8).collect();
        std::os::unix::fs::FileExt::write_all_at(&file, &junk, 0).unwrap();
    }
    // A death makes the supervisor repair the scribbled queue.
    claimer.kill();
    // The tools report errors; none crashes (a signal leaves no exit code).
    for args in [&["status"][..], &["status", "--json"], &["segments"]] {
        let out = instance.grafos(args);
        assert!(
            out.status.code().is_some(),
            "grafos {args:?} crashed: {out:?}"
        );
    }
    // Users get errors or data, never a crash: every command is answered.
    for command in [
        "check",
        "read 16",
        &format!("open-mem {id}"),
        "acquire-mem 4096 30",
    ] {
        let _ = holder.cmd(command);
    }
    let mut newcomer = instance.peer();
    let _ = newcomer.cmd("acquire-block 1 30");
    // The supervisor still serves.
    let paths = InstancePaths::in_root(&instance.name, &instance.root).unwrap();
    let ping =
        Connection::connect(&instance.name, &paths.socket()).and_then(|c| c.call(&Request::Ping));
    assert!(matches!(ping, Ok(Reply::Pong { .. })), "{ping:?}");
    // A supervisor restarted over the scribbled registry starts clean, and
    // `down` still removes everything.
    let pid = instance.supervisor_pid();
    // SAFETY: kill(2) on the supervisor this test started, by its pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    instance.await_gone(pid);
    instance.up(&[]);
    drop((holder, newcomer));
    instance.down();
    instance.assert_clean();
}

fn down_after_a_dead_supervisor() {
    let instance = Instance::new("orphan");
    let data_dir = instance.root.join("blocks");
    instance.up(&["--data-dir", data_dir.to_str().unwrap()]);
    let mut a = instance.peer();
    a.ok("acquire-mem 4096 60");
    let answer = a.ok("acquire-block 2 60");
    let path = answer.split_whitespace().nth(1).unwrap().to_owned();
    let pid = instance.status()["supervisor"]["pid"].as_u64().unwrap() as i32;
    // SAFETY: kill(2) on the supervisor this test started, by its pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    instance.await_status("the supervisor to be seen dead", |s| {
        s["supervisor"]["alive"] == false
    });
    // Workers keep what they mapped.
    a.ok("check");
    let down = instance.down();
    assert!(down.contains("removed what it left"), "{down}");
    assert!(!std::path::Path::new(&path).exists(), "block file left");
    assert!(a.cmd("check").unwrap_err().contains("expired"));
    instance.assert_clean();
}

fn up_adopts() {
    let instance = Instance::new("adopt");
    instance.up(&[]);
    let mut a = instance.peer();
    let id = lease_id(&a.ok("acquire-mem 8192 60"));
    a.ok("write survives");
    let before = instance.status();
    let pid = before["supervisor"]["pid"].as_u64().unwrap() as i32;
    // SAFETY: kill(2) on the supervisor this test started, by its pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    instance.await_status("the supervisor to be seen dead", |s| {
        s["supervisor"]["alive"] == false
    });
    // Its socket is stale now; a new supervisor replaces it and takes the
    // lease over with its deadline and budget.
    instance.up(&["--grace-secs", "1"]);
    let after = instance.status();
    assert_ne!(after["supervisor"]["pid"], before["supervisor"]["pid"]);
    let row = lease_row(&after, id).expect("the lease was adopted");
    assert_eq!(row["state"], "active");
    assert!(row["ttl_left_ms"].as_u64().unwrap() <= 60_000);
    assert_eq!(after["memory_pool"]["used"], 8192);
    // The old holder attaches again on its next call, keeping its hold: it
    // renews, and the renewal moves the deadline.
    assert_eq!(a.ok("read 8"), "survives");
    a.ok("renew 600");
    let renewed = instance.status();
    let row = lease_row(&renewed, id).unwrap();
    assert!(row["ttl_left_ms"].as_u64().unwrap() > 60_000, "{row}");
    assert_eq!(row["holders"], 1);
    // A new process opens it through the new supervisor.
    let mut b = instance.peer();
    b.ok(&format!("open-mem {id}"));
    assert_eq!(b.ok("read 8"), "survives");
    // New leases get new ids.
    let mut c = instance.peer();
    let next = lease_id(&c.ok("acquire-mem 4096 60"));
    assert!(next > id);
    // Releases through either holder count; the last ends the lease.
    a.ok("release");
    assert_eq!(
        lease_row(&instance.status(), id).unwrap()["state"],
        "active"
    );
    b.ok("release");
    instance.await_status("the adopted lease to end", |s| lease_row(s, id).is_none());
    drop((a, b, c));
    instance.down();
    instance.assert_clean();
}

fn stopped_claimer_is_killed_and_repaired() {
    let instance = Instance::new("stuck");
    instance.up(&["--claim-age-limit", "1"]);
    let name = SegmentName::new(&instance.name, "jobs").unwrap();
    let queue = FabricQueue::create(&name, &QueueConfig::new(4, 32)).unwrap();
    // A running process holding a claim just as long is left alone.
    let mut busy = instance.peer();
    busy.ok("claim jobs");
    let busy_since = Instant::now();
    let mut claimer = instance.peer();
    claimer.ok("claim jobs");
    let pid = claimer.pid() as i32;
    // SAFETY: kill(2) on the peer this test started, by its pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    // Alive but stopped, it would wedge the queue at its claim forever;
    // past the claim-age limit the supervisor kills it and repairs.
    let started = Instant::now();
    instance.await_status("the stuck claimer to be killed and repaired", |s| {
        s["counters"]["stuck_claimers_killed"] == 1 && s["counters"]["claims_repaired"] == 1
    });
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "killed before the limit"
    );
    let status = claimer.wait();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    // Over twice the limit, the running claimer survives and nothing else
    // is killed.
    while busy_since.elapsed() < Duration::from_millis(2500) {
        assert_eq!(instance.counter("stuck_claimers_killed"), 1);
        std::thread::sleep(Duration::from_millis(50));
    }
    busy.ok("attach");
    busy.kill();
    instance.await_status("the busy claimer's repair", |s| {
        s["counters"]["claims_repaired"] == 2
    });
    // The queue moves past the dead claims.
    for i in 0..8u8 {
        queue.try_push(&[i]).unwrap();
        assert_eq!(queue.try_pop().unwrap(), Some(vec![i]));
    }
    drop(queue);
    instance.down();
    instance.assert_clean();
}

fn handoff_across_processes() {
    let instance = Instance::new("handoff");
    instance.up(&[]);
    let (mut writer, mut reader) = (instance.peer(), instance.peer());
    let block = writer.ok("handoff-writer 4");
    assert_eq!(writer.ok("handoff-publish 100 0"), "1");
    reader.ok(&format!("handoff-open {block}"));
    assert_eq!(reader.ok("handoff-read"), "1 100 0");
    // A reader asleep on the record wakes for the next generation.
    reader.send("handoff-wait 1 15000");
    assert_eq!(writer.ok("handoff-publish 101 0"), "2");
    assert_eq!(reader.answer().unwrap(), "2 101 0");
    // A writer that restarted believing generation 0 cannot roll it back.
    let mut stale = instance.peer();
    let refused = stale
        .cmd(&format!("handoff-stale-writer {block}"))
        .unwrap_err();
    assert!(
        refused.contains("generation 2 was published first"),
        "{refused}"
    );
    assert_eq!(reader.ok("handoff-read"), "2 101 0");
    // With the live segment gone, a cold reader takes the durable copy.
    grafos_worker::segment::unlink_object(&instance.name, &format!("handoff.{block}")).unwrap();
    let mut cold = instance.peer();
    cold.ok(&format!("handoff-open {block}"));
    assert_eq!(cold.ok("handoff-read"), "2 101 0");
    // The recreated live record starts from the durable generation: a
    // writer believing 0 still cannot publish generation 1 over it.
    let refused = stale
        .cmd(&format!("handoff-stale-writer {block}"))
        .unwrap_err();
    assert!(
        refused.contains("generation 2 was published first"),
        "{refused}"
    );
    // The writer notices its segment is gone and publishes on the new one,
    // where readers wait.
    assert_eq!(writer.ok("handoff-publish 102 0"), "3");
    assert_eq!(cold.ok("handoff-gen"), "3");
    assert_eq!(cold.ok("handoff-read"), "3 102 0");
    drop((writer, reader, stale, cold));
    instance.down();
    instance.assert_clean();
}
