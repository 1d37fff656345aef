//! This process as a participant of an instance: one control connection
//! per instance and process, a registry row, a heartbeat and a liveness
//! file.
//!
//! Before it attaches, a process creates `participants/<pid>.<start>.live`
//! in the runtime dir (`O_CLOEXEC`) and holds an exclusive `flock` on it
//! for as long as it lives; the supervisor refuses an attach whose file is
//! not locked. The kernel drops the lock when the process dies, so anyone
//! can tell a dead participant from a live one, even while the supervisor
//! is down, and a recycled pid has another start time and so another file.
//! (A child forked without `exec` shares the lock with its parent.)

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use grafos_shm_layout::registry::{Counter, InstanceCounters, MAX_PARTICIPANTS, Registry};
use rustix::fs::FlockOperation;

use crate::control::{Connection, Reply, Request};
use crate::error::{FabricError, Result};
use crate::host::unix_time_ms;
use crate::instance::InstancePaths;
use crate::process::ProcessId;
use crate::registry::Mapped;

/// How often a participant stores its heartbeat.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_millis(500);

/// This process attached to one instance.
#[derive(Debug)]
pub struct Attachment {
    paths: InstancePaths,
    connection: Mutex<Connection>,
    incarnation: u64,
    row: usize,
    instance_token: u64,
    registry: Mapped<Registry>,
    counters: Mapped<InstanceCounters>,
}

/// Attachments of this process, one per instance.
static ATTACHMENTS: Mutex<Vec<Arc<Attachment>>> = Mutex::new(Vec::new());

/// Leases this process's live handles hold, by instance and lease id, with
/// the number of handles: sent along when the process attaches (again), so
/// a new supervisor connection carries the process's holds.
static HOLDS: Mutex<BTreeMap<(String, u64), u32>> = Mutex::new(BTreeMap::new());

/// This process's attachment to `instance`, made on first use and shared
/// by every lease of the process; made anew if the supervisor hung up on
/// the old one (a restarted supervisor, say).
///
/// # Errors
/// `Disconnected` if no supervisor runs; `Refused` if it refuses.
pub fn attach(instance: &str) -> Result<Arc<Attachment>> {
    let mut all = ATTACHMENTS.lock().unwrap_or_else(PoisonError::into_inner);
    all.retain(|a| !a.is_closed());
    if let Some(found) = all.iter().find(|a| a.paths.instance() == instance) {
        return Ok(found.clone());
    }
    let attachment = Arc::new(Attachment::new(InstancePaths::new(instance)?)?);
    start_heartbeat(Arc::downgrade(&attachment));
    all.push(attachment.clone());
    Ok(attachment)
}

/// Sends `request` through this process's attachment to `instance`; if the
/// connection turns out to be lost, attaches again (carrying the
/// process's holds) and sends it once more.
///
/// # Errors
/// `Disconnected` if no supervisor answers; the supervisor's error reply.
pub fn call(instance: &str, request: &Request) -> Result<Reply> {
    match attach(instance)?.call(request) {
        Err(FabricError::Disconnected { .. }) => attach(instance)?.call(request),
        result => result,
    }
}

/// Counts one more handle of this process on lease `lease_id`.
pub(crate) fn note_hold(instance: &str, lease_id: u64) {
    *HOLDS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry((instance.to_owned(), lease_id))
        .or_default() += 1;
}

/// Counts one handle fewer on lease `lease_id`.
pub(crate) fn note_unhold(instance: &str, lease_id: u64) {
    let mut holds = HOLDS.lock().unwrap_or_else(PoisonError::into_inner);
    let key = (instance.to_owned(), lease_id);
    if let Some(count) = holds.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            holds.remove(&key);
        }
    }
}

fn holds_of(instance: &str) -> Vec<(u64, u32)> {
    HOLDS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|((i, _), _)| i == instance)
        .map(|(&(_, id), &n)| (id, n))
        .collect()
}

/// The liveness file of a process.
pub fn liveness_file(paths: &InstancePaths, process: ProcessId) -> std::path::PathBuf {
    paths
        .participants_dir()
        .join(format!("{}.{}.live", process.pid, process.start_time))
}

