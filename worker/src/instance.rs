//! Where an instance lives: its runtime dir (control socket, supervisor
//! lock, liveness files, default data dir) and its segment names.
//!
//! The runtime dir is `$GRAFOS_RUNTIME_DIR/<instance>`, else
//! `$XDG_RUNTIME_DIR/grafos/<instance>`, else `/tmp/grafos-<uid>/<instance>`,
//! so a worker finds its supervisor from the instance name alone.

use std::path::PathBuf;

use crate::error::Result;
use crate::segment::{SegmentName, validate_instance};

/// The instance `GRAFOS_INSTANCE` names, else `default`.
pub fn instance_from_env() -> String {
    std::env::var("GRAFOS_INSTANCE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// The paths and names of one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstancePaths {
    instance: String,
    runtime_dir: PathBuf,
}

impl InstancePaths {
    /// The paths of `instance`.
    ///
    /// # Errors
    /// `InvalidName` for a bad instance name.
    pub fn new(instance: &str) -> Result<InstancePaths> {
        validate_instance(instance)?;
        Ok(InstancePaths {
            instance: instance.to_owned(),
            runtime_dir: runtime_root().join(instance),
        })
    }

    /// The paths of `instance` with its runtime dir under `root` instead of
    /// the default root (for tests and tools that keep instances apart).
    ///
    /// # Errors
    /// `InvalidName` for a bad instance name.
    pub fn in_root(instance: &str, root: &std::path::Path) -> Result<InstancePaths> {
        validate_instance(instance)?;
        Ok(InstancePaths {
            instance: instance.to_owned(),
            runtime_dir: root.join(instance),
        })
    }

    /// The instance name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The instance's runtime dir (mode 0700).
    pub fn runtime_dir(&self) -> &PathBuf {
        &self.runtime_dir
    }

    /// The supervisor's control socket.
    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join("control.sock")
    }

    /// The file the running supervisor holds `flock`ed.
    pub fn supervisor_lock(&self) -> PathBuf {
        self.runtime_dir.join("supervisor.lock")
    }

    /// Where a detached supervisor writes its log.
    pub fn log_file(&self) -> PathBuf {
        self.runtime_dir.join("supervisor.log")
    }

    /// The directory of participants' liveness files.
    pub fn participants_dir(&self) -> PathBuf {
        self.runtime_dir.join("participants")
    }

    /// The data dir for block leases when `grafos up` is given none.
    pub fn default_data_dir(&self) -> PathBuf {
        self.runtime_dir.join("data")
    }

    /// The registry segment.
    pub fn registry(&self) -> SegmentName {
        self.name("registry")
    }

    /// The counters segment.
    pub fn counters(&self) -> SegmentName {
        self.name("counters")
    }

    /// The segment of memory lease `lease_id`.
    pub fn lease_segment(&self, lease_id: u64) -> SegmentName {
        self.name(&format!("lease.{lease_id}"))
    }

    fn name(&self, object: &str) -> SegmentName {
        SegmentName::new(&self.instance, object).expect("fixed object names are valid")
    }
}

/// The directory that holds every instance's runtime dir.
fn runtime_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("GRAFOS_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("grafos");
    }
    PathBuf::from(format!(
        "/tmp/grafos-{}",
        rustix::process::getuid().as_raw()
    ))
}

/// Opens (creating it if need be) a small file of the runtime dir for
/// reading and writing, holding an exclusive `flock` on it until the file
/// is dropped: the way processes of an instance agree on who makes a
/// shared thing once.
///
/// # Errors
/// `Io` (as `IoError`) or the `flock` failure.
pub(crate) fn open_locked(path: &std::path::Path) -> crate::error::Result<std::fs::File> {
    use crate::error::FabricError;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| FabricError::from_io(&e))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| FabricError::io("flock", path.display().to_string(), e))?;
    Ok(file)
}

/// Longest name of a named thing of the runtime dir (a topic, a key-value
/// store).
pub(crate) const MAX_OBJECT_NAME: usize = 64;

/// Checks the name of a topic or key-value store: 1 to 64 of
/// `[A-Za-z0-9._-]`, not starting with a dot (it names a file of the
/// runtime dir).
///
/// # Errors
/// `InvalidName` with the rule broken.
pub(crate) fn validate_object_name(name: &str) -> crate::error::Result<()> {
    let bad = |reason| {
        Err(crate::error::FabricError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_OBJECT_NAME {
        return bad("a name has 1 to 64 characters");
    }
    if name.starts_with('.') {
        return bad("a name does not start with a dot");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("a name is made of letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// `<runtime dir>/<sub>` of `instance`, made if need be: where named
/// things record their lease ids, one file per name.
///
/// # Errors
/// `InvalidName` for the instance; `Io`.
pub(crate) fn names_dir(instance: &str, sub: &str) -> crate::error::Result<PathBuf> {
    let dir = InstancePaths::new(instance)?.runtime_dir().join(sub);
    std::fs::create_dir_all(&dir).map_err(|e| crate::error::FabricError::from_io(&e))?;
    Ok(dir)
}

/// The lease id the file `dir/name` records, if there is one.
///
/// # Errors
/// `Io`; `InvalidArgument` for a file that holds no lease id.
pub(crate) fn read_lease_id(
    dir: &std::path::Path,
    name: &str,
) -> crate::error::Result<Option<u64>> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            crate::error::FabricError::InvalidArgument(format!(
                "{}: not a lease id",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::error::FabricError::from_io(&e)),
    }
}

/// Records lease `id` in the file `dir/name`, whole (a temporary file
/// renamed into place).
///
/// # Errors
/// `Io`.
pub(crate) fn write_lease_id(
    dir: &std::path::Path,
    name: &str,
    id: u64,
) -> crate::error::Result<()> {
    let io = |e: std::io::Error| crate::error::FabricError::from_io(&e);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, format!("{id}\n")).map_err(io)?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io)
}
