//! The supervised process group of `grafos run`: workers started in
//! topology order, each in its own process group, watched through pidfds,
//! restarted by OTP's rules (strategy, restart type, intensity), stopped in
//! reverse order with SIGTERM and, after the grace period, SIGKILL.
//!
//! The group never blocks: stopping is a sequence the event loop advances
//! (`tick`) and exits feed (`child_exited`). Its state is written to
//! `workers.json` in the runtime dir on every change, for `grafos status`
//! and `grafos run` to follow.

use std::collections::{BTreeSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use grafos_worker::process::ProcessId;
use serde::{Deserialize, Serialize};

use crate::topology::{Restart, Strategy, Topology};

/// Why a worker stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It could not be started.
    SpawnFailed(String),
    /// It ended while adopted from a supervisor that died: it was not our
    /// child, so how it ended is unknown (and counts as abnormal).
    Unknown,
}

impl Exit {
    /// OTP's "normal": exit code 0.
    pub fn is_normal(&self) -> bool {
        matches!(self, Exit::Code(0))
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(signal) => write!(f, "signal {signal} ({})", signal_name(*signal)),
            Exit::SpawnFailed(e) => write!(f, "could not start: {e}"),
            Exit::Unknown => write!(f, "ended, how unknown (adopted from a dead supervisor)"),
        }
    }
}

/// The names `grafos kill --signal` accepts, with their numbers.
pub const SIGNALS: [(&str, i32); 10] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("ABRT", libc::SIGABRT),
];

fn signal_name(signal: i32) -> String {
    SIGNALS
        .iter()
        .find(|(_, n)| *n == signal)
        .map_or_else(|| format!("#{signal}"), |(name, _)| format!("SIG{name}"))
}

/// The group as `workers.json` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The strategy.
    pub strategy: Strategy,
    /// `running`, `restarting`, `stopping` or `stopped`.
    pub state: String,
    /// Why it stopped (or is stopping).
    pub reason: Option<String>,
    /// The workers in start order.
    pub workers: Vec<WorkerStatus>,
}

/// One worker as `workers.json` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its id (`name` or `name.N`).
    pub id: String,
    /// Its pid while it runs.
    pub pid: Option<u32>,
    /// Its start time (clock ticks after boot) while it runs, so a
    /// restarted supervisor can tell it from a recycled pid.
    #[serde(default)]
    pub start_time: Option<u64>,
    /// `running`, `stopping`, `exited` (waiting for a restart), `done`
    /// (not to be restarted) or `stopped`.
    pub state: String,
    /// Times it was started again.
    pub restarts: u32,
    /// How it last ended.
    pub last_exit: Option<String>,
}

struct Running {
    /// Our child, to reap; `None` for a worker adopted from a supervisor
    /// that died (it is not our child, its exit status is not ours to
    /// read).
    child: Option<std::process::Child>,
    process: ProcessId,
    pidfd: OwnedFd,
    /// When SIGTERM was sent, if it was.
    term_sent: Option<Instant>,
}

struct Worker {
    id: String,
    spec: usize,
    restart: Restart,
    running: Option<Running>,
    started: u32,
    last_exit: Option<Exit>,
    /// Exited and not to be restarted.
    done: bool,
}

enum Phase {
    Running,
    /// Stopping `stop` (highest first, one at a time), then starting
    /// `start` (lowest first).
    Restarting {
        stop: BTreeSet<usize>,
        start: BTreeSet<usize>,
    },
    /// Stopping every worker (highest first), then stopped.
    ShuttingDown {
        reason: String,
    },
    Stopped {
        reason: String,
    },
}

/// A supervised group of worker processes.
pub struct Group {
    topology: Topology,
    instance: String,
    workers: Vec<Worker>,
    phase: Phase,
    restarts: VecDeque<Instant>,
    status_file: PathBuf,
}