/// Whether the liveness file at `path` is locked by a live process: `None`
/// if there is no such file.
pub fn liveness_locked(path: &Path) -> Option<bool> {
    let file = File::open(path).ok()?;
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockShared) {
        // We got the lock, so nobody holds it; closing the file drops ours.
        Ok(()) => Some(false),
        Err(_) => Some(true),
    }
}

impl Attachment {
    fn new(paths: InstancePaths) -> Result<Attachment> {
        let connection = Connection::connect(paths.instance(), &paths.socket())?;
        hold_liveness_file(&paths)?;
        let Reply::Attached {
            incarnation,
            row,
            instance_token,
        } = connection.call(&Request::Attach {
            holds: holds_of(paths.instance()),
        })?
        else {
            return Err(FabricError::Refused("unexpected reply to Attach".into()));
        };
        let row = usize::try_from(row)
            .ok()
            .filter(|&r| r < MAX_PARTICIPANTS)
            .ok_or_else(|| FabricError::Refused(format!("registry row {row} out of range")))?;
        let registry = Mapped::open(&paths.registry(), Some(instance_token))?;
        let counters = Mapped::open(&paths.counters(), Some(instance_token))?;
        Ok(Attachment {
            paths,
            connection: Mutex::new(connection),
            incarnation,
            row,
            instance_token,
            registry,
            counters,
        })
    }

    /// Adds `n` to one of the instance's counters (`grafos status` shows
    /// them).
    pub fn count(&self, counter: Counter, n: u64) {
        self.counters.get().add(counter, n);
    }

    /// Sends a request to the supervisor through this attachment.
    ///
    /// # Errors
    /// `Disconnected` (the connection is then closed for good, and the
    /// next [`attach`] makes a new one), or the supervisor's error reply.
    pub fn call(&self, request: &Request) -> Result<Reply> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .call(request)
    }

    fn is_closed(&self) -> bool {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_closed()
    }

    /// The instance's paths.
    pub fn paths(&self) -> &InstancePaths {
        &self.paths
    }

    /// This process's incarnation in the instance (never reused).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The token every segment of the instance carries.
    pub fn instance_token(&self) -> u64 {
        self.instance_token
    }

    /// The instance registry.
    pub fn registry(&self) -> &Registry {
        self.registry.get()
    }

    fn beat(&self) {
        let row = &self.registry().participants[self.row];
        // The row is ours while it names our incarnation; the supervisor
        // owns every other field, so a stale beat lands nowhere else.
        if row.incarnation.load(std::sync::atomic::Ordering::Relaxed) == self.incarnation {
            row.heartbeat_ms
                .store(unix_time_ms(), std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Liveness files this process holds locked, open for its whole life (a
/// second open of one would conflict with the first's lock).
static LIVENESS_FILES: Mutex<Vec<(std::path::PathBuf, File)>> = Mutex::new(Vec::new());

/// Creates and locks this process's liveness file for `paths`, unless it
/// holds it already.
fn hold_liveness_file(paths: &InstancePaths) -> Result<()> {
    let path = liveness_file(paths, ProcessId::current());
    let mut held = LIVENESS_FILES
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if held.iter().any(|(p, _)| *p == path) && path.exists() {
        return Ok(());
    }
    held.retain(|(p, _)| *p != path);
    let io = |op, source| FabricError::Io {
        op,
        target: path.display().to_string(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| io("open", e))?;
    rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive)
        .map_err(|e| io("flock", e.into()))?;
    held.push((path, file));
    Ok(())
}

/// Stores the heartbeat every [`HEARTBEAT_PERIOD`] until the attachment
/// is gone.
fn start_heartbeat(attachment: Weak<Attachment>) {
    let spawned = std::thread::Builder::new()
        .name("grafos-heartbeat".into())
        .spawn(move || {
            while let Some(a) = attachment.upgrade() {
                a.beat();
                drop(a);
                std::thread::sleep(HEARTBEAT_PERIOD);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no heartbeat thread ({e}); heartbeat ages will grow");
    }
}
