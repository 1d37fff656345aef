//! The supervisor with real processes: the real `grafos` binary runs the
//! instance, and this test binary, started again as a peer (see
//! `peer.rs`), plays the workers. Each test has its own instance and
//! runtime dir, waits on conditions with deadlines, and checks that
//! nothing of its instance is left in `/dev/shm` or on disk.
//!
//! The harness is our own (`harness = false`) so the same binary can be
//! the peer; arguments that are not flags filter tests by name.

mod peer;
mod run_tests;
mod tests;
mod worker;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use grafos_worker::segment::list_segments;

pub const GRAFOS: &str = env!("CARGO_BIN_EXE_grafos");
/// How long any awaited condition may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

fn main() {
    match std::env::var("GRAFOS_TEST_PEER").as_deref() {
        Ok("worker") => return worker::main(),
        Ok(_) => return peer::main(),
        Err(_) => {}
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in tests::ALL.iter().chain(run_tests::ALL) {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(test);
        ran += 1;
        match outcome {
            Ok(()) => println!("test {name} ... ok ({:.1?})", started.elapsed()),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    println!("{ran} run, {} failed", failed.len());
    if !failed.is_empty() {
        println!("failed: {failed:?}");
        std::process::exit(1);
    }
}

/// One instance with its own runtime dir; dropping it takes it down and
/// removes the dir.
pub struct Instance {
    pub name: String,
    pub root: PathBuf,
}

impl Instance {
    pub fn new(tag: &str) -> Instance {
        let name = format!("{tag}{}", std::process::id());
        let root = std::env::temp_dir().join(format!("grafos-test-{name}"));
        let _ = std::fs::remove_dir_all(&root);
        Instance { name, root }
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("GRAFOS_INSTANCE", &self.name)
            .env("GRAFOS_RUNTIME_DIR", &self.root)
            .env_remove("GRAFOS_TEST_PEER");
        command
    }

    /// Runs `grafos ARGS` to completion.
    pub fn grafos(&self, args: &[&str]) -> Output {
        self.command(GRAFOS)
            .args(args)
            .output()
            .expect("grafos runs")
    }

    /// `grafos up --detach ARGS`, which must succeed.
    pub fn up(&self, args: &[&str]) {
        let out = self.grafos(&[&["up", "--detach"], args].concat());
        assert!(out.status.success(), "up failed: {}", text(&out));
    }

    /// `grafos down`, which must succeed; its output.
    pub fn down(&self) -> String {
        let out = self.grafos(&["down"]);
        assert!(out.status.success(), "down failed: {}", text(&out));
        text(&out)
    }

    /// `grafos status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.grafos(&["status", "--json"]);
        assert!(out.status.success(), "status failed: {}", text(&out));
        serde_json::from_slice(&out.stdout).expect("status prints JSON")
    }

    /// A counter from `grafos status --json`.
    pub fn counter(&self, name: &str) -> u64 {
        self.status()["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// Waits until `condition` holds of the status.
    pub fn await_status(&self, what: &str, condition: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let status = self.status();
            if condition(&status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status: {status:#}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A peer process.
    pub fn peer(&self) -> Peer {
        let exe = std::env::current_exe().expect("the test binary has a path");
        let mut child = self
            .command(exe.to_str().expect("utf-8 path"))
            .env("GRAFOS_TEST_PEER", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("peer starts");
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Peer {
            child,
            stdin,
            lines,
        }
    }

    /// Waits until nothing of the instance is left (a `grafos run` that
    /// started the instance takes it down as it exits).
    pub fn assert_clean_eventually(&self) {
        let deadline = Instant::now() + DEADLINE;
        while self.runtime_dir().exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.assert_clean();
    }

    /// Asserts nothing of the instance is left in `/dev/shm` or the
    /// runtime dir.
    pub fn assert_clean(&self) {
        assert_eq!(
            list_segments(&self.name).unwrap(),
            Vec::<String>::new(),
            "segments left in /dev/shm"
        );
        assert!(
            !self.runtime_dir().exists(),
            "runtime dir {} left",
            self.runtime_dir().display()
        );
    }
}

impl Instance {
    /// The pid in the instance's supervisor lock file.
    pub fn supervisor_pid(&self) -> i32 {
        std::fs::read_to_string(self.runtime_dir().join("supervisor.lock"))
            .ok()
            .and_then(|pid| pid.trim().parse().ok())
            .expect("a supervisor pid in the lock file")
    }

    /// Waits until process `pid` is gone.
    pub fn await_gone(&self, pid: i32) {
        let deadline = Instant::now() + DEADLINE;
        // SAFETY: kill(2) with signal 0 only checks that the pid exists.
        while unsafe { libc::kill(pid, 0) } == 0 {
            assert!(Instant::now() < deadline, "pid {pid} did not go");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let down = self.grafos(&["down"]);
        if !down.status.success() {
            // The test failed in a way `down` cannot mend: stop the
            // supervisor it started and remove what is left.
            if let Ok(pid) = std::fs::read_to_string(self.runtime_dir().join("supervisor.lock"))
                && let Ok(pid) = pid.trim().parse::<i32>()
            {
                // SAFETY: kill(2) on the supervisor this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            for object in list_segments(&self.name).unwrap_or_default() {
                let _ = grafos_worker::segment::unlink_object(&self.name, &object);
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A peer process driven line by line.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Peer {
    /// Sends a command; `Ok(rest)` for `ok rest`, `Err(rest)` for
    /// `err rest`.
    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("peer reads commands");
        self.stdin.flush().expect("peer reads commands");
    }

    /// The answer to the last command sent.
    pub fn answer(&mut self) -> Result<String, String> {
        let line = self
            .lines
            .recv_timeout(DEADLINE)
            .expect("peer answers in time");
        match line.split_once(' ').unwrap_or((&line, "")) {
            ("ok", rest) => Ok(rest.to_owned()),
            ("err", rest) => Err(rest.to_owned()),
            _ => panic!("peer said {line:?}"),
        }
    }

    /// Sends a command and waits for its answer.
    pub fn cmd(&mut self, command: &str) -> Result<String, String> {
        self.send(command);
        self.answer()
    }

    /// Sends a command that must succeed.
    pub fn ok(&mut self, command: &str) -> String {
        self.cmd(command)
            .unwrap_or_else(|e| panic!("{command}: {e}"))
    }

    /// The peer's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the peer to end (it must, within the deadline).
    pub fn wait(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("peer can be waited for") {
                return status;
            }
            assert!(Instant::now() < deadline, "peer did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILLs the peer (by its pid) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
