//! Topology files for `grafos run`: which workers to start, in which
//! order, and how to supervise them (OTP's strategies, restart types and
//! intensity).
//!
//! ```toml
//! [supervision]
//! strategy = "one_for_one"      # or "one_for_all", "rest_for_one"
//! max_restarts = 3              # more restarts than this ...
//! period_secs = 5               # ... within this many seconds stop the group
//! shutdown_grace_secs = 5       # SIGTERM, then SIGKILL after this long
//!
//! [[worker]]
//! name = "producer"
//! command = "./producer"        # relative to the topology file's directory
//! args = ["--rate", "1000"]
//! env = { RUST_LOG = "info" }
//! replicas = 2                  # producer.0, producer.1
//! restart = "permanent"         # or "transient", "temporary"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Most workers (replicas counted) in one topology.
pub const MAX_WORKERS: usize = 256;

/// A parsed, checked topology.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// How the group is supervised.
    #[serde(default)]
    pub supervision: Supervision,
    /// The workers, in start order.
    #[serde(rename = "worker")]
    pub workers: Vec<WorkerSpec>,
}

/// Supervision settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Supervision {
    /// Which workers restart when one fails.
    pub strategy: Strategy,
    /// Restarts allowed within `period_secs`; one more stops the group.
    pub max_restarts: u32,
    /// The intensity window in seconds.
    pub period_secs: u64,
    /// How long a worker has between SIGTERM and SIGKILL.
    pub shutdown_grace_secs: u64,
}

impl Default for Supervision {
    fn default() -> Self {
        Supervision {
            strategy: Strategy::OneForOne,
            max_restarts: 3,
            period_secs: 5,
            shutdown_grace_secs: 5,
        }
    }
}

/// OTP's restart strategies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Restart only the worker that failed.
    OneForOne,
    /// Stop every other worker (in reverse order) and restart them all.
    OneForAll,
    /// Stop the workers started after the failed one (in reverse order)
    /// and restart it and them.
    RestForOne,
}

/// OTP's restart types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always restarted.
    #[default]
    Permanent,
    /// Restarted only after an abnormal exit (not exit code 0).
    Transient,
    /// Never restarted.
    Temporary,
}

/// One worker entry (with its replicas).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    /// Name: 1-32 of `A-Z a-z 0-9 _ -`.
    pub name: String,
    /// Program to run (a path with `/` is relative to `cwd`).
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How many copies.
    #[serde(default = "one")]
    pub replicas: u32,
    /// When it is restarted.
    #[serde(default)]
    pub restart: Restart,
    /// Working directory (default: the topology file's directory).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

fn one() -> u32 {
    1
}

impl Topology {
    /// Parses and checks a topology; relative working directories (and
    /// the default one) are taken from `dir`, the file's directory.
    ///
    /// # Errors
    /// A message naming the problem (with its line for TOML errors).
    pub fn parse(text: &str, dir: &std::path::Path) -> Result<Topology, String> {
        let mut topology: Topology = toml::from_str(text).map_err(|e| e.to_string())?;
        topology.check()?;
        for worker in &mut topology.workers {
            worker.cwd = Some(match worker.cwd.take() {
                Some(cwd) if cwd.is_absolute() => cwd,
                Some(cwd) => dir.join(cwd),
                None => dir.to_path_buf(),
            });
        }
        Ok(topology)
    }

    /// Checks names, counts and limits.
    ///
    /// # Errors
    /// The first problem found.
    pub fn check(&self) -> Result<(), String> {
        let s = &self.supervision;
        if s.max_restarts > 10_000 {
            return Err(format!("max_restarts {} is over 10000", s.max_restarts));
        }
        if !(1..=86_400).contains(&s.period_secs) {
            return Err(format!("period_secs {} is not 1 to 86400", s.period_secs));
        }
        if s.shutdown_grace_secs > 3_600 {
            return Err(format!(
                "shutdown_grace_secs {} is over 3600",
                s.shutdown_grace_secs
            ));
        }
        if self.workers.is_empty() {
            return Err("no [[worker]] entries".into());
        }
        let mut total = 0usize;
        for (i, w) in self.workers.iter().enumerate() {
            let valid = !w.name.is_empty()
                && w.name.len() <= 32
                && w.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
            if !valid {
                return Err(format!(
                    "worker name {:?}: 1 to 32 of A-Z a-z 0-9 _ -",
                    w.name
                ));
            }
            if self.workers[..i].iter().any(|o| o.name == w.name) {
                return Err(format!("two workers are named {:?}", w.name));
            }
            if w.command.is_empty() {
                return Err(format!("worker {:?} has no command", w.name));
            }
            if !(1..=64).contains(&w.replicas) {
                return Err(format!("worker {:?}: replicas must be 1 to 64", w.name));
            }
            total += w.replicas as usize;
        }
        if total > MAX_WORKERS {
            return Err(format!("{total} workers in all; at most {MAX_WORKERS}"));
        }
        Ok(())
    }

    /// Every worker instance in start order: (id, spec index). A worker
    /// with one replica is named as written; replicas get `.0`, `.1`, ...
    pub fn instances(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for (i, w) in self.workers.iter().enumerate() {
            if w.replicas == 1 {
                out.push((w.name.clone(), i));
            } else {
                out.extend((0..w.replicas).map(|r| (format!("{}.{r}", w.name), i)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults_and_replicas() {
        let t = Topology::parse(
            "[[worker]]\nname = \"a\"\ncommand = \"./a\"\n\n[[worker]]\nname = \"b\"\ncommand = \"b\"\nreplicas = 2\nrestart = \"transient\"\n",
            std::path::Path::new("/srv"),
        )
        .unwrap();
        assert_eq!(t.supervision, Supervision::default());
        assert_eq!(
            t.workers[0].cwd.as_deref(),
            Some(std::path::Path::new("/srv"))
        );
        assert_eq!(t.workers[1].restart, Restart::Transient);
        let ids: Vec<String> = t.instances().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["a", "b.0", "b.1"]);
    }

    #[test]
    fn refuses_bad_topologies_with_a_reason() {
        let dir = std::path::Path::new("/");
        for (text, reason) in [
            ("", "worker"),
            (
                "[[worker]]\nname = \"a b\"\ncommand = \"x\"\n",
                "worker name",
            ),
            (
                "[[worker]]\nname = \"a\"\ncommand = \"x\"\n[[worker]]\nname = \"a\"\ncommand = \"y\"\n",
                "two workers",
            ),
            (
                "[[worker]]\nname = \"a\"\ncommand = \"x\"\nreplicas = 0\n",
                "replicas",
            ),
            (
                "[[worker]]\nname = \"a\"\ncommand = \"x\"\ncolour = 1\n",
                "unknown field",
            ),
            (
                "[supervision]\nstrategy = \"all_for_none\"\n[[worker]]\nname = \"a\"\ncommand = \"x\"\n",
                "unknown variant",
            ),
            (
                "[supervision]\nperiod_secs = 0\n[[worker]]\nname = \"a\"\ncommand = \"x\"\n",
                "period_secs",
            ),
        ] {
            let e = Topology::parse(text, dir).unwrap_err();
            assert!(e.contains(reason), "{text:?}: {e}");
        }
    }
}
