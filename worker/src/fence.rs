//! Fenced generations: every time a structure's contents move (a queue
//! relocated to a fresh segment), its generation goes up by one, and a
//! handle that cached an older one knows to rebind.

use serde::{Deserialize, Serialize};

/// A generation number. Generations only grow; zero means "none yet".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct FenceEpoch(u64);

impl FenceEpoch {
    /// The generation before any publication.
    pub const fn zero() -> FenceEpoch {
        FenceEpoch(0)
    }

    /// A generation from its number.
    pub const fn from_value(value: u64) -> FenceEpoch {
        FenceEpoch(value)
    }

    /// The generation after this one.
    ///
    /// # Panics
    /// At `u64::MAX` (which 2^64 relocations would take).
    pub fn next(self) -> FenceEpoch {
        FenceEpoch(self.0.checked_add(1).expect("generations do not run out"))
    }

    /// Its number.
    pub const fn value(self) -> u64 {
        self.0
    }

    /// Whether `cached` is older than this (current) generation: a handle
    /// holding `cached` must rebind.
    pub fn is_stale(&self, cached: &FenceEpoch) -> bool {
        cached < self
    }
}

impl std::fmt::Display for FenceEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "generation {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_generations_make_cached_ones_stale() {
        let zero = FenceEpoch::zero();
        let one = zero.next();
        let two = one.next();
        assert!(zero < one && one < two);
        assert_eq!(two.value(), 2);
        assert!(two.is_stale(&one), "a cached older generation is stale");
        assert!(!one.is_stale(&one));
        assert!(
            !one.is_stale(&two),
            "a newer cached generation is not stale"
        );
        assert_eq!(FenceEpoch::from_value(2), two);
    }
}
