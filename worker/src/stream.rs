//! Stream pipelines: a source, map and filter stages and a sink, joined
//! by relocatable edges.
//!
//! ```no_run
//! use grafos_worker::stream::Pipeline;
//! # fn main() -> grafos_worker::Result<()> {
//! let report = Pipeline::from_source((0..1000u32).map(|i| format!("event-{i}")))
//!     .map(|event: String| event.to_uppercase())
//!     .filter(|event: &String| !event.ends_with('7'))
//!     .sink(|event: String| {
//!         println!("{event}");
//!         Ok(())
//!     })
//!     .run()?;
//! assert_eq!(report.sunk, 900);
//! # Ok(()) }
//! ```
//!
//! Every stage (the source, each `map` or `filter`, the sink) runs on its
//! own, and every boundary between two stages is a
//! [`RelocatableQueueEdge`]. [`RunnablePipeline::run`] runs the stages
//! as threads of this process, unless the process is a worker of
//! `grafos run` whose id ends in `.N` (a worker spec with one replica per
//! stage): then it runs stage N only, and the processes of the other
//! replicas run the others, meeting at edges the first of them makes.
//!
//! As worker processes, stages survive being killed. Each stage
//! checkpoints its input position with [`Durable`] after forwarding what
//! it read, and commits its input edge only after that, so a restarted
//! stage re-reads what it had not checkpointed and skips what it had
//! (counted as redeliveries). What a stage forwarded but did not
//! checkpoint before dying is forwarded again: downstream sees it twice,
//! so the sink must be idempotent. The source restarts by skipping as
//! many items as it checkpointed, so it must yield the same items each
//! time.

use std::io::{Read, Seek, Write};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::collections::Item;
use crate::collections::durable::{Durable, SyncPolicy};
use crate::drain::{Drain, worker_id};
use crate::error::{FabricError, Result};
use crate::instance::{InstancePaths, instance_from_env};
use crate::pipeline::{EdgeStats, RelocatableQueueEdge};

/// Records a stage handles between two checkpoints.
const BATCH: usize = 64;
/// How long an idle stage sleeps before it looks for a stop request.
const IDLE_SLICE: Duration = Duration::from_millis(100);
/// Bytes of each edge's lease unless set.
const DEFAULT_EDGE_BYTES: u64 = 1 << 20;
/// Lease time of the edges (renewed while in use).
const EDGE_LEASE_SECS: u64 = 300;

/// First byte of an edge record: an item follows.
const TAG_ITEM: u8 = 0;
/// First byte of an edge record: the stream ended.
const TAG_END: u8 = 1;

type Source = Box<dyn Iterator<Item = Vec<u8>> + Send>;
type StageFn = Box<dyn FnMut(Vec<u8>) -> Result<Option<Vec<u8>>> + Send>;
type SinkFn = Box<dyn FnMut(Vec<u8>) -> Result<()> + Send>;

/// A pipeline being built: its items are `T`s so far.
pub struct Pipeline<T> {
    name: String,
    edge_bytes: u64,
    source: Source,
    stages: Vec<StageFn>,
    _item: PhantomData<fn() -> T>,
}

impl<T: Item + 'static> Pipeline<T> {
    /// A pipeline whose items come from `source` (which must yield the
    /// same items each time it is made, for a restarted source process
    /// to skip what it sent).
    pub fn from_source<I>(source: I) -> Pipeline<T>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        let items = source.into_iter().map(|item| item.to_bytes().into_owned());
        Pipeline {
            name: "pipeline".to_owned(),
            edge_bytes: DEFAULT_EDGE_BYTES,
            source: Box::new(items),
            stages: Vec::new(),
            _item: PhantomData,
        }
    }

    /// Names the pipeline (worker processes of one pipeline find their
    /// edges by it; default `pipeline`).
    pub fn named(mut self, name: &str) -> Pipeline<T> {
        name.clone_into(&mut self.name);
        self
    }

    /// Bytes of each edge's shared-memory lease (default 1 MiB); the
    /// largest item is a little under half of it.
    pub fn edge_bytes(mut self, bytes: u64) -> Pipeline<T> {
        self.edge_bytes = bytes;
        self
    }

    /// A stage that turns each item into another.
    pub fn map<U: Item + 'static>(self, mut f: impl FnMut(T) -> U + Send + 'static) -> Pipeline<U> {
        self.then(Box::new(move |bytes| {
            let out = f(T::from_bytes(&bytes)?);
            Ok(Some(out.to_bytes().into_owned()))
        }))
    }

    /// A stage that passes on the items `keep` says yes to.
    pub fn filter(self, mut keep: impl FnMut(&T) -> bool + Send + 'static) -> Pipeline<T> {
        self.then(Box::new(move |bytes| {
            Ok(keep(&T::from_bytes(&bytes)?).then_some(bytes))
        }))
    }

    /// The last stage: `f` takes every item that comes through.
    pub fn sink(self, mut f: impl FnMut(T) -> Result<()> + Send + 'static) -> RunnablePipeline {
        RunnablePipeline {
            name: self.name,
            edge_bytes: self.edge_bytes,
            source: self.source,
            stages: self.stages,
            sink: Box::new(move |bytes| f(T::from_bytes(&bytes)?)),
        }
    }

    fn then<U>(mut self, stage: StageFn) -> Pipeline<U> {
        self.stages.push(stage);
        Pipeline {
            name: self.name,
            edge_bytes: self.edge_bytes,
            source: self.source,
            stages: self.stages,
            _item: PhantomData,
        }
    }
}

