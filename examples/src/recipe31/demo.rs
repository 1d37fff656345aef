//! The demo: a private instance with its supervisor on a thread of this
//! process, the producer and the group of workers as processes under
//! `grafos run`'s supervision, progress while they run, then a check of
//! every result and the throughput and end-to-end latency.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use grafos_runtime::supervisor::Config;
use grafos_worker::instance::InstancePaths;
use grafos_worker::mq::topic::TopicManager;
use grafos_worker::store::{FabricUri, MemObjectStore, ObjectStore};

use crate::common::{self, GROUP, OBJECTS, Outcome, RESULTS, TOPIC};

/// The demo's knobs.
pub struct DemoArgs {
    /// Objects to store.
    pub objects: u64,
    /// Bytes per object.
    pub size: usize,
    /// Objects per second (0: as fast as the pipeline goes).
    pub rate: u64,
    /// Worker processes in the group.
    pub workers: u32,
    /// Partitions of the topic.
    pub partitions: u32,
}

type Failure = Box<dyn std::error::Error>;

/// Runs the pipeline on an instance of its own and reports; `Ok(false)`
/// if a result is missing or wrong.
pub fn run(args: &DemoArgs) -> Result<bool, Failure> {
    let instance = format!("recipe31-{}", std::process::id());
    let root = std::env::temp_dir().join(format!("grafos-{instance}"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    // SAFETY: no other thread runs yet, so none reads the environment.
    unsafe {
        std::env::set_var("GRAFOS_INSTANCE", &instance);
        std::env::set_var("GRAFOS_RUNTIME_DIR", &root);
    }
    let paths = InstancePaths::new(&instance)?;
    let supervisor = match start_supervisor(&paths, &root) {
        Ok(supervisor) => supervisor,
        Err(e) => {
            let _ = grafos_runtime::up::down(&paths);
            let _ = std::fs::remove_dir_all(&root);
            return Err(e);
        }
    };
    println!(
        "recipe31: instance {instance}: {} objects of {} B, {} workers in group {GROUP} over {} partitions of {TOPIC}",
        args.objects, args.size, args.workers, args.partitions
    );
    let outcome = pipeline(args, &paths, &root).and_then(|()| verify(args, &instance));
    if let Err(e) = grafos_runtime::up::down(&paths) {
        eprintln!("recipe31: taking the instance down: {e}");
    }
    let _ = supervisor.join();
    let left = leftovers(&instance);
    let _ = std::fs::remove_dir_all(&root);
    if !left.is_empty() {
        return Err(format!("left in /dev/shm: {left:?}").into());
    }
    outcome
}

/// The supervisor, on a thread of its own; returns once it answers.
fn start_supervisor(
    paths: &InstancePaths,
    root: &Path,
) -> Result<std::thread::JoinHandle<()>, Failure> {
    let config = Config {
        pool_size: 2 << 30,
        block_pool_size: 64 << 20,
        data_dir: root.join("data"),
        grace: Duration::from_secs(2),
        claim_age_limit: Duration::from_secs(10),
    };
    let (ready, started) = std::sync::mpsc::channel();
    let served = paths.clone();
    let handle = std::thread::spawn(move || {
        if let Err(e) = grafos_runtime::up::run_foreground(&served, config, |_| {
            let _ = ready.send(());
        }) {
            eprintln!("recipe31: supervisor: {e}");
        }
    });
    started
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| "the supervisor did not start")?;
    Ok(handle)
}

/// Runs the topology under `grafos run`'s supervision, printing progress
/// each second until the group ends.
fn pipeline(args: &DemoArgs, paths: &InstancePaths, root: &Path) -> Result<(), Failure> {
    let file: PathBuf = root.join("recipe31.toml");
    let exe = std::env::current_exe()?;
    let topology = common::topology(
        &exe,
        args.objects,
        args.size,
        args.rate,
        args.partitions,
        args.workers,
    );
    std::fs::write(&file, topology)?;
    let follow = {
        let paths = paths.clone();
        std::thread::spawn(move || grafos_runtime::run::run(&paths, &file))
    };
    let topics = TopicManager::new();
    let started = Instant::now();
    let mut last = (started, 0u64);
    while !follow.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        if last.0.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let Ok(d) = topics.describe(TOPIC) else {
            continue;
        };
        let sent: u64 = d.partitions.iter().map(|p| p.head).sum();
        let Some(g) = common::processors(&d) else {
            continue;
        };
        let done: u64 = g.committed.iter().sum();
        let rate = (done - last.1.min(done)) as f64 / last.0.elapsed().as_secs_f64();
        println!(
            "progress {:5.1} s: notified {sent:7} / {}  handled {done:7}  ({rate:8.0}/s)  generation {}  members {}",
            started.elapsed().as_secs_f64(),
            args.objects,
            g.coordination.generation,
            g.members
                .iter()
                .map(|m| format!("{}:{:?}", m.name, m.partitions))
                .collect::<Vec<_>>()
                .join(" ")
        );
        last = (Instant::now(), done);
    }
    match follow.join() {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err("the group did not finish".into()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err("following the group panicked".into()),
    }
}

/// Checks every object's result and prints throughput and latency.
fn verify(args: &DemoArgs, instance: &str) -> Result<bool, Failure> {
    let store = MemObjectStore::open()?;
    let (mut missing, mut wrong, mut reprocessed) = (0u64, 0u64, 0u64);
    let mut latencies = Vec::with_capacity(args.objects as usize);
    let (mut first_put, mut last_done) = (u64::MAX, 0u64);
    for i in 0..args.objects {
        let key = common::object_key(i);
        let object = store.get(&FabricUri::new(instance, OBJECTS, &key)?)?;
        let result = store.get(&FabricUri::new(instance, RESULTS, &key)?)?;
        let (Some(object), Some(result)) = (object, result) else {
            missing += 1;
            continue;
        };
        let Some(outcome) = Outcome::parse(&String::from_utf8_lossy(&result)) else {
            wrong += 1;
            continue;
        };
        if outcome.crc != common::checksum(&object) || object != common::object_body(i, args.size) {
            wrong += 1;
        }
        reprocessed += u64::from(outcome.redelivered);
        latencies.push(outcome.done_us.saturating_sub(outcome.put_us));
        first_put = first_put.min(outcome.put_us);
        last_done = last_done.max(outcome.done_us);
    }
    latencies.sort_unstable();
    let secs = last_done.saturating_sub(first_put) as f64 / 1e6;
    println!(
        "recipe31: {} results checked: missing={missing} wrong={wrong} reprocessed={reprocessed}",
        args.objects
    );
    println!(
        "recipe31: {:.0} events/s end to end (first put to last result, {secs:.2} s); latency put -> result p50 {} us, p99 {} us, max {} us",
        latencies.len() as f64 / secs.max(1e-9),
        common::quantile(&latencies, 0.50),
        common::quantile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0)
    );
    Ok(missing == 0 && wrong == 0)
}

/// Segments of `instance` still in `/dev/shm`.
fn leftovers(instance: &str) -> Vec<String> {
    let prefix = format!("grafos.{instance}.");
    std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect()
}
