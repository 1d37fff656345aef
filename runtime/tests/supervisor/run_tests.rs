//! `grafos run` with real workers (this test binary in its worker role):
//! OTP's strategies, restart types and intensity, SIGTERM draining in
//! reverse start order, `grafos kill`, and workers in `grafos status`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use crate::{DEADLINE, GRAFOS, Instance, text};

type Test = fn();

pub const ALL: &[(&str, Test)] = &[
    (
        "run_one_for_one_restarts_the_killed_worker_and_drains_in_reverse",
        one_for_one,
    ),
    ("run_one_for_all_restarts_every_worker", one_for_all),
    (
        "run_one_for_all_does_not_restart_a_temporary_worker",
        one_for_all_with_a_temporary_worker,
    ),
    ("run_rest_for_one_restarts_the_later_workers", rest_for_one),
    (
        "run_transient_and_temporary_follow_otp",
        transient_and_temporary,
    ),
    (
        "run_intensity_exhaustion_stops_the_group",
        intensity_exhaustion,
    ),
    (
        "supervisor_crash_leaves_workers_running_and_is_taken_over",
        supervisor_crash,
    ),
];

/// A `grafos run` in the background.
struct Run {
    child: Child,
    output: Receiver<String>,
    events: PathBuf,
}

impl Run {
    /// Writes the topology (`WORKER` lines become serving workers of that
    /// name) and starts `grafos run` on it.
    fn start(instance: &Instance, supervision: &str, workers: &[(&str, &str, &str)]) -> Run {
        std::fs::create_dir_all(&instance.root).unwrap();
        let events = instance.root.join("events");
        let exe = std::env::current_exe().unwrap();
        let mut toml = format!("[supervision]\n{supervision}\n");
        for (name, restart, role) in workers {
            // `serve` is short for `"serve", EVENTS`; EVENTS stands for the
            // events file's path.
            let role = if *role == "serve" {
                "\"serve\", EVENTS"
            } else {
                role
            };
            let args = format!(
                "[{}]",
                role.replace("EVENTS", &format!("{:?}", events.display().to_string()))
            );
            toml += &format!(
                "\n[[worker]]\nname = \"{name}\"\ncommand = {:?}\nargs = {args}\nrestart = \"{restart}\"\nenv = {{ GRAFOS_TEST_PEER = \"worker\" }}\n",
                exe.display().to_string()
            );
        }
        let file = instance.root.join("topology.toml");
        std::fs::write(&file, toml).unwrap();
        let mut child = instance
            .command(GRAFOS)
            .arg("run")
            .arg(&file)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, output) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Run {
            child,
            output,
            events,
        }
    }

    /// Lines of the events file.
    fn events(&self) -> Vec<String> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits for `grafos run` to exit; its exit code and output.
    fn wait(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "grafos run did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        let output: Vec<String> = self.output.try_iter().collect();
        (status.code(), output.join("\n"))
    }

    /// Ctrl-C: `grafos run` stops the group.
    fn interrupt(&self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on the `grafos run` this test started, by pid.
        let rc = unsafe { libc::kill(pid, libc::SIGINT) };
        assert_eq!(rc, 0);
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.interrupt();
            let _ = self.child.wait();
        }
    }
}

/// A worker as `grafos status --json` shows it.
#[derive(Debug)]
struct W {
    id: String,
    state: String,
    pid: Option<u64>,
    restarts: u64,
    last_exit: String,
}