/// A complete pipeline, ready to run.
pub struct RunnablePipeline {
    name: String,
    edge_bytes: u64,
    source: Source,
    stages: Vec<StageFn>,
    sink: SinkFn,
}

/// What a run did (of every stage as threads, or of the one stage this
/// process ran).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Items the source sent.
    pub sourced: u64,
    /// Items the sink took.
    pub sunk: u64,
    /// Items a filter dropped.
    pub filtered: u64,
    /// What the edge handles of the stages run saw and did.
    pub edges: EdgeStats,
}

impl RunReport {
    fn add(&mut self, other: &RunReport) {
        self.sourced += other.sourced;
        self.sunk += other.sunk;
        self.filtered += other.filtered;
        self.edges.rebinds += other.edges.rebinds;
        self.edges.relocations += other.edges.relocations;
        self.edges.carried += other.edges.carried;
        self.edges.lost_spans += other.edges.lost_spans;
        self.edges.redeliveries += other.edges.redeliveries;
        self.edges.rebind_ns += other.edges.rebind_ns;
    }

    fn add_edge(&mut self, edge: Option<&RelocatableQueueEdge>) {
        if let Some(edge) = edge {
            self.add(&RunReport {
                edges: edge.stats(),
                ..RunReport::default()
            });
        }
    }
}

/// One stage's job.
enum Job {
    Source(Source),
    Map(StageFn),
    Sink(SinkFn),
}

/// Where a stage keeps its progress.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Progress {
    /// Input position handled (the source: items sent).
    position: u64,
    /// The end of the stream was passed on.
    done: bool,
}

impl RunnablePipeline {
    /// Number of stages (source, maps and filters, sink).
    pub fn stage_count(&self) -> usize {
        self.stages.len() + 2
    }

    /// Runs the pipeline to the end of its source: as threads, or, in a
    /// worker process of `grafos run` whose id ends in `.N`, stage N.
    ///
    /// # Errors
    /// `InvalidArgument` if the worker id names no stage; the errors of
    /// the edges, the checkpoints and the stages' own functions.
    pub fn run(self) -> Result<RunReport> {
        let stage = worker_id().and_then(|id| {
            id.rsplit_once('.')
                .and_then(|(_, n)| n.parse::<usize>().ok())
        });
        match stage {
            Some(stage) => self.run_stage(stage),
            None => self.run_threads(),
        }
    }

    fn jobs(self) -> Vec<Job> {
        let mut jobs = vec![Job::Source(self.source)];
        jobs.extend(self.stages.into_iter().map(Job::Map));
        jobs.push(Job::Sink(self.sink));
        jobs
    }

