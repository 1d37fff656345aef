//! The seeds' snippets as compiled tests, run against a real supervisor
//! (started in this process on an instance of its own) and, where the
//! snippet's other end belongs elsewhere, a second process.
//!
//! The snippets are as the seeds give them, changed only by the `use`
//! lines of the alias prelude below, `?` where a constructor touches
//! shared memory, and the instance name (set through `GRAFOS_INSTANCE`
//! before anything runs).
//!
//! Our own harness (`harness = false`): one instance for all snippets, and
//! the same binary serves as the second process.

mod recipe8;
mod stream;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use grafos_runtime::supervisor::Config;
use grafos_worker::instance::InstancePaths;
use grafos_worker::segment::list_segments;

/// A snippet's result.
pub type SeedResult = Result<(), Box<dyn std::error::Error>>;

/// A snippet to run.
type Seed = fn() -> SeedResult;

/// Every snippet, by name.
const ALL: &[(&str, Seed)] = &[
    ("recipe8_edge_round_trip", recipe8::edge_round_trip),
    (
        "recipe8_relocate_makes_cached_stale",
        recipe8::relocate_makes_cached_stale,
    ),
    (
        "recipe8_other_process_follows",
        recipe8::other_process_follows,
    ),
    (
        "recipe8_expired_lease_relocates",
        recipe8::expired_lease_relocates,
    ),
    (
        "recipe8_uncarried_records_are_counted",
        recipe8::uncarried_records_are_counted,
    ),
    (
        "stream_pipeline_runs_as_threads",
        stream::pipeline_runs_as_threads,
    ),
    (
        "stream_a_failing_stage_ends_the_run",
        stream::a_failing_stage_ends_the_run,
    ),
];

fn main() {
    if let Ok(role) = std::env::var(recipe8::PEER_ENV) {
        return recipe8::peer(&role);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let instance = format!("seeds{}", std::process::id());
    let root = std::env::temp_dir().join(format!("grafos-seeds-{instance}"));
    let _ = std::fs::remove_dir_all(&root);
    // SAFETY: nothing else runs yet: no thread reads the environment.
    unsafe {
        std::env::set_var("GRAFOS_INSTANCE", &instance);
        std::env::set_var("GRAFOS_RUNTIME_DIR", &root);
    }
    let paths = InstancePaths::new(&instance).expect("a valid instance name");
    let supervisor = start_supervisor(&paths, root.join("data"));

    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    for (name, seed) in ALL {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let started = Instant::now();
        match std::panic::catch_unwind(seed) {
            Ok(Ok(())) => println!("test {name} ... ok ({:.1?})", started.elapsed()),
            Ok(Err(e)) => {
                println!("test {name} ... FAILED: {e}");
                failed.push(*name);
            }
            Err(_) => {
                println!("test {name} ... FAILED (panicked)");
                failed.push(*name);
            }
        }
    }

    grafos_runtime::up::down(&paths).expect("grafos down");
    supervisor.join().expect("the supervisor thread ends");
    let left = list_segments(&instance).expect("/dev/shm is readable");
    let _ = std::fs::remove_dir_all(&root);
    assert!(left.is_empty(), "segments left in /dev/shm: {left:?}");
    if !failed.is_empty() {
        println!("failed: {failed:?}");
        std::process::exit(1);
    }
}

/// Runs a supervisor for `paths` on a thread; returns once it answers.
fn start_supervisor(paths: &InstancePaths, data_dir: PathBuf) -> std::thread::JoinHandle<()> {
    let config = Config {
        pool_size: 256 << 20,
        block_pool_size: 64 << 20,
        data_dir,
        grace: Duration::from_secs(2),
        claim_age_limit: Duration::from_secs(10),
    };
    let (ready, started) = std::sync::mpsc::channel();
    let paths = paths.clone();
    let thread = std::thread::spawn(move || {
        grafos_runtime::up::run_foreground(&paths, config, |_| {
            let _ = ready.send(());
        })
        .expect("the supervisor starts");
    });
    started
        .recv_timeout(Duration::from_secs(20))
        .expect("the supervisor answers");
    thread
}
