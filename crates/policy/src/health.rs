//! Health-check thresholds: an endpoint flips only after enough consecutive results.

/// The verdict of one endpoint's active health check. Starts healthy, so a new endpoint gets
/// traffic at once; `unhealthy_threshold` consecutive failures mark it unhealthy, and
/// `healthy_threshold` consecutive successes mark it healthy again.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    healthy: bool,
    streak: u32,
}

impl HealthTracker {
    /// A healthy tracker. Thresholds below 1 are treated as 1.
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        HealthTracker {
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
            healthy: true,
            streak: 0,
        }
    }

    /// The current verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check result; returns the new verdict when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok {
            self.healthy_threshold
        } else {
            self.unhealthy_threshold
        };
        if self.streak >= needed {
            self.healthy = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_after_thresholds() {
        let mut t = HealthTracker::new(2, 3);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(false));
        assert!(!t.is_healthy());
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(true));
    }

    #[test]
    fn interrupted_streak_restarts() {
        let mut t = HealthTracker::new(2, 2);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(false));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None);
        assert!(!t.is_healthy());
    }
}
