//! Batch jobs: a [`JobCoordinator`] runs a function over chunks of work,
//! retrying failures by a [`RetryPolicy`], stores each chunk's output once
//! in an [`OutputStore`], and aggregates the outputs at the end.
//!
//! ```
//! use grafos_worker::jobs::{JobCoordinator, MemoryOutputStore, RetryPolicy};
//! let chunks = vec![vec![1, 2], vec![3, 4], vec![5]];
//! let mut output_store = MemoryOutputStore::new();
//! let coord = JobCoordinator::new(RetryPolicy::default());
//! let work = |chunk: &Vec<u64>| -> Result<u64, String> { Ok(chunk.iter().sum()) };
//! let aggregate = |sums: &[u64]| sums.iter().sum::<u64>();
//! assert_eq!(coord.run(&chunks, &mut output_store, work, aggregate), Ok(15));
//! ```
//!
//! Outputs are keyed by the chunk's index and stored only if absent: a
//! chunk retried, or a job run again over a store that already holds some
//! outputs, never yields two outputs for one chunk, and chunks already
//! done are not run again. [`MemoryOutputStore`] lives as long as its
//! process; an [`OutputStore`] in shared memory or on disk carries that
//! over a crash.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::Duration;

/// How failed attempts are retried: up to `max_attempts` in all, waiting
/// `initial_backoff`, then `multiplier` times longer after each failure,
/// at most `max_backoff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (at least one is made).
    pub max_attempts: u32,
    /// Wait after the first failure.
    pub initial_backoff: Duration,
    /// Each further wait is this many times the previous one.
    pub multiplier: u32,
    /// Longest wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Three attempts, waiting 10 ms then 20 ms (doubling up to 1 s).
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            multiplier: 2,
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts with no wait between them.
    pub fn immediate(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::ZERO,
            multiplier: 1,
            max_backoff: Duration::ZERO,
        }
    }

    /// The wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .max(1)
            .saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// Whether another attempt follows failed attempt `attempt`.
    pub fn retries_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts.max(1)
    }
}

/// Where a job's outputs go, one per chunk index, stored only if absent.
pub trait OutputStore<O> {
    /// The output of chunk `index`, if stored.
    fn output(&self, index: usize) -> Option<O>;

    /// Stores `output` for chunk `index` unless one is stored already;
    /// whether it was stored.
    fn put_if_absent(&mut self, index: usize, output: O) -> bool;
}

/// Outputs kept in this process's memory.
#[derive(Clone, Debug)]
pub struct MemoryOutputStore<O> {
    outputs: BTreeMap<usize, O>,
    refused: usize,
}

impl<O> Default for MemoryOutputStore<O> {
    fn default() -> Self {
        MemoryOutputStore {
            outputs: BTreeMap::new(),
            refused: 0,
        }
    }
}

impl<O> MemoryOutputStore<O> {
    /// An empty store.
    pub fn new() -> MemoryOutputStore<O> {
        MemoryOutputStore::default()
    }

    /// Outputs stored.
    pub fn len(&self) -> usize {
        self.outputs.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// The output of chunk `index`.
    pub fn get(&self, index: usize) -> Option<&O> {
        self.outputs.get(&index)
    }

    /// Second outputs refused for a chunk that had one.
    pub fn refused(&self) -> usize {
        self.refused
    }
}

impl<O: Clone> OutputStore<O> for MemoryOutputStore<O> {
    fn output(&self, index: usize) -> Option<O> {
        self.outputs.get(&index).cloned()
    }

    fn put_if_absent(&mut self, index: usize, output: O) -> bool {
        if self.outputs.contains_key(&index) {
            self.refused += 1;
            return false;
        }
        self.outputs.insert(index, output);
        true
    }
}

/// Chunks that failed every attempt, or whose output the store lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobError<E> {
    /// `(chunk index, last error)` of each failed chunk.
    pub failed: Vec<(usize, E)>,
    /// Chunks whose output the store did not give back after storing it.
    pub lost: Vec<usize>,
    /// Chunks in the job.
    pub total: usize,
}