    /// Every stage on a thread of its own, with fresh edges.
    fn run_threads(self) -> Result<RunReport> {
        let instance = instance_from_env();
        let bytes = self.edge_bytes;
        let jobs = self.jobs();
        let mut outputs = Vec::new();
        let mut inputs = Vec::new();
        for i in 1..jobs.len() {
            let edge = RelocatableQueueEdge::create(&instance, bytes, EDGE_LEASE_SECS, i as u64)?;
            let id = edge.handoff_lease_id();
            inputs.push(RelocatableQueueEdge::open_by_id(&instance, id)?);
            outputs.push(edge);
        }
        // A stage that fails calls the others off (else they would wait
        // for it for ever).
        let failed = Arc::new(AtomicBool::new(false));
        for edge in inputs.iter_mut().chain(outputs.iter_mut()) {
            edge.stop_when(failed.clone());
        }
        let mut inputs = inputs.into_iter();
        let mut outputs = outputs.into_iter();
        let threads: Vec<_> = jobs
            .into_iter()
            .enumerate()
            .map(|(i, job)| {
                let input = if i == 0 { None } else { inputs.next() };
                let output = match job {
                    Job::Sink(_) => None,
                    _ => outputs.next(),
                };
                let failed = failed.clone();
                std::thread::Builder::new()
                    .name(format!("stage-{i}"))
                    .spawn(move || {
                        let run = || run_job(job, input, output, None, None);
                        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                            Ok(Ok(report)) => Ok(report),
                            Ok(Err(e)) => {
                                failed.store(true, Ordering::Relaxed);
                                Err(e)
                            }
                            Err(panic) => {
                                failed.store(true, Ordering::Relaxed);
                                std::panic::resume_unwind(panic)
                            }
                        }
                    })
                    .map_err(|e| FabricError::from_io(&e))
            })
            .collect::<Result<_>>()?;
        let mut report = RunReport::default();
        let mut first_error = None;
        for thread in threads {
            match thread.join() {
                Ok(Ok(stage)) => report.add(&stage),
                // The stages called off report that; the cause is the
                // error of the one that failed.
                Ok(Err(FabricError::Stopped(_))) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(FabricError::Stopped("a stage panicked".into()));
                }
            }
        }
        first_error.map_or(Ok(report), Err)
    }

    /// Stage `index` only, meeting the other stages' processes at the
    /// pipeline's edges; checkpoints go to the instance's runtime dir.
    fn run_stage(self, index: usize) -> Result<RunReport> {
        let count = self.stage_count();
        if index >= count {
            return Err(FabricError::InvalidArgument(format!(
                "worker id {} names stage {index}; pipeline {} has stages 0 to {}",
                worker_id().unwrap_or_default(),
                self.name,
                count - 1
            )));
        }
        let instance = instance_from_env();
        let dir = InstancePaths::new(&instance)?
            .runtime_dir()
            .join("pipelines")
            .join(&self.name);
        std::fs::create_dir_all(&dir).map_err(|e| FabricError::from_io(&e))?;
        let mut progress = Durable::open(
            dir.join(format!("stage-{index}.checkpoint")),
            64,
            SyncPolicy::Always,
        )?;
        if progress.load()?.is_some_and(|p: Progress| p.done) {
            return Ok(RunReport::default());
        }
        let edges = edge_ids(&dir, &instance, self.edge_bytes, count - 1)?;
        let input = match index {
            0 => None,
            i => Some(RelocatableQueueEdge::open_by_id(&instance, edges[i - 1])?),
        };
        let output = match edges.get(index) {
            Some(&id) => Some(RelocatableQueueEdge::open_by_id(&instance, id)?),
            None => None,
        };
        let drain = Drain::install()?;
        let job = self.jobs().into_iter().nth(index).expect("index checked");
        run_job(job, input, output, Some(&mut progress), Some(&drain))
    }
}

/// The handoff lease ids of a pipeline's `count` edges, made by the
/// first process that needs them (under a lock on the list).
fn edge_ids(dir: &std::path::Path, instance: &str, bytes: u64, count: usize) -> Result<Vec<u64>> {
    let io = |e: std::io::Error| FabricError::from_io(&e);
    let path: PathBuf = dir.join("edges");
    let mut file = crate::instance::open_locked(&path)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    let mut ids: Vec<u64> = text
        .split_whitespace()
        .map(|id| {
            id.parse().map_err(|_| {
                FabricError::InvalidArgument(format!("{}: not a lease id: {id}", path.display()))
            })
        })
        .collect::<Result<_>>()?;
    if ids.len() < count {
        for i in ids.len()..count {
            let edge: RelocatableQueueEdge =
                RelocatableQueueEdge::create(instance, bytes, EDGE_LEASE_SECS, i as u64 + 1)?;
            ids.push(edge.handoff_lease_id());
        }
        let listed: String = ids.iter().map(|id| format!("{id}\n")).collect();
        file.rewind().map_err(io)?;
        file.write_all(listed.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)?;
    }
    Ok(ids)
}

