//! Weighted choice among a route's targets.

/// A route's weighted targets. Weights are relative; a weight of 0 is never picked.
#[derive(Debug, Clone)]
pub struct WeightedTargets<T> {
    /// (target, cumulative weight), only targets with weight > 0.
    entries: Box<[(T, u32)]>,
    /// Every target as configured, including weight 0, for display.
    all: Box<[(T, u32)]>,
    total: u32,
}
