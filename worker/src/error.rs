//! The worker library's error type.

use grafos_shm_layout::LayoutError;
use grafos_shm_layout::edge::EdgeError;
use grafos_shm_layout::handoff::HandoffError;
use grafos_shm_layout::queue::QueueError;

/// What went wrong in a grafos library call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FabricError {
    /// A system call failed.
    #[error("{op} {target}: {source}")]
    Io {
        /// The operation (`shm_open`, `mmap`, ...).
        op: &'static str,
        /// What it was applied to.
        target: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No segment of that name exists.
    #[error("segment {0} not found")]
    NotFound(String),
    /// A segment of that name exists already.
    #[error("segment {0} already exists")]
    AlreadyExists(String),
    /// Shared memory (tmpfs) is full: the segment could not be reserved.
    #[error("no room in /dev/shm for {bytes} bytes of {name}")]
    NoSpace {
        /// Segment name.
        name: String,
        /// Bytes requested.
        bytes: u64,
    },
    /// An instance or object name breaks the naming rules.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A parameter is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A segment's bytes are not what the opener expects.
    #[error("segment {name}: {source}")]
    Layout {
        /// Segment name.
        name: String,
        /// What failed to validate.
        source: LayoutError,
    },
    /// A single-holder role is held by a live process.
    #[error("the {role} role of {name} is held by live process {owner}")]
    RoleTaken {
        /// Segment name.
        name: String,
        /// `producer` or `consumer`.
        role: &'static str,
        /// The holder (pid and start time).
        owner: crate::process::ProcessId,
    },
    /// An edge log operation failed.
    #[error(transparent)]
    Edge(#[from] EdgeError),
    /// A queue operation failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A hash map operation failed.
    #[error("map: {0}")]
    Map(#[from] grafos_shm_layout::map::MapError),
    /// A handoff publication did not happen.
    #[error("handoff: {0}")]
    Handoff(#[from] HandoffError),
    /// A typed record does not have the size of its type.
    #[error("record of {found} bytes where {expected} were expected")]
    WrongSize {
        /// Bytes expected for the type.
        expected: usize,
        /// Bytes in the record.
        found: usize,
    },
    /// A serde record could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// The lease ran out (or was expired by hand): its memory may be gone
    /// soon, so nothing touches it through this handle any more.
    #[error("lease {0} has expired")]
    LeaseExpired(u64),
    /// The lease was declared dead: nothing may use it.
    #[error("lease {0} is poisoned")]
    LeasePoisoned(u64),
    /// The supervisor knows no lease of that id.
    #[error("no lease {0} in this instance")]
    UnknownLease(u64),
    /// The pool cannot cover an acquire.
    #[error(
        "the {pool_kind} pool has {free} of {capacity} bytes free; {requested} bytes requested"
    )]
    NoBudget {
        /// `memory` or `block`.
        pool_kind: String,
        /// Bytes asked for (rounded up to whole pages or blocks).
        requested: u64,
        /// Bytes free now.
        free: u64,
        /// The pool's size.
        capacity: u64,
    },
    /// No supervisor answers for the instance, or it went away mid-call.
    #[error("instance {instance:?}: {reason}")]
    Disconnected {
        /// The instance.
        instance: String,
        /// What failed.
        reason: String,
    },
    /// The supervisor refused a request.
    #[error("the supervisor refused: {0}")]
    Refused(String),
    /// The operation was called off (another stage of a pipeline failed).
    #[error("stopped: {0}")]
    Stopped(String),
    /// A topic operation failed.
    #[error("topic {topic}: {source}")]
    Topic {
        /// The topic.
        topic: String,
        /// What failed.
        source: grafos_shm_layout::topic::TopicError,
    },
    /// A consumer's next record in a partition was overwritten before it
    /// read it (the topic overwrites on overflow): `lost` records are gone
    /// and the consumer now reads from `resume`.
    #[error(
        "topic {topic} partition {partition}: lagged, {lost} records overwritten before they were read; resuming at offset {resume}"
    )]
    Lagged {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// Records lost.
        lost: u64,
        /// The offset reading resumes at.
        resume: u64,
    },
    /// An OS error known only by its number (a pipeline stage's own I/O,
    /// say); see [`FabricError::from_io`].
    #[error("I/O error: {}", std::io::Error::from_raw_os_error(*.0))]
    IoError(i32),
}

impl From<std::convert::Infallible> for FabricError {
    fn from(never: std::convert::Infallible) -> FabricError {
        match never {}
    }
}

/// `Result` with [`FabricError`].
pub type Result<T, E = FabricError> = std::result::Result<T, E>;

impl FabricError {
    /// Whether a consumer group refused a commit because the partition
    /// moved to another member ([`TopicError::Fenced`]).
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            FabricError::Topic {
                source: grafos_shm_layout::topic::TopicError::Fenced { .. },
                ..
            }
        )
    }

    /// `IoError` with the error's number (`EIO` if it has none).
    pub fn from_io(error: &std::io::Error) -> FabricError {
        FabricError::IoError(error.raw_os_error().unwrap_or(libc::EIO))
    }

    pub(crate) fn io(
        op: &'static str,
        target: impl Into<String>,
        errno: rustix::io::Errno,
    ) -> FabricError {
        FabricError::Io {
            op,
            target: target.into(),
            source: errno.into(),
        }
    }
}
