//! `grafos up` and `grafos down`: the supervisor's lock, start-up,
//! detaching, and shutting an instance down.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use grafos_worker::FabricError;
use grafos_worker::control::{Connection, Reply, Request};
use grafos_worker::drain::Drain;
use grafos_worker::instance::InstancePaths;
use rustix::fs::FlockOperation;

use crate::serve;
use crate::supervisor::{Config, Supervisor};

/// How long `up --detach` and `down` wait for the supervisor.
const STARTUP_WAIT: Duration = Duration::from_secs(15);
/// How long `down` waits for a supervisor to stop its workers and exit.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(600);
/// How often they look.
const POLL: Duration = Duration::from_millis(5);

/// The instance's supervisor lock, held for the supervisor's life.
pub struct InstanceLock {
    _file: File,
}

/// Takes the instance's supervisor lock and writes our pid into it.
///
/// # Errors
/// A message naming the running supervisor if another holds it.
pub fn lock(paths: &InstancePaths) -> Result<InstanceLock, String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(paths.runtime_dir())
        .map_err(|e| format!("cannot make {}: {e}", paths.runtime_dir().display()))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(paths.participants_dir())
        .map_err(|e| format!("cannot make {}: {e}", paths.participants_dir().display()))?;
    let path = paths.supervisor_lock();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(format!(
            "instance {:?} is already up (supervisor pid {}); `grafos down` stops it",
            paths.instance(),
            pid.trim()
        ));
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()));
    written.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(InstanceLock { _file: file })
}

fn data_dir_record(paths: &InstancePaths) -> PathBuf {
    paths.runtime_dir().join("data-dir")
}

/// Runs the supervisor in this process until `grafos down` or a stop
/// signal; `ready` is told once it accepts requests.
///
/// # Errors
/// A one-line reason it could not start.
pub fn run_foreground(
    paths: &InstancePaths,
    config: Config,
    ready: impl FnOnce(&Supervisor),
) -> Result<(), String> {
    let lock = lock(paths)?;
    std::fs::write(
        data_dir_record(paths),
        config.data_dir.as_os_str().as_encoded_bytes(),
    )
    .map_err(|e| format!("cannot record the data dir: {e}"))?;
    // SIGTERM and SIGINT stop the supervisor as `grafos down` does.
    let stop = Drain::install().map_err(|e| e.to_string())?;
    let supervisor = Supervisor::start(paths.clone(), config).map_err(|e| e.to_string())?;
    let listener = serve::bind(&paths.socket()).map_err(|e| e.to_string())?;
    ready(&supervisor);
    serve::serve(supervisor, listener, Some(stop));
    remove_runtime_dir(paths);
    drop(lock);
    Ok(())
}

/// Starts the supervisor as a detached process (its own session, output
/// to the instance's log file) and returns once it answers, with its pid.
///
/// # Errors
/// A one-line reason, with the end of its log if it exited.
pub fn detach(paths: &InstancePaths, args: &[String]) -> Result<u32, String> {
    // Fail fast, before forking, if the instance is up already.
    drop(lock(paths)?);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(paths.log_file())
        .map_err(|e| format!("cannot open {}: {e}", paths.log_file().display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut command = Command::new(exe);
    command
        .args(args)
        .env("GRAFOS_INSTANCE", paths.instance())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of ours;
    // the child gets its own session, away from our terminal's signals.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the supervisor: {e}"))?;
    let deadline = Instant::now() + STARTUP_WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the supervisor exited ({status}) while starting: {}",
                log_tail(paths)
            ));
        }
        if let Ok(Reply::Pong { pid }) = ping(paths) {
            return Ok(pid);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the supervisor did not answer within {STARTUP_WAIT:?}; see {}",
                paths.log_file().display()
            ));
        }
        std::thread::sleep(POLL);
    }
}

fn ping(paths: &InstancePaths) -> Result<Reply, FabricError> {
    Connection::connect(paths.instance(), &paths.socket())?.call(&Request::Ping)
}

fn log_tail(paths: &InstancePaths) -> String {
    let log = std::fs::read_to_string(paths.log_file()).unwrap_or_default();
    log.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(empty log)")
        .to_owned()
}

/// What `down` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Down {
    /// The running supervisor shut the instance down.
    Stopped {
        /// Its pid.
        pid: u32,
    },
    /// No supervisor ran; its leftovers were removed.
    CleanedUp,
    /// Nothing of the instance existed.
    NothingThere,
}

/// Shuts the instance down: asks its supervisor to, or, if none runs,
/// adopts what a dead one left and removes it.
///
/// # Errors
/// A one-line reason.
pub fn down(paths: &InstancePaths) -> Result<Down, String> {
    if let Ok(Reply::Pong { pid }) = ping(paths) {
        let connection =
            Connection::connect(paths.instance(), &paths.socket()).map_err(|e| e.to_string())?;
        connection
            .call(&Request::Shutdown)
            .map_err(|e| e.to_string())?;
        // Workers stop one at a time, each with its grace period: this
        // can take a while, so say so.
        let started = Instant::now();
        let mut next_note = started + Duration::from_secs(5);
        while paths.runtime_dir().exists() {
            if started.elapsed() >= SHUTDOWN_WAIT {
                return Err(format!(
                    "supervisor pid {pid} did not finish shutting down within {SHUTDOWN_WAIT:?}"
                ));
            }
            if Instant::now() >= next_note {
                eprintln!(
                    "grafos: still stopping workers ({} s)",
                    started.elapsed().as_secs()
                );
                next_note += Duration::from_secs(5);
            }
            std::thread::sleep(POLL);
        }
        return Ok(Down::Stopped { pid });
    }
    let leftovers = paths.runtime_dir().exists()
        || grafos_worker::segment::list_segments(paths.instance())
            .map(|s| !s.is_empty())
            .unwrap_or(false);
    if !leftovers {
        return Ok(Down::NothingThere);
    }
    let lock = lock(paths)?;
    let data_dir = std::fs::read(data_dir_record(paths))
        .ok()
        .map(|raw| PathBuf::from(String::from_utf8_lossy(&raw).into_owned()))
        .unwrap_or_else(|| paths.default_data_dir());
    let config = Config {
        pool_size: u64::MAX / 2,
        block_pool_size: u64::MAX / 2,
        data_dir,
        grace: Duration::ZERO,
        claim_age_limit: Duration::from_secs(10),
    };
    let mut supervisor =
        Supervisor::start_to_stop(paths.clone(), config).map_err(|e| e.to_string())?;
    supervisor.stop_workers();
    supervisor.shut_down();
    remove_runtime_dir(paths);
    drop(lock);
    Ok(Down::CleanedUp)
}

fn remove_runtime_dir(paths: &InstancePaths) {
    if let Err(e) = std::fs::remove_dir_all(paths.runtime_dir())
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("removing {}: {e}", paths.runtime_dir().display());
    }
}
