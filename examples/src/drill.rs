//! What the failover drills share: an instance of their own started with
//! `grafos up --detach`, `grafos` commands against it, and the check, once
//! it is down, that nothing of it is left in `/dev/shm`.
#![allow(dead_code)] // Each drill uses part of it.

use std::path::{Path, PathBuf};
use std::process::Command;

use grafos_worker::drain::Drain;
use serde_json::Value;

/// A drill's error.
pub type Failure = Box<dyn std::error::Error>;

/// An instance of the drill's own, its runtime dir, and the directory of
/// the binaries (`grafos` and the workers) beside the drill's. SIGTERM and
/// SIGINT are caught ([`Drill::interrupted`]), so a drill stopped from
/// outside still takes its instance down.
pub struct Drill {
    /// The instance: `<tag><pid>`.
    pub instance: String,
    /// Its runtime dir (removed by `finish`).
    pub root: PathBuf,
    /// Where `grafos` and the example binaries are.
    pub bin: PathBuf,
    stop: Drain,
}

impl Drill {
    /// Makes the runtime dir (with a `work` dir in it) and runs `grafos up
    /// --detach --grace-secs 2 UP_ARGS`.
    pub fn start(tag: &str, up_args: &[&str]) -> Result<Drill, Failure> {
        let bin = std::env::current_exe()?
            .parent()
            .ok_or("the drill has no directory")?
            .to_path_buf();
        let instance = format!("{tag}{}", std::process::id());
        let root = std::env::temp_dir().join(format!("grafos-{instance}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("work"))?;
        let drill = Drill {
            instance,
            root,
            bin,
            stop: Drain::install()?,
        };
        let mut up = vec!["up", "--detach", "--grace-secs", "2"];
        up.extend_from_slice(up_args);
        drill.grafos(&up)?;
        Ok(drill)
    }

    /// Whether SIGTERM or SIGINT came: stop disturbing, take the instance
    /// down, fail.
    pub fn interrupted(&self) -> bool {
        self.stop.requested()
    }

    /// A command for `program` with the instance in its environment.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command
            .env("GRAFOS_INSTANCE", &self.instance)
            .env("GRAFOS_RUNTIME_DIR", &self.root);
        command
    }

    /// Runs `grafos ARGS`, which must succeed; its standard output.
    pub fn grafos(&self, args: &[&str]) -> Result<String, Failure> {
        let out = self.command(&self.bin.join("grafos")).args(args).output()?;
        if !out.status.success() {
            return Err(format!(
                "grafos {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `grafos status --json`.
    pub fn status(&self) -> Result<Value, Failure> {
        Ok(serde_json::from_str(&self.grafos(&["status", "--json"])?)?)
    }

    /// Takes the instance down and checks nothing of it is left in
    /// `/dev/shm` (exits 1 if something is); removes the runtime dir.
    pub fn finish(&self, drill: &str) {
        if let Err(e) = self.grafos(&["down"]) {
            eprintln!("{drill}: {e}");
        }
        let prefix = format!("grafos.{}.", self.instance);
        let left: Vec<String> = std::fs::read_dir("/dev/shm")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&prefix))
            .collect();
        if !left.is_empty() {
            eprintln!("{drill}: left in /dev/shm: {left:?}");
            std::process::exit(1);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Instance counter `name` in a `grafos status --json` document.
pub fn counter(status: &Value, name: &str) -> u64 {
    status["counters"][name].as_u64().unwrap_or(0)
}
