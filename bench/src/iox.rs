//! iceoryx2 publish-subscribe peer: ping-pong latency and one-way throughput between this
//! process (pinned to CPU 0) and a child process (pinned to CPU 1), both busy-polling.
//!
//! The child is this same executable started as `fabric-bench child iox <mode> <args...>`.
//! Every message is a `[u8; 64]` written in place into a loaned shared-memory sample; its
//! first 8 bytes carry a little-endian sequence number.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::port::{BackpressureAction, BackpressureInfo};
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory;

/// The payload of every message.
type Msg = [u8; 64];

/// How long any wait (start-up, a reply, a full buffer) may take before we give up.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Subscriber buffer of the throughput service; the publisher retries when it is full.
/// 64..256 measured best here; 4096 was 2-5x slower (the sample pool falls out of cache).
const THROUGHPUT_BUFFER: usize = 256;
/// Sequence number that tells the latency child to exit.
const DONE: u64 = u64::MAX;

/// One-way latency samples in nanoseconds (round trip / 2) of iceoryx2 publish-subscribe
/// between this process and a child process, both busy-polling, `samples` round trips
/// after `warmup` unmeasured ones. Payload: `[u8; 64]` messages (zero-copy loan API).
pub fn latency(samples: usize, warmup: usize) -> Vec<u64> {
    pin_to_cpu(0);
    let ping_name = unique_name("ping");
    let pong_name = unique_name("pong");
    let rounds = warmup + samples;
    let mut out = Vec::with_capacity(samples);
    {
        let node = node();
        let ping = service(&node, &ping_name, 2, true);
        let pong = service(&node, &pong_name, 2, true);
        let publisher = ping
            .publisher_builder()
            .create()
            .expect("iox: create ping publisher");
        let subscriber = pong
            .subscriber_builder()
            .create()
            .expect("iox: create pong subscriber");

        let rounds_arg = rounds.to_string();
        let mut child = spawn(&["latency", &ping_name, &pong_name, &rounds_arg], false);
        // Round 0 is the handshake: its ping is retried until the child has subscribed.
        for seq in 0..=rounds as u64 {
            let start = Instant::now();
            send(&publisher, seq, "the child to subscribe to ping");
            let reply = receive(&subscriber, "a pong from the child");
            let rtt = start.elapsed();
            assert_eq!(reply, seq, "iox: pong out of sequence");
            if seq > warmup as u64 {
                out.push(rtt.as_nanos() as u64 / 2);
            }
        }
        send(&publisher, DONE, "the child to receive the stop message");
        let status = child.wait().expect("iox: wait for latency child");
        assert!(status.success(), "iox: latency child failed: {status}");
    }
    cleanup();
    out
}

/// Messages per second of iceoryx2 publish-subscribe from this process to a child process,
/// payload `[u8; 64]`, `count` messages, subscriber busy-polling. The rate is computed from
/// the child's own elapsed time, from the handshake message to the last of the `count`
/// messages that follow it, which it prints on stdout.
/// Safe overflow is disabled and the publisher retries while the subscriber's buffer is full,
/// so no message is lost; the child asserts that it received exactly `count` in order.
pub fn throughput(count: u64) -> f64 {
    pin_to_cpu(0);
    let name = unique_name("stream");
    let (elapsed_ns, received) = {
        let node = node();
        let stream = service(&node, &name, THROUGHPUT_BUFFER, false);
        let publisher = stream
            .publisher_builder()
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .set_backpressure_handler(|info: &BackpressureInfo| {
                if info.elapsed_time < TIMEOUT {
                    BackpressureAction::Retry
                } else {
                    BackpressureAction::DiscardDataAndFail
                }
            })
            .create()
            .expect("iox: create stream publisher");

        let count_arg = count.to_string();
        let mut child = spawn(&["throughput", &name, &count_arg], true);
        // Message 0 is the handshake, retried until the child's subscriber is connected.
        send(&publisher, 0, "the child to subscribe to the stream");
        for seq in 1..=count {
            let sample = publisher.loan_uninit().expect("iox: loan sample");
            let sample = sample.write_payload(encode(seq));
            let delivered = sample.send().expect("iox: send (child stopped receiving?)");
            assert_eq!(delivered, 1, "iox: stream subscriber disconnected");
        }
        // Keep the publisher (and its data segment) alive until the child has read everything.
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .expect("iox: child stdout")
            .read_to_string(&mut stdout)
            .expect("iox: read child stdout");
        let status = child.wait().expect("iox: wait for throughput child");
        assert!(status.success(), "iox: throughput child failed: {status}");
        parse_report(&stdout)
    };
    cleanup();
    assert_eq!(
        received, count,
        "iox: child received the wrong number of messages"
    );
    count as f64 / (elapsed_ns as f64 / 1e9)
}

