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
    ("run_rest_for_one_restarts_the_later_workers", rest_for_one),
    (
        "run_transient_and_temporary_follow_otp",
        transient_and_temporary,
    ),
    (
        "run_intensity_exhaustion_stops_the_group",
        intensity_exhaustion,
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
            let args = match *role {
                "serve" => format!("[\"serve\", {:?}]", events.display().to_string()),
                other => format!("[{}]", other),
            };
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
    // `grafos run` started the instance, so it took it down.
    instance.assert_clean();
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
    // The others were stopped in reverse order, draining.
    assert_eq!(drained(&run.events()), ["c", "a"]);
    drop(run);
    instance.assert_clean_eventually();
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