impl Group {
    /// Starts every worker of `topology`, in order.
    pub fn start(topology: Topology, instance: &str, status_file: PathBuf) -> Group {
        let workers = topology
            .instances()
            .into_iter()
            .map(|(id, spec)| Worker {
                id,
                spec,
                restart: topology.workers[spec].restart,
                running: None,
                started: 0,
                last_exit: None,
                done: false,
            })
            .collect();
        let mut group = Group {
            topology,
            instance: instance.to_owned(),
            workers,
            phase: Phase::Running,
            restarts: VecDeque::new(),
            status_file,
        };
        for i in 0..group.workers.len() {
            if let Err(exit) = group.spawn(i) {
                // As OTP's supervisors do: a group that cannot start stops.
                let reason = format!("{} {exit}", group.workers[i].id);
                group.phase = Phase::ShuttingDown { reason };
                break;
            }
        }
        group.advance();
        group
    }

    /// Takes over the group a supervisor that died left running: workers
    /// still alive (same pid and start time) are watched through pidfds
    /// again; the others count as ended and, with `restart`, are
    /// restarted by the rules.
    pub fn adopt(
        topology: Topology,
        instance: &str,
        status_file: PathBuf,
        before: &GroupStatus,
        restart: bool,
    ) -> Group {
        let mut group = Group {
            workers: Vec::new(),
            instance: instance.to_owned(),
            phase: Phase::Running,
            restarts: VecDeque::new(),
            status_file,
            topology,
        };
        let mut ended = Vec::new();
        for (i, (id, spec)) in group.topology.instances().into_iter().enumerate() {
            let old = before.workers.iter().find(|w| w.id == id);
            let running = old.and_then(adopt_process);
            if running.is_none() && old.is_some_and(|w| w.pid.is_some()) {
                ended.push(i);
            }
            let done = old.is_some_and(|w| w.state == "done");
            group.workers.push(Worker {
                restart: group.topology.workers[spec].restart,
                running,
                started: old.map_or(0, |w| w.restarts + 1),
                last_exit: None,
                done,
                spec,
                id,
            });
        }
        for i in 0..group.workers.len() {
            let w = &group.workers[i];
            tracing::info!(
                worker = %w.id,
                adopted = w.running.is_some(),
                "taking over a worker of the previous supervisor"
            );
        }
        for &i in &ended {
            group.workers[i].last_exit = Some(Exit::Unknown);
        }
        if before.state == "stopping" {
            // It was stopping when its supervisor died: finish that.
            group.phase = Phase::ShuttingDown {
                reason: before
                    .reason
                    .clone()
                    .unwrap_or_else(|| "stopping when the previous supervisor died".into()),
            };
        } else if restart {
            // Everything not running and not done restarts, as one restart
            // of the group (a takeover is one event, however many died).
            let down: Vec<usize> = (0..group.workers.len())
                .filter(|&i| group.workers[i].running.is_none() && !group.workers[i].done)
                .collect();
            if !down.is_empty() && group.count_restart("workers found dead at a takeover") {
                group.plan_restart(&down);
            }
        }
        // No advance yet: the event loop's first tick starts what must
        // start, once the control socket is there for the workers.
        group.publish();
        group
    }

    /// Whether the group has stopped (every worker gone for good).
    pub fn is_stopped(&self) -> bool {
        matches!(self.phase, Phase::Stopped { .. })
    }

    /// Whether `process` is one of the running workers.
    pub fn runs(&self, process: ProcessId) -> bool {
        self.workers
            .iter()
            .any(|w| w.running.as_ref().is_some_and(|r| r.process == process))
    }

