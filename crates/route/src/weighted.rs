//! Weighted choice among a route's targets.

/// A route's weighted targets. Weights are relative; a weight of 0 is never picked.
///
/// If the weights add up to more than `u32::MAX` the sum saturates, and targets past that point
/// are never picked (App Mesh allows at most 10 targets of weight 0–100).
#[derive(Debug, Clone)]
pub struct WeightedTargets<T> {
    /// (target, cumulative weight), only targets with weight > 0.
    entries: Box<[(T, u32)]>,
    /// Every target as configured, including weight 0, for display.
    all: Box<[(T, u32)]>,
    total: u32,
}

impl<T: Clone> WeightedTargets<T> {
    /// Builds the table once: every target is kept for display, and the targets with a weight
    /// above 0 are indexed by cumulative weight for picking.
    pub fn new(targets: Vec<(T, u32)>) -> Self {
        let mut total = 0u32;
        let entries = targets
            .iter()
            .filter(|(_, w)| *w > 0)
            .map(|(t, w)| {
                total = total.saturating_add(*w);
                (t.clone(), total)
            })
            .collect();
        Self {
            entries,
            all: targets.into_boxed_slice(),
            total,
        }
    }
}

impl<T> WeightedTargets<T> {
    /// A target chosen at random in proportion to its weight, using the thread-local `fastrand`
    /// generator (no lock). `None` when every weight is 0 or there is no target.
    pub fn pick(&self) -> Option<&T> {
        if self.total == 0 {
            return None;
        }
        self.pick_with(fastrand::u32(0..self.total))
    }

    /// The target that the random number `r` in `0..total()` selects: target `i` owns the
    /// half-open range of its cumulative weights. Values of `r` at or above `total()` are taken
    /// modulo `total()`. Deterministic, for tests and for callers with their own generator.
    pub fn pick_with(&self, r: u32) -> Option<&T> {
        let r = r.checked_rem(self.total)?;
        let i = self
            .entries
            .partition_point(|(_, cumulative)| *cumulative <= r);
        self.entries.get(i).map(|(t, _)| t)
    }

    /// The sum of all weights (saturating). 0 means nothing can be picked.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Every target with its configured weight (including 0), in configured order.
    pub fn iter_all(&self) -> impl Iterator<Item = (&T, u32)> {
        self.all.iter().map(|(t, w)| (t, *w))
    }

    /// The number of configured targets, including those of weight 0.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether no target is configured at all.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pick_with_boundaries() {
        let w = WeightedTargets::new(vec![("a", 80), ("zero", 0), ("b", 20)]);
        assert_eq!(w.total(), 100);
        assert_eq!(w.len(), 3);
        assert_eq!(w.pick_with(0), Some(&"a"));
        assert_eq!(w.pick_with(79), Some(&"a"));
        assert_eq!(w.pick_with(80), Some(&"b"));
        assert_eq!(w.pick_with(99), Some(&"b"));
        assert_eq!(w.pick_with(100), Some(&"a"));
        assert_eq!(
            w.iter_all().collect::<Vec<_>>(),
            [(&"a", 80), (&"zero", 0), (&"b", 20)]
        );
    }

    #[test]
    fn all_zero_or_empty_picks_nothing() {
        let w = WeightedTargets::new(vec![("a", 0), ("b", 0)]);
        assert_eq!(w.total(), 0);
        assert_eq!(w.pick(), None);
        assert_eq!(w.pick_with(0), None);
        assert_eq!(w.len(), 2);
        let e = WeightedTargets::<u8>::new(Vec::new());
        assert!(e.is_empty());
        assert_eq!(e.pick(), None);
    }

    #[test]
    fn single_target_always_picked() {
        let w = WeightedTargets::new(vec![(7u8, 1)]);
        for _ in 0..100 {
            assert_eq!(w.pick(), Some(&7));
        }
    }

    #[test]
    fn saturating_total() {
        let w = WeightedTargets::new(vec![("a", u32::MAX), ("b", 5)]);
        assert_eq!(w.total(), u32::MAX);
        assert_eq!(w.pick_with(u32::MAX - 1), Some(&"a"));
    }

    #[test]
    fn distribution_80_20_within_one_percent() {
        fastrand::seed(0x5eed);
        let w = WeightedTargets::new(vec![("a", 80), ("b", 20), ("c", 0)]);
        let n = 100_000;
        let mut a = 0u32;
        for _ in 0..n {
            match w.pick() {
                Some(&"a") => a += 1,
                Some(&"b") => {}
                other => panic!("unexpected pick {other:?}"),
            }
        }
        let share = f64::from(a) / f64::from(n);
        assert!((share - 0.8).abs() < 0.01, "share of a = {share}");
    }

    proptest! {
        #[test]
        fn pick_never_returns_zero_weight(
            weights in prop::collection::vec(0u32..5, 0..10),
            r in any::<u32>(),
        ) {
            let targets: Vec<(usize, u32)> = weights.iter().copied().enumerate().collect();
            let w = WeightedTargets::new(targets);
            prop_assert_eq!(w.total(), weights.iter().sum::<u32>());
            match w.pick_with(r) {
                Some(&i) => prop_assert!(weights[i] > 0),
                None => prop_assert_eq!(w.total(), 0),
            }
            if let Some(&i) = w.pick() {
                prop_assert!(weights[i] > 0);
            }
        }

        #[test]
        fn pick_with_covers_each_target_by_its_weight(
            weights in prop::collection::vec(0u32..6, 1..8),
        ) {
            let targets: Vec<(usize, u32)> = weights.iter().copied().enumerate().collect();
            let w = WeightedTargets::new(targets);
            let mut counts = vec![0u32; weights.len()];
            for r in 0..w.total() {
                if let Some(&i) = w.pick_with(r) {
                    counts[i] += 1;
                }
            }
            prop_assert_eq!(counts, weights);
        }
    }
}