impl<E: std::fmt::Display> std::fmt::Display for JobError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} chunks failed after every attempt",
            self.failed.len(),
            self.total
        )?;
        if let Some((chunk, e)) = self.failed.first() {
            write!(f, " (first: chunk {chunk}: {e})")?;
        }
        if !self.lost.is_empty() {
            write!(f, "; the output store lost {} output(s)", self.lost.len())?;
        }
        Ok(())
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for JobError<E> {}

/// What the last [`JobCoordinator::run`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Calls of the work function.
    pub attempts: u64,
    /// Attempts after a failure.
    pub retries: u64,
    /// Chunks whose output was stored already (not run).
    pub skipped: u64,
    /// Chunks that failed every attempt.
    pub failed: u64,
}

/// Runs jobs by a retry policy.
#[derive(Debug)]
pub struct JobCoordinator {
    policy: RetryPolicy,
    last: Cell<RunStats>,
}

impl JobCoordinator {
    /// A coordinator retrying by `policy`.
    pub fn new(policy: RetryPolicy) -> JobCoordinator {
        JobCoordinator {
            policy,
            last: Cell::new(RunStats::default()),
        }
    }

    /// The retry policy.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// What the last run did.
    pub fn stats(&self) -> RunStats {
        self.last.get()
    }

    /// Runs `work` over every chunk without an output in `outputs`
    /// (retrying failures with backoff), stores each output once, then
    /// hands every output, in chunk order, to `aggregate`.
    ///
    /// # Errors
    /// [`JobError`] with the chunks that failed every attempt (the others'
    /// outputs are stored; running again does only the failed ones), or
    /// whose output the store did not give back.
    pub fn run<I, O, E, R>(
        &self,
        chunks: &[I],
        outputs: &mut impl OutputStore<O>,
        mut work: impl FnMut(&I) -> Result<O, E>,
        aggregate: impl FnOnce(&[O]) -> R,
    ) -> Result<R, JobError<E>>
    where
        E: std::fmt::Display,
    {
        let mut stats = RunStats::default();
        let mut failed = Vec::new();
        for (index, chunk) in chunks.iter().enumerate() {
            if outputs.output(index).is_some() {
                stats.skipped += 1;
                continue;
            }
            let mut attempt = 0;
            loop {
                attempt += 1;
                stats.attempts += 1;
                if attempt > 1 {
                    stats.retries += 1;
                }
                match work(chunk) {
                    Ok(output) => {
                        outputs.put_if_absent(index, output);
                        break;
                    }
                    Err(e) if self.policy.retries_after(attempt) => {
                        tracing::debug!(chunk = index, attempt, "chunk failed, retrying: {e}");
                        std::thread::sleep(self.policy.backoff(attempt));
                    }
                    Err(e) => {
                        failed.push((index, e));
                        break;
                    }
                }
            }
        }
        stats.failed = failed.len() as u64;
        self.last.set(stats);
        let mut all = Vec::with_capacity(chunks.len());
        let mut lost = Vec::new();
        if failed.is_empty() {
            for i in 0..chunks.len() {
                match outputs.output(i) {
                    Some(output) => all.push(output),
                    None => lost.push(i),
                }
            }
        }
        if !failed.is_empty() || !lost.is_empty() {
            return Err(JobError {
                failed,
                lost,
                total: chunks.len(),
            });
        }
        Ok(aggregate(&all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(10));
        assert_eq!(p.backoff(2), Duration::from_millis(20));
        assert_eq!(p.backoff(30), Duration::from_secs(1));
        assert!(p.retries_after(2) && !p.retries_after(3));
        assert!(
            !RetryPolicy::immediate(0).retries_after(1),
            "one attempt at least"
        );
    }
}