    /// The pidfds of running workers, by worker index.
    pub fn pidfds(&self) -> Vec<(usize, BorrowedFd<'_>)> {
        self.workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.running.as_ref().map(|r| (i, r.pidfd.as_fd())))
            .collect()
    }

    /// Sends `signal` to worker `id`'s process group.
    ///
    /// # Errors
    /// If there is no such worker or it is not running.
    pub fn kill(&self, id: &str, signal: i32) -> Result<u32, String> {
        let worker = self
            .workers
            .iter()
            .find(|w| w.id == id)
            .ok_or_else(|| format!("no worker {id:?} in the running topology"))?;
        let running = worker
            .running
            .as_ref()
            .ok_or_else(|| format!("worker {id:?} is not running"))?;
        let pid = running.process.pid;
        if !(1..=64).contains(&signal) {
            return Err(format!("signal {signal} is not 1 to 64"));
        }
        signal_worker(running, signal);
        tracing::info!(worker = id, pid, signal, "signal sent by request");
        Ok(pid)
    }

    /// Stops every worker, highest first, for `reason`.
    pub fn stop(&mut self, reason: &str) {
        if !matches!(
            self.phase,
            Phase::ShuttingDown { .. } | Phase::Stopped { .. }
        ) {
            tracing::info!(reason, "stopping the worker group");
            self.phase = Phase::ShuttingDown {
                reason: reason.to_owned(),
            };
            self.advance();
        }
    }

    /// Worker `index`'s pidfd turned readable: reap it and apply the
    /// supervision rules.
    pub fn child_exited(&mut self, index: usize) {
        let Some(running) = self.workers[index].running.as_mut() else {
            return;
        };
        if running.child.is_some() {
            // Whatever the worker left in its process group goes with it;
            // its unreaped zombie still holds the group id, so this cannot
            // hit another group.
            signal_group(running.process.pid, libc::SIGKILL);
        }
        let exit = match running.child.as_mut().map(std::process::Child::try_wait) {
            Some(Ok(Some(status))) => match (status.code(), status.signal()) {
                (Some(code), _) => Exit::Code(code),
                (None, Some(signal)) => Exit::Signal(signal),
                (None, None) => Exit::Code(-1),
            },
            Some(Ok(None)) => return,
            Some(Err(e)) => {
                tracing::warn!(worker = %self.workers[index].id, "wait: {e}");
                return;
            }
            None => Exit::Unknown,
        };
        let was_stopping = running.term_sent.is_some();
        let worker = &mut self.workers[index];
        worker.running = None;
        tracing::info!(worker = %worker.id, %exit, "worker exited");
        worker.last_exit = Some(exit.clone());
        let stopping = was_stopping
            || match &self.phase {
                Phase::Restarting { stop, .. } => stop.contains(&index),
                Phase::ShuttingDown { .. } | Phase::Stopped { .. } => true,
                Phase::Running => false,
            };
        if !stopping {
            self.failed(index, &exit);
        }
        self.advance();
    }

    /// Advances stop sequences (SIGKILL past the grace period).
    pub fn tick(&mut self) {
        self.advance();
    }

    /// A worker ended on its own: restart by its type, the strategy and
    /// the intensity limit.
    fn failed(&mut self, index: usize, exit: &Exit) {
        let worker = &mut self.workers[index];
        let restart = match worker.restart {
            Restart::Permanent => true,
            Restart::Transient => !exit.is_normal(),
            Restart::Temporary => false,
        };
        if !restart {
            worker.done = true;
            return;
        }
        let id = worker.id.clone();
        if self.count_restart(&format!("{id} ended with {exit}")) {
            self.plan_restart(&[index]);
        }
    }

    /// Counts one restart against the intensity limit; past it, the group
    /// starts shutting down with the reason, and this returns false.
    fn count_restart(&mut self, last: &str) -> bool {
        let supervision = self.topology.supervision;
        let now = Instant::now();
        let window = Duration::from_secs(supervision.period_secs);
        self.restarts.push_back(now);
        while self
            .restarts
            .front()
            .is_some_and(|&t| now.duration_since(t) > window)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() <= supervision.max_restarts as usize {
            return true;
        }
        let reason = format!(
            "restart intensity exceeded: {} restarts within {} s (max_restarts = {}); last: {last}",
            self.restarts.len(),
            supervision.period_secs,
            supervision.max_restarts,
        );
        tracing::error!("{reason}");
        self.phase = Phase::ShuttingDown { reason };
        false
    }

    /// Plans the restart of the `failed` workers by the strategy: which
    /// others stop first, which start again. A temporary worker the
    /// strategy stops is not started again: it is done.
    fn plan_restart(&mut self, failed: &[usize]) {
        let n = self.workers.len();
        let (mut stop, mut start) = (BTreeSet::new(), BTreeSet::new());
        for &index in failed {
            start.insert(index);
            match self.topology.supervision.strategy {
                Strategy::OneForOne => {}
                Strategy::OneForAll => {
                    stop.extend((0..n).filter(|&i| i != index));
                    start.extend(0..n);
                }
                Strategy::RestForOne => {
                    stop.extend(index + 1..n);
                    start.extend(index..n);
                }
            }
        }
        for &i in &stop {
            if self.workers[i].restart == Restart::Temporary && !failed.contains(&i) {
                self.workers[i].done = true;
            }
        }
        start.retain(|&i| !self.workers[i].done);
        stop.retain(|i| !failed.contains(i));
        match &mut self.phase {
            Phase::Restarting {
                stop: stopping,
                start: starting,
            } => {
                stopping.extend(stop);
                starting.extend(start);
            }
            phase => *phase = Phase::Restarting { stop, start },
        }
    }

    /// Moves the current phase along as far as it can go now.
    fn advance(&mut self) {
        let grace = Duration::from_secs(self.topology.supervision.shutdown_grace_secs);
        loop {
            let target = match &self.phase {
                Phase::Restarting { stop, .. } => stop.iter().next_back().copied(),
                Phase::ShuttingDown { .. } => (0..self.workers.len())
                    .rev()
                    .find(|&i| self.workers[i].running.is_some()),
                Phase::Running | Phase::Stopped { .. } => None,
            };
            if let Some(i) = target {
                let Some(running) = self.workers[i].running.as_mut() else {
                    if let Phase::Restarting { stop, .. } = &mut self.phase {
                        stop.remove(&i);
                    }
                    continue;
                };
                match running.term_sent {
                    None => {
                        signal_worker(running, libc::SIGTERM);
                        running.term_sent = Some(Instant::now());
                    }
                    Some(sent) if sent.elapsed() >= grace => {
                        signal_worker(running, libc::SIGKILL);
                    }
                    Some(_) => {}
                }
                break;
            }
            match std::mem::replace(&mut self.phase, Phase::Running) {
                Phase::Restarting { start, .. } => {
                    for i in start {
                        if matches!(self.phase, Phase::ShuttingDown { .. }) {
                            break;
                        }
                        if let Err(exit) = self.spawn(i) {
                            self.failed(i, &exit);
                        }
                    }
                }
                Phase::ShuttingDown { reason } => {
                    self.phase = Phase::Stopped { reason };
                }
                phase @ Phase::Stopped { .. } => self.phase = phase,
                Phase::Running => {
                    if self.workers.iter().all(|w| w.done) {
                        self.phase = Phase::Stopped {
                            reason: "every worker finished".into(),
                        };
                    }
                }
            }
            break;
        }
        self.publish();
    }

    /// Starts worker `index` (unless it runs); the error is the exit to
    /// judge it by if it could not start.
    fn spawn(&mut self, index: usize) -> Result<(), Exit> {
        let worker = &mut self.workers[index];
        if worker.running.is_some() {
            return Ok(());
        }
        let spec = &self.topology.workers[worker.spec];
        let mut command = Command::new(&spec.command);
        command
            .args(&spec.args)
            .envs(&spec.env)
            .env("GRAFOS_INSTANCE", &self.instance)
            .env("GRAFOS_WORKER_ID", &worker.id)
            .stdin(Stdio::null())
            .process_group(0);
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        let spawned = command
            .spawn()
            .map_err(|e| e.to_string())
            .and_then(|child| {
                let pid = rustix::process::Pid::from_child(&child);
                match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
                    Ok(pidfd) => Ok((child, pidfd)),
                    Err(e) => {
                        let mut child = child;
                        let _ = child.kill();
                        let _ = child.wait();
                        Err(format!("pidfd_open: {e}"))
                    }
                }
            });
        if worker.started > 0 {
            tracing::info!(worker = %worker.id, "restarting");
        }
        worker.started += 1;
        let result = match spawned {
            Ok((child, pidfd)) => {
                let pid = child.id();
                tracing::info!(worker = %worker.id, pid, "worker started");
                // Read while the child cannot have been reaped (only we
                // reap it), so the pid is still its own.
                let process = ProcessId::of(pid).unwrap_or(ProcessId { pid, start_time: 0 });
                worker.running = Some(Running {
                    child: Some(child),
                    process,
                    pidfd,
                    term_sent: None,
                });
                Ok(())
            }
            Err(e) => {
                tracing::error!(worker = %worker.id, "could not start: {e}");
                let exit = Exit::SpawnFailed(e);
                worker.last_exit = Some(exit.clone());
                Err(exit)
            }
        };
        // Written after every start, so a supervisor that dies between two
        // starts leaves a record of every worker it started.
        self.publish();
        result
    }

    /// The group's state as `workers.json` shows it.
    pub fn status(&self) -> GroupStatus {
        let (state, reason) = match &self.phase {
            Phase::Running => ("running", None),
            Phase::Restarting { .. } => ("restarting", None),
            Phase::ShuttingDown { reason } => ("stopping", Some(reason.clone())),
            Phase::Stopped { reason } => ("stopped", Some(reason.clone())),
        };
        GroupStatus {
            strategy: self.topology.supervision.strategy,
            state: state.into(),
            reason,
            workers: self
                .workers
                .iter()
                .map(|w| WorkerStatus {
                    id: w.id.clone(),
                    pid: w.running.as_ref().map(|r| r.process.pid),
                    start_time: w.running.as_ref().map(|r| r.process.start_time),
                    state: match (&w.running, w.done) {
                        (Some(r), _) if r.term_sent.is_some() => "stopping",
                        (Some(_), _) => "running",
                        (None, true) => "done",
                        (None, false)
                            if matches!(
                                self.phase,
                                Phase::ShuttingDown { .. } | Phase::Stopped { .. }
                            ) =>
                        {
                            "stopped"
                        }
                        (None, false) => "exited",
                    }
                    .into(),
                    restarts: w.started.saturating_sub(1),
                    last_exit: w.last_exit.as_ref().map(ToString::to_string),
                })
                .collect(),
        }
    }

    /// Writes `workers.json` (to a temporary file, then renamed, so readers
    /// never see half of it).
    fn publish(&self) {
        let json = serde_json::to_vec_pretty(&self.status()).expect("status serialises");
        let temp = self.status_file.with_extension("json.new");
        if let Err(e) =
            std::fs::write(&temp, json).and_then(|()| std::fs::rename(&temp, &self.status_file))
        {
            tracing::warn!("writing {}: {e}", self.status_file.display());
        }
    }
}

