//! The harness shared by the test binaries that run their own
//! (`harness = false`): a private instance whose supervisor runs on a
//! thread of the harness process, the named tests a command line selects,
//! and the check that nothing of the instance is left in `/dev/shm`.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use grafos_runtime::supervisor::Config;
use grafos_worker::instance::InstancePaths;
use grafos_worker::segment::list_segments;

/// A test's outcome: an error (or a panic) fails it.
pub type Outcome = Result<(), String>;

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
