//! The harness shared by the test binaries that run their own
//! (`harness = false`): a private instance whose supervisor runs on a
//! thread of the harness process, the named tests a command line selects,
//! and the check that nothing of the instance is left in `/dev/shm`.
#![allow(dead_code)] // Each test binary uses part of it.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use grafos_runtime::supervisor::Config;
use grafos_worker::instance::InstancePaths;
use grafos_worker::segment::list_segments;

/// A test's outcome: an error (or a panic) fails it.
pub type Outcome = Result<(), String>;

/// A test that takes the runtime root and fails by panicking.
pub type Test = fn(&std::path::Path);

/// A named test.
pub type Named<'a> = (&'a str, Box<dyn Fn() -> Outcome + 'a>);

/// A private instance, named in this process's environment
/// (`GRAFOS_INSTANCE`, `GRAFOS_RUNTIME_DIR`) so child processes find it.
pub struct Instance {
    /// The runtime root.
    pub root: PathBuf,
    paths: InstancePaths,
    supervisor: JoinHandle<()>,
}

impl Instance {
    /// Starts instance `<tag><pid>` with the config `config` makes from
    /// the data dir. Call it before the process starts threads of its own
    /// (it sets environment variables).
    pub fn start(tag: &str, config: impl FnOnce(PathBuf) -> Config) -> Instance {
        let instance = format!("{tag}{}", std::process::id());
        let root = std::env::temp_dir().join(format!("grafos-{tag}-{instance}"));
        let _ = std::fs::remove_dir_all(&root);
        // SAFETY: nothing else runs yet: no thread reads the environment.
        unsafe {
            std::env::set_var("GRAFOS_INSTANCE", &instance);
            std::env::set_var("GRAFOS_RUNTIME_DIR", &root);
        }
        let paths = InstancePaths::new(&instance).expect("a valid instance name");
        let config = config(root.join("data"));
        let (ready, started) = std::sync::mpsc::channel();
        let served = paths.clone();
        let supervisor = std::thread::spawn(move || {
            grafos_runtime::up::run_foreground(&served, config, |_| {
                let _ = ready.send(());
            })
            .expect("the supervisor starts");
        });
        started
            .recv_timeout(Duration::from_secs(20))
            .expect("the supervisor answers");
        Instance {
            root,
            paths,
            supervisor,
        }
    }

    /// As [`Instance::run`], for tests that take the runtime root and fail
    /// by panicking.
    pub fn run_with_root(self, tests: &[(&str, Test)]) {
        let root = self.root.clone();
        let tests = tests
            .iter()
            .map(|&(name, test)| {
                let root = root.clone();
                let run: Box<dyn Fn() -> Outcome> = Box::new(move || {
                    test(&root);
                    Ok(())
                });
                (name, run)
            })
            .collect();
        self.run(tests);
    }

    /// Runs the tests whose names contain an argument of the command line
    /// (all without one), printing a line each; then takes the instance
    /// down, asserts `/dev/shm` holds nothing of it, and exits 1 if a test
    /// failed.
    pub fn run(self, tests: Vec<Named<'_>>) {
        let filters: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        let mut failed = Vec::new();
        for (name, test) in &tests {
            if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
                continue;
            }
            let started = Instant::now();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(test)) {
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
        grafos_runtime::up::down(&self.paths).expect("grafos down");
        self.supervisor.join().expect("the supervisor thread ends");
        let left = list_segments(self.paths.instance()).expect("/dev/shm is readable");
        let _ = std::fs::remove_dir_all(&self.root);
        assert!(left.is_empty(), "segments left in /dev/shm: {left:?}");
        if !failed.is_empty() {
            println!("failed: {failed:?}");
            std::process::exit(1);
        }
    }
}

/// Counter `name` of the instance this process names in its environment,
/// as `grafos status` reads it.
pub fn counter(name: &str) -> u64 {
    let instance = std::env::var("GRAFOS_INSTANCE").expect("set by the harness");
    let paths = InstancePaths::new(&instance).expect("a valid instance name");
    grafos_runtime::status::read(&paths)
        .expect("status")
        .counters[name]
}