/// A worker of a dead supervisor, if it still runs: pidfd opened, then
/// the start time checked, so a recycled pid is never taken for it.
fn adopt_process(old: &WorkerStatus) -> Option<Running> {
    let (pid, start_time) = (old.pid?, old.start_time?);
    if pid <= 1 || pid == std::process::id() {
        return None;
    }
    let raw = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).ok()?;
    let process = ProcessId::of(pid)?;
    (process.start_time == start_time).then_some(Running {
        child: None,
        process,
        pidfd,
        term_sent: None,
    })
}

/// Signals a worker: through its pidfd (it cannot hit another process),
/// and, for a worker we started and have not reaped, its whole process
/// group (the group id cannot have been reused while the leader is ours
/// and unreaped). An adopted worker is not ours to reap, so only it is
/// signalled, not its group.
fn signal_worker(running: &Running, signal: i32) {
    // SAFETY: pidfd_send_signal(2) on a pidfd we hold, with no siginfo;
    // no memory is passed.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            running.pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        );
    }
    if running.child.is_some() {
        signal_group(running.process.pid, signal);
    }
}

/// Signals the process group a worker we started leads.
fn signal_group(pid: u32, signal: i32) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    if pid > 1 {
        // SAFETY: kill(2) on the process group of a worker this supervisor
        // started and has not reaped (so the group id is still its own);
        // `pid > 1` rules out "every process" and init.
        unsafe { libc::kill(-pid, signal) };
    }
}

/// Reads `workers.json`, if a group ran.
pub fn read_status(path: &std::path::Path) -> Option<GroupStatus> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}
