//! Crash-point injection (test builds): named places inside the
//! algorithms where a test can kill or stop the process, to hit windows
//! that random kills rarely reach.
//!
//! With the `crash-points` feature, each [`point`] calls the hook a test
//! program installed with [`set_hook`] (none by default); without it,
//! [`point`] compiles to nothing.

/// A window inside an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrashPoint {
    /// A producer claimed its slot by CAS and has not advanced `tail`.
    AfterSlotClaim,
    /// A producer advanced `tail` (or was helped) and has not published.
    AfterTailAdvance,
    /// A consumer claimed a record for reading and has not advanced `head`.
    AfterReadClaim,
    /// A consumer has copied half of a record out.
    MidCopy,
    /// A map writer holds a fresh USED block that nothing links to yet.
    MapAfterAlloc,
    /// A map writer has written half of an entry's value.
    MapMidWrite,
    /// A map writer has linked its entry and not retired what it replaced.
    MapAfterLink,
    /// A map writer has unlinked an entry and not retired it.
    MapAfterUnlink,
    /// A map writer has taken a block off limbo and not freed it.
    MapMidCollect,
    /// A map reader is pinned and about to walk a chain.
    MapReaderPinned,
    /// A map reader holds a reference to an entry and has not read it.
    MapReaderAtEntry,
    /// A topic producer claimed its slot and has not advanced `tail`.
    TopicAfterClaim,
    /// A topic producer has written half of a record.
    TopicMidWrite,
}

impl CrashPoint {
    /// Every crash point.
    pub const ALL: [CrashPoint; 13] = [
        CrashPoint::AfterSlotClaim,
        CrashPoint::AfterTailAdvance,
        CrashPoint::AfterReadClaim,
        CrashPoint::MidCopy,
        CrashPoint::MapAfterAlloc,
        CrashPoint::MapMidWrite,
        CrashPoint::MapAfterLink,
        CrashPoint::MapAfterUnlink,
        CrashPoint::MapMidCollect,
        CrashPoint::MapReaderPinned,
        CrashPoint::MapReaderAtEntry,
        CrashPoint::TopicAfterClaim,
        CrashPoint::TopicMidWrite,
    ];

    /// The point's name, as tests spell it on command lines.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::AfterSlotClaim => "after-slot-claim",
            CrashPoint::AfterTailAdvance => "after-tail-advance",
            CrashPoint::AfterReadClaim => "after-read-claim",
            CrashPoint::MidCopy => "mid-copy",
            CrashPoint::MapAfterAlloc => "map-after-alloc",
            CrashPoint::MapMidWrite => "map-mid-write",
            CrashPoint::MapAfterLink => "map-after-link",
            CrashPoint::MapAfterUnlink => "map-after-unlink",
            CrashPoint::MapMidCollect => "map-mid-collect",
            CrashPoint::MapReaderPinned => "map-reader-pinned",
            CrashPoint::MapReaderAtEntry => "map-reader-at-entry",
            CrashPoint::TopicAfterClaim => "topic-after-claim",
            CrashPoint::TopicMidWrite => "topic-mid-write",
        }
    }

    /// The point named `name`.
    pub fn from_name(name: &str) -> Option<CrashPoint> {
        CrashPoint::ALL.into_iter().find(|p| p.name() == name)
    }
}

#[cfg(feature = "crash-points")]
static HOOK: std::sync::OnceLock<fn(CrashPoint)> = std::sync::OnceLock::new();

/// Installs the process's crash hook (once; later calls are ignored).
#[cfg(feature = "crash-points")]
pub fn set_hook(hook: fn(CrashPoint)) {
    let _ = HOOK.set(hook);
}

/// Reached a crash point: calls the hook, if any.
#[cfg(feature = "crash-points")]
#[inline]
pub fn point(at: CrashPoint) {
    if let Some(hook) = HOOK.get() {
        hook(at);
    }
}

/// Reached a crash point (nothing happens without `crash-points`).
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn point(_at: CrashPoint) {}
