//! `grafos run TOPOLOGY`: hands a topology to the instance's supervisor
//! (starting one if none runs), then follows its workers until the group
//! stops. Ctrl-C (or SIGTERM) stops the group: workers get SIGTERM in
//! reverse order, then SIGKILL after the grace period.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use grafos_worker::control::{Connection, Reply, Request};
use grafos_worker::drain::Drain;
use grafos_worker::instance::InstancePaths;

use crate::group::{GroupStatus, read_status};
use crate::topology::Topology;
use crate::up;

/// How often the group's state is looked at.
const FOLLOW_PERIOD: Duration = Duration::from_millis(50);

/// Runs the topology in `file`; returns whether the group ended well
/// (every worker finished, or stopped on request).
///
/// # Errors
/// A one-line reason the topology could not run.
pub fn run(paths: &InstancePaths, file: &Path) -> Result<bool, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let dir = std::fs::canonicalize(file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| "/".into());
    Topology::parse(&text, &dir).map_err(|e| format!("{}: {e}", file.display()))?;
    let started_here = match connect(paths) {
        Ok(_) => false,
        Err(_) => {
            let pid = up::detach(paths, &["up".to_owned()])?;
            println!(
                "started instance {:?} (supervisor pid {pid})",
                paths.instance()
            );
            true
        }
    };
    let result = follow(paths, text, &dir);
    if started_here {
        match up::down(paths) {
            Ok(_) => println!("instance {:?} is down", paths.instance()),
            Err(e) => eprintln!("grafos: taking the instance down: {e}"),
        }
    }
    result
}

fn connect(paths: &InstancePaths) -> Result<Connection, String> {
    let connection =
        Connection::connect(paths.instance(), &paths.socket()).map_err(|e| e.to_string())?;
    match connection.call(&Request::Ping) {
        Ok(Reply::Pong { .. }) => Ok(connection),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

fn follow(paths: &InstancePaths, text: String, dir: &Path) -> Result<bool, String> {
    let connection = connect(paths)?;
    // The supervisor writes the new group's state before it answers `Run`,
    // so what is read after the answer is this run's.
    let status_file = paths.runtime_dir().join("workers.json");
    connection
        .call(&Request::Run {
            topology: text,
            dir: dir.display().to_string(),
        })
        .map_err(|e| e.to_string())?;
    // Ctrl-C (or SIGTERM) stops the group instead of ending this process.
    let interrupt = Drain::install().map_err(|e| e.to_string())?;
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let mut stop_sent = false;
    loop {
        if interrupt.requested() && !stop_sent {
            println!(
                "stopping the workers (reverse order; SIGTERM, then SIGKILL after the grace period)"
            );
            // A supervisor that is gone has stopped nothing; say so below.
            let _ = connection.call(&Request::StopGroup);
            stop_sent = true;
        }
        if let Some(status) = read_status(&status_file) {
            show_changes(&status, &mut shown);
            if status.state == "stopped" {
                let reason = status.reason.unwrap_or_default();
                println!("group stopped: {reason}");
                return Ok(reason == "every worker finished" || reason == "stopped by request");
            }
        }
        if connection.call(&Request::Ping).is_err() {
            if !paths.runtime_dir().exists() {
                // `grafos down`: the supervisor stopped the workers and left.
                println!("the instance was taken down; its workers were stopped");
                return Ok(true);
            }
            return Err("the supervisor went away; its workers run on unsupervised".into());
        }
        std::thread::sleep(FOLLOW_PERIOD);
    }
}

/// Prints a line for every worker whose state changed.
fn show_changes(status: &GroupStatus, shown: &mut BTreeMap<String, String>) {
    for w in &status.workers {
        let line = format!(
            "{:<20} {:<8} {:>8} restarts {}{}",
            w.id,
            w.state,
            w.pid.map_or_else(|| "-".to_owned(), |p| format!("pid {p}")),
            w.restarts,
            w.last_exit
                .as_ref()
                .map_or_else(String::new, |e| format!(", last {e}"))
        );
        if shown.get(&w.id) != Some(&line) {
            println!("{line}");
            shown.insert(w.id.clone(), line);
        }
    }
}