/// Runs one stage until the end of the stream passes it, or `drain` asks
/// it to stop (after checkpointing and committing what it handled).
fn run_job(
    job: Job,
    mut input: Option<RelocatableQueueEdge>,
    mut output: Option<RelocatableQueueEdge>,
    mut progress: Option<&mut Durable<Progress>>,
    drain: Option<&Drain>,
) -> Result<RunReport> {
    let mut report = RunReport::default();
    let saved = match progress.as_deref_mut() {
        Some(durable) => durable.load()?.unwrap_or_default(),
        None => Progress::default(),
    };
    let stopping = || drain.is_some_and(Drain::requested);
    let done = match job {
        Job::Source(source) => {
            let output = output.as_mut().expect("a source has an output");
            let mut sent = saved.position;
            let mut last_saved = Instant::now();
            let mut ended = true;
            for item in source.skip(saved.position as usize) {
                output.push(&tagged(TAG_ITEM, &item))?;
                sent += 1;
                report.sourced += 1;
                if sent.is_multiple_of(BATCH as u64) || last_saved.elapsed() > IDLE_SLICE {
                    save(&mut progress, sent, false)?;
                    last_saved = Instant::now();
                }
                if stopping() {
                    ended = false;
                    break;
                }
            }
            if ended {
                output.push(&vec![TAG_END])?;
            }
            save(&mut progress, sent, ended)?;
            ended
        }
        Job::Map(mut f) => {
            let input = input.as_mut().expect("a stage has an input");
            let output = output.as_mut().expect("a stage has an output");
            input.resume_after(saved.position);
            pump(input, &mut progress, stopping, |record| match record {
                Some(bytes) => {
                    match f(bytes)? {
                        Some(out) => output.push(&tagged(TAG_ITEM, &out))?,
                        None => {
                            report.filtered += 1;
                            0
                        }
                    };
                    Ok(())
                }
                None => output.push(&vec![TAG_END]).map(drop),
            })?
        }
        Job::Sink(mut f) => {
            let input = input.as_mut().expect("a sink has an input");
            input.resume_after(saved.position);
            pump(input, &mut progress, stopping, |record| match record {
                Some(bytes) => {
                    report.sunk += 1;
                    f(bytes)
                }
                None => Ok(()),
            })?
        }
    };
    report.add_edge(input.as_ref());
    report.add_edge(output.as_ref());
    // The output edge is only dropped: its records (and the end) may still
    // be unread, and a consumer restarting later must find them. The
    // consumer, having committed the end, releases its input: once both
    // ends let go, the edge's leases end.
    if done
        && let Some(edge) = input
        && let Err(e) = edge.release()
    {
        tracing::debug!("releasing an edge: {e}");
    }
    Ok(report)
}

/// Reads `input` in batches, handing each item (or `None` for the end)
/// to `handle`, then checkpoints and commits; returns whether the end
/// was reached (else a stop was asked for).
fn pump(
    input: &mut RelocatableQueueEdge,
    progress: &mut Option<&mut Durable<Progress>>,
    stopping: impl Fn() -> bool,
    mut handle: impl FnMut(Option<Vec<u8>>) -> Result<()>,
) -> Result<bool> {
    loop {
        let mut ended = false;
        let mut handled = 0;
        while handled < BATCH && !ended {
            let wait = if handled == 0 {
                Some(IDLE_SLICE)
            } else {
                Some(Duration::ZERO)
            };
            let Some(record) = input.pop_timeout(wait)? else {
                break;
            };
            handled += 1;
            match record.split_first() {
                Some((&TAG_ITEM, item)) => handle(Some(item.to_vec()))?,
                Some((&TAG_END, _)) => {
                    handle(None)?;
                    ended = true;
                }
                _ => return Err(FabricError::Codec("edge record without a tag".into())),
            }
        }
        if handled > 0 {
            let position = input.delivered_position().unwrap_or(0);
            save(progress, position, ended)?;
            input.commit()?;
        }
        if ended {
            return Ok(true);
        }
        if handled == 0 && stopping() {
            return Ok(false);
        }
    }
}

fn save(progress: &mut Option<&mut Durable<Progress>>, position: u64, done: bool) -> Result<()> {
    match progress {
        Some(durable) => durable.checkpoint(&Progress { position, done }),
        None => Ok(()),
    }
}

fn tagged(tag: u8, item: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(item.len() + 1);
    record.push(tag);
    record.extend_from_slice(item);
    record
}