/// Entry point for the child side; main.rs calls this when the program is started as
/// `fabric-bench child iox <args...>`, passing the args after "iox". Returns the process
/// exit code.
pub fn child(args: &[String]) -> i32 {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["latency", ping_name, pong_name, rounds] => {
            let rounds: u64 = rounds.parse().expect("iox child: bad round count");
            pin_to_cpu(1);
            let node = node();
            let ping = service(&node, ping_name, 2, true);
            let pong = service(&node, pong_name, 2, true);
            let subscriber = ping
                .subscriber_builder()
                .create()
                .expect("iox child: create ping subscriber");
            let publisher = pong
                .publisher_builder()
                .create()
                .expect("iox child: create pong publisher");
            for expected in 0..=rounds {
                let seq = receive(&subscriber, "a ping from the parent");
                assert_eq!(seq, expected, "iox child: ping out of sequence");
                send(&publisher, seq, "the parent to subscribe to pong");
            }
            // Stay connected until the parent has received the last pong.
            assert_eq!(receive(&subscriber, "the stop message"), DONE);
            0
        }
        ["throughput", name, count] => {
            let count: u64 = count.parse().expect("iox child: bad message count");
            pin_to_cpu(1);
            let node = node();
            let stream = service(&node, name, THROUGHPUT_BUFFER, false);
            let subscriber = stream
                .subscriber_builder()
                .buffer_size(THROUGHPUT_BUFFER)
                .create()
                .expect("iox child: create stream subscriber");
            assert_eq!(receive(&subscriber, "the handshake message"), 0);
            let start = Instant::now();
            let mut received = 0;
            while received < count {
                let seq = receive(&subscriber, "the next stream message");
                received += 1;
                assert_eq!(seq, received, "iox child: message lost or reordered");
            }
            let elapsed = start.elapsed();
            println!("elapsed_ns={} received={received}", elapsed.as_nanos());
            0
        }
        _ => {
            eprintln!(
                "usage: fabric-bench child iox (latency PING PONG ROUNDS | throughput SERVICE COUNT)"
            );
            2
        }
    }
}

/// Removes what iceoryx2 leaves behind: /tmp/iceoryx2 (recursively) and /dev/shm/iox2_* files.
pub fn cleanup() {
    let _ = std::fs::remove_dir_all("/tmp/iceoryx2");
    if let Ok(entries) = std::fs::read_dir("/dev/shm") {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("iox2_") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Pins the calling thread to one CPU.
fn pin_to_cpu(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).expect("iox: sched_setaffinity");
}

/// A service name unique to this process and call.
fn unique_name(what: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("grafos-bench/iox/{}/{n}/{what}", std::process::id())
}

/// An inter-process node that leaves SIGINT/SIGTERM alone. Also silences iceoryx2's
/// "no config file was loaded" warning (override with `IOX2_LOG_LEVEL`).
fn node() -> Node<ipc::Service> {
    set_log_level_from_env_or(LogLevel::Error);
    NodeBuilder::new()
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .expect("iox: create node")
}

/// Opens or creates a one-publisher, one-subscriber service carrying `Msg`.
fn service(
    node: &Node<ipc::Service>,
    name: &str,
    buffer: usize,
    safe_overflow: bool,
) -> PortFactory<ipc::Service, Msg, ()> {
    let service_name: ServiceName = name.try_into().expect("iox: invalid service name");
    node.service_builder(&service_name)
        .publish_subscribe::<Msg>()
        .max_publishers(1)
        .max_subscribers(1)
        .subscriber_max_buffer_size(buffer)
        .enable_safe_overflow(safe_overflow)
        .open_or_create()
        .expect("iox: open or create service")
}

/// Writes `seq` into a loaned sample and sends it, retrying until a subscriber received it.
fn send(publisher: &Publisher<ipc::Service, Msg, ()>, seq: u64, waiting_for: &str) {
    let mut deadline = None; // read the clock only once a retry is needed
    loop {
        let sample = publisher.loan_uninit().expect("iox: loan sample");
        let sample = sample.write_payload(encode(seq));
        if sample.send().expect("iox: send") > 0 {
            return;
        }
        check(&mut deadline, waiting_for);
        std::thread::yield_now();
    }
}

/// Busy-polls until a message arrives and returns its sequence number.
fn receive(subscriber: &Subscriber<ipc::Service, Msg, ()>, waiting_for: &str) -> u64 {
    let mut deadline = None;
    let mut polls = 0u32;
    loop {
        if let Some(sample) = subscriber.receive().expect("iox: receive") {
            return decode(sample.payload());
        }
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(1 << 12) {
            check(&mut deadline, waiting_for);
        }
    }
}

/// Starts the `TIMEOUT` clock on the first call and panics once it has run out.
fn check(deadline: &mut Option<Instant>, waiting_for: &str) {
    let deadline = *deadline.get_or_insert_with(|| Instant::now() + TIMEOUT);
    assert!(
        Instant::now() < deadline,
        "iox: timed out waiting for {waiting_for}"
    );
}

fn encode(seq: u64) -> Msg {
    let mut msg = [0u8; 64];
    msg[..8].copy_from_slice(&seq.to_le_bytes());
    msg
}

fn decode(msg: &Msg) -> u64 {
    u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"))
}

/// Parses the child's `elapsed_ns=<n> received=<n>` line.
fn parse_report(stdout: &str) -> (u64, u64) {
    let field = |key: &str| -> u64 {
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("iox: no {key} in child output {stdout:?}"))
    };
    (field("elapsed_ns="), field("received="))
}

/// Starts this executable as `child iox <args>`; `piped` captures its stdout.
fn spawn(args: &[&str], piped: bool) -> std::process::Child {
    let exe = std::env::current_exe().expect("iox: current_exe");
    Command::new(exe)
        .args(["child", "iox"])
        .args(args)
        .stdout(if piped { Stdio::piped() } else { Stdio::null() })
        .spawn()
        .expect("iox: spawn child")
}
