//! A supervisor serving an instance of its own on a thread of this
//! process (the library `grafos up` runs), for rows that need leases.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use grafos_runtime::supervisor::{Config, Supervisor};
use grafos_runtime::up::InstanceLock;
use grafos_runtime::{serve, up};
use grafos_worker::control::{Connection, Request};
use grafos_worker::instance::InstancePaths;

pub(crate) struct LocalInstance {
    pub(crate) instance: String,
    pub(crate) root: PathBuf,
    paths: InstancePaths,
    served: JoinHandle<()>,
    lock: InstanceLock,
}

impl LocalInstance {
    /// Starts a supervisor for a fresh instance named after `tag`, and
    /// names it in this process's environment. Call it before this
    /// process starts threads (it sets environment variables).
    pub(crate) fn start(tag: &str) -> LocalInstance {
        let instance = format!("bench{tag}{}", std::process::id());
        let root = std::env::temp_dir().join(format!("grafos-bench-{instance}"));
        let paths = InstancePaths::in_root(&instance, &root).expect("instance name");
        // For code that finds its instance in the environment (pipelines).
        // SAFETY: set before this process starts any thread of its own.
        unsafe {
            std::env::set_var("GRAFOS_INSTANCE", &instance);
            std::env::set_var("GRAFOS_RUNTIME_DIR", &root);
        }
        let lock = up::lock(&paths).expect("instance lock");
        let config = Config {
            pool_size: 1 << 30,
            block_pool_size: 1 << 30,
            data_dir: paths.default_data_dir(),
            grace: Duration::from_secs(1),
            claim_age_limit: Duration::from_secs(10),
        };
        let supervisor = Supervisor::start(paths.clone(), config).expect("supervisor");
        let listener = serve::bind(&paths.socket()).expect("control socket");
        let served = std::thread::spawn(move || serve::serve(supervisor, listener, None));
        LocalInstance {
            instance,
            root,
            paths,
            served,
            lock,
        }
    }

    /// Shuts the supervisor down and removes the runtime dir.
    pub(crate) fn stop(self) {
        Connection::connect(&self.instance, &self.paths.socket())
            .and_then(|c| c.call(&Request::Shutdown))
            .expect("shutdown");
        self.served.join().expect("supervisor thread");
        drop(self.lock);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