/// The workers in `grafos status --json`, in start order.
fn workers(instance: &Instance) -> Vec<W> {
    let status = instance.status();
    status["workers"]["workers"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|w| W {
                    id: w["id"].as_str().unwrap().to_owned(),
                    state: w["state"].as_str().unwrap().to_owned(),
                    pid: w["pid"].as_u64(),
                    restarts: w["restarts"].as_u64().unwrap(),
                    last_exit: w["last_exit"].as_str().unwrap_or("").to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `condition` holds of the workers.
fn await_workers(instance: &Instance, what: &str, condition: impl Fn(&[W]) -> bool) -> Vec<W> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        // The instance may still be starting.
        if instance.runtime_dir().join("workers.json").exists() {
            let now = workers(instance);
            if condition(&now) {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {now:?}"
            );
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn all_running(n: usize) -> impl Fn(&[W]) -> bool {
    move |w| w.len() == n && w.iter().all(|w| w.state == "running")
}

fn pid_of(workers: &[W], id: &str) -> u64 {
    workers.iter().find(|w| w.id == id).unwrap().pid.unwrap()
}

fn kill(instance: &Instance, worker: &str) {
    let out = instance.grafos(&["kill", worker]);
    assert!(out.status.success(), "kill {worker}: {}", text(&out));
}

/// Waits until each (id, pid) has logged its `start` (its drain hook is
/// installed by then).
fn await_started(run: &Run, workers: &[W]) {
    await_events(run, "the workers to be serving", |e| {
        workers.iter().all(|w| {
            let line = format!("start {} {}", w.id, w.pid.unwrap_or(0));
            e.contains(&line)
        })
    });
}

/// Asserts every worker process the events name (`start ID PID`) is gone.
fn assert_workers_gone(events: &[String], instance: &Instance) {
    for pid in events
        .iter()
        .filter_map(|l| l.strip_prefix("start "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<i32>().ok())
    {
        instance.await_gone(pid);
    }
}

/// The `drained` lines of the events, in order.
fn drained(events: &[String]) -> Vec<String> {
    events
        .iter()
        .filter_map(|l| l.strip_prefix("drained "))
        .map(str::to_owned)
        .collect()
}

const FAST: &str = "max_restarts = 10\nperiod_secs = 60\nshutdown_grace_secs = 10";

fn one_for_one() {
    let instance = Instance::new("runone");
    let run = Run::start(
        &instance,
        &format!("strategy = \"one_for_one\"\n{FAST}"),
        &[
            ("a", "permanent", "serve"),
            ("b", "permanent", "serve"),
            ("c", "permanent", "serve"),
        ],
    );
    let before = await_workers(&instance, "three running workers", all_running(3));
    let unknown = instance.grafos(&["kill", "nobody"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("no worker \"nobody\""),
        "{}",
        text(&unknown)
    );
    kill(&instance, "b");
    let after = await_workers(&instance, "b to be restarted", |w| {
        all_running(3)(w) && w[1].restarts == 1
    });
    assert_ne!(pid_of(&after, "b"), pid_of(&before, "b"));
    assert_eq!(pid_of(&after, "a"), pid_of(&before, "a"));
    assert_eq!(pid_of(&after, "c"), pid_of(&before, "c"));
    assert!(after[1].last_exit.contains("signal 9"), "{after:?}");
    assert_eq!((after[0].restarts, after[2].restarts), (0, 0));
    await_started(&run, &after);
    // Ctrl-C: SIGTERM in reverse start order; each drains and exits 0.
    run.interrupt();
    let events = run.events.clone();
    let (code, output) = run.wait();
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("group stopped: stopped by request"),
        "{output}"
    );
    let events: Vec<String> = std::fs::read_to_string(events)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(drained(&events), ["c", "b", "a"], "{events:?}");
    for id in ["a", "b", "c"] {
        let last = output
            .lines()
            .rfind(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_default();
        assert!(
            last.contains("stopped") && last.contains("last exit code 0"),
            "{id} did not drain to exit 0: {last:?}"
        );
    }
    // `grafos run` started the instance, so it took it down.
    instance.assert_clean();
    assert_workers_gone(&events, &instance);
}

fn one_for_all() {
    let instance = Instance::new("runall");
    let run = Run::start(
        &instance,
        &format!("strategy = \"one_for_all\"\n{FAST}"),
        &[
            ("a", "permanent", "serve"),
            ("b", "permanent", "serve"),
            ("c", "permanent", "serve"),
        ],
    );
    let before = await_workers(&instance, "three running workers", all_running(3));
    kill(&instance, "b");
    let after = await_workers(&instance, "every worker to be restarted", |w| {
        all_running(3)(w) && w.iter().all(|w| w.restarts == 1)
    });
    for id in ["a", "b", "c"] {
        assert_ne!(pid_of(&after, id), pid_of(&before, id), "{id} kept its pid");
    }
    await_started(&run, &after);
    // The others were stopped in reverse order, draining, before any
    // worker started again; then all started in order.
    let events = run.events();
    assert_eq!(drained(&events), ["c", "a"]);
    let last_drain = events
        .iter()
        .rposition(|l| l.starts_with("drained "))
        .unwrap();
    let mut restarts: Vec<&str> = events[last_drain..]
        .iter()
        .filter_map(|l| l.strip_prefix("start "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    restarts.sort_unstable();
    assert_eq!(restarts, ["a", "b", "c"], "{events:?}");
    // They were started in order (the order they log in is the
    // scheduler's): pids are handed out in order, barring a wrap-around.
    let new: Vec<u64> = ["a", "b", "c"]
        .iter()
        .map(|id| pid_of(&after, id))
        .collect();
    let old_max = ["a", "b", "c"]
        .iter()
        .map(|id| pid_of(&before, id))
        .max()
        .unwrap();
    if new.iter().all(|&p| p > old_max) {
        assert!(new[0] < new[1] && new[1] < new[2], "start order: {new:?}");
    }
    drop(run);
    instance.assert_clean_eventually();
    assert_workers_gone(&events, &instance);
}

fn one_for_all_with_a_temporary_worker() {
    let instance = Instance::new("runalltmp");
    let run = Run::start(
        &instance,
        &format!("strategy = \"one_for_all\"\n{FAST}"),
        &[
            ("a", "permanent", "serve"),
            ("t", "temporary", "serve"),
            ("b", "permanent", "serve"),
        ],
    );
    await_workers(&instance, "three running workers", all_running(3));
    kill(&instance, "a");
    // The temporary worker is stopped with the others and not restarted:
    // it is done, and the group carries on without it.
    let after = await_workers(&instance, "a and b restarted, t done", |w| {
        w[0].state == "running"
            && w[0].restarts == 1
            && w[1].state == "done"
            && w[2].state == "running"
            && w[2].restarts == 1
    });
    assert_eq!(after[1].restarts, 0);
    await_started(&run, &after[2..]);
    run.interrupt();
    let events = run.events.clone();
    let (code, output) = run.wait();
    assert_eq!(code, Some(0), "{output}");
    instance.assert_clean();
    let events: Vec<String> = std::fs::read_to_string(events)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_workers_gone(&events, &instance);
}

fn rest_for_one() {
    let instance = Instance::new("runrest");
    let run = Run::start(
        &instance,
        &format!("strategy = \"rest_for_one\"\n{FAST}"),
        &[
            ("a", "permanent", "serve"),
            ("b", "permanent", "serve"),
            ("c", "permanent", "serve"),
        ],
    );
    let before = await_workers(&instance, "three running workers", all_running(3));
    kill(&instance, "b");
    let after = await_workers(&instance, "b and c to be restarted", |w| {
        all_running(3)(w) && w[1].restarts == 1 && w[2].restarts == 1
    });
    assert_eq!(pid_of(&after, "a"), pid_of(&before, "a"));
    assert_eq!(after[0].restarts, 0);
    assert_ne!(pid_of(&after, "c"), pid_of(&before, "c"));
    assert_eq!(drained(&run.events()), ["c"]);
    drop(run);
    instance.assert_clean_eventually();
}

fn transient_and_temporary() {
    let instance = Instance::new("runtypes");
    let run = Run::start(
        &instance,
        &format!("strategy = \"one_for_one\"\n{FAST}"),
        &[
            ("keeper", "permanent", "serve"),
            ("finisher", "transient", "\"exit\", \"0\", \"50\""),
            ("crasher", "transient", "serve"),
            ("once", "temporary", "serve"),
        ],
    );
    await_workers(&instance, "the finisher to finish", |w| {
        w.len() == 4 && w[1].state == "done" && w[1].last_exit == "exit code 0"
    });
    await_workers(&instance, "the servers to run", |w| {
        w[2].state == "running" && w[3].state == "running"
    });
    kill(&instance, "crasher");
    kill(&instance, "once");
    let after = await_workers(&instance, "crasher restarted, once done", |w| {
        w[2].state == "running" && w[2].restarts == 1 && w[3].state == "done"
    });
    // A transient worker that exited normally and a temporary one were
    // not restarted.
    assert_eq!((after[1].restarts, after[3].restarts), (0, 0));
    drop(run);
    instance.assert_clean_eventually();
}

fn intensity_exhaustion() {
    let instance = Instance::new("runmax");
    let run = Run::start(
        &instance,
        "strategy = \"one_for_one\"\nmax_restarts = 2\nperiod_secs = 60\nshutdown_grace_secs = 10",
        &[("a", "permanent", "serve"), ("b", "permanent", "serve")],
    );
    await_workers(&instance, "two running workers", all_running(2));
    for restarts in 1..=2 {
        kill(&instance, "b");
        await_workers(&instance, "b to be restarted", |w| {
            all_running(2)(w) && w[1].restarts == restarts
        });
    }
    kill(&instance, "b");
    let (code, output) = run.wait();
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("restart intensity exceeded: 3 restarts within 60 s (max_restarts = 2)"),
        "{output}"
    );
    instance.assert_clean();
}

/// The numbers after `prefix` in the events, e.g. every `got c COUNT`.
fn numbers(events: &[String], prefix: &str) -> Vec<u64> {
    events
        .iter()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

fn await_events(run: &Run, what: &str, condition: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let events = run.events();
        if condition(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {events:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn supervisor_crash() {
    let instance = Instance::new("crash");
    instance.up(&[]);
    let name = grafos_worker::segment::SegmentName::new(&instance.name, "stream").unwrap();
    let queue = grafos_worker::collections::queue::FabricQueue::create(
        &name,
        &grafos_worker::collections::queue::QueueConfig::new(64, 16),
    )
    .unwrap();
    let run = Run::start(
        &instance,
        &format!("strategy = \"one_for_one\"\n{FAST}"),
        &[
            ("p", "permanent", "\"produce\", EVENTS, \"stream\", \"0\""),
            ("h", "permanent", "\"produce\", EVENTS, \"stream\", \"300\""),
            ("c", "permanent", "\"consume\", EVENTS, \"stream\""),
        ],
    );
    let before = await_workers(&instance, "three running workers", all_running(3));
    let events = await_events(&run, "the stream to flow and both leases", |e| {
        numbers(e, "got c ").len() >= 3 && numbers(e, "lease h ").len() == 1
    });
    let h_lease = numbers(&events, "lease h ")[0];
    let status = instance.status();
    let supervisor = status["supervisor"]["pid"].as_u64().unwrap() as i32;
    let ttl_at_crash = lease_ttl(&status, h_lease);
    // The supervisor dies; the workers run on what they have mapped.
    // SAFETY: kill(2) on the supervisor this test started, by its pid.
    assert_eq!(unsafe { libc::kill(supervisor, libc::SIGKILL) }, 0);
    instance.await_gone(supervisor);
    let crashed = Instant::now();
    // During the outage, kill the holding producer in the middle of a
    // claim: it logs `holding` and then holds the claim for 300 ms.
    let holdings = numbers(&run.events(), "holding h ").len();
    await_events(&run, "h to hold a claim", |e| {
        numbers(e, "holding h ").len() > holdings
    });
    let h = pid_of(&before, "h") as i32;
    // Freeze it, make sure it holds a claim, then kill it.
    // SAFETY: kill(2) on a worker of the supervisor this test started.
    assert_eq!(unsafe { libc::kill(h, libc::SIGSTOP) }, 0);
    let inspector = grafos_worker::collections::queue::FabricQueue::inspector(
        grafos_worker::segment::Segment::open(&name, &Default::default()).unwrap(),
    )
    .unwrap();
    let h_identity = grafos_worker::process::ProcessId::of(h as u32)
        .unwrap()
        .pack();
    assert!(
        inspector
            .claims()
            .iter()
            .any(|c| c.holder == h_identity && !c.reading),
        "h holds no claim: {:?}",
        inspector.claims()
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(h, libc::SIGKILL) }, 0);
    // A worker repairs the dead claim (no supervisor exists) and the
    // stream flows past it.
    let got = *numbers(&run.events(), "got c ").last().unwrap();
    await_events(&run, "the stream to flow past the dead claim", |e| {
        numbers(e, "got c ").last().is_some_and(|&n| n >= got + 50)
    });
    assert!(
        queue.counters().claims_repaired >= 1,
        "{:?}",
        queue.counters()
    );
    // A new supervisor takes over: leases with their deadlines, workers
    // with their pids; the dead producer is restarted by its rule.
    instance.up(&[]);
    let outage = crashed.elapsed();
    let status = instance.status();
    assert_ne!(
        status["supervisor"]["pid"].as_u64().unwrap() as i32,
        supervisor
    );
    let ttl_now = lease_ttl(&status, h_lease);
    assert!(
        ttl_now + outage.as_millis() as u64 <= ttl_at_crash + 100,
        "the dead producer's lease TTL was reset: {ttl_at_crash} ms at the crash, {ttl_now} ms {outage:?} later"
    );
    let after = await_workers(&instance, "h restarted, p and c adopted", |w| {
        all_running(3)(w) && w[1].restarts == 1
    });
    assert_eq!(pid_of(&after, "p"), pid_of(&before, "p"));
    assert_eq!(pid_of(&after, "c"), pid_of(&before, "c"));
    assert_ne!(pid_of(&after, "h"), pid_of(&before, "h"));
    assert!(after[1].last_exit.contains("how unknown"), "{after:?}");
    // Workers renew (attaching again) and acquire again: the restarted
    // producer's new lease is granted by the new supervisor.
    let renewed = instance.counter("leases_renewed");
    await_events(&run, "the restarted producer's lease", |e| {
        numbers(e, "lease h ").len() == 2
    });
    instance.await_status("renewals and attaches", |s| {
        s["counters"]["leases_renewed"].as_u64() > Some(renewed)
            && s["participants"].as_array().is_some_and(|p| p.len() >= 2)
    });
    let new_lease = numbers(&run.events(), "lease h ")[1];
    assert!(lease_ttl(&instance.status(), new_lease) > 0);
    assert!(new_lease > h_lease);
    let got = *numbers(&run.events(), "got c ").last().unwrap();
    await_events(&run, "the stream to keep flowing", |e| {
        numbers(e, "got c ").last().is_some_and(|&n| n >= got + 50)
    });
    // `grafos down` stops the adopted workers (they drain) and leaves
    // nothing behind.
    drop(queue);
    instance.down();
    let drained = drained(&run.events());
    for id in ["p", "h", "c"] {
        assert!(
            drained.iter().any(|d| d == id),
            "{id} did not drain: {drained:?}"
        );
    }
    instance.assert_clean();
    assert_workers_gone(&run.events(), &instance);
}

fn lease_ttl(status: &serde_json::Value, lease: u64) -> u64 {
    status["leases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == lease)
        .unwrap_or_else(|| panic!("no lease {lease}: {status:#}"))["ttl_left_ms"]
        .as_u64()
        .unwrap()
}
