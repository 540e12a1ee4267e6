//! How often the watcher looks, and how closely: pure logic, no I/O.
//!
//! The watcher wakes on a timer (and, on v1, on the kernel's thresholds).
//! Each timer tick first reads only the usage file, the *sentinel*
//! (`memory.current` on v2, `memory.usage_in_bytes` on v1): one `pread` of a
//! number the kernel keeps ready. The *full sample* (usage, limit,
//! `memory.stat` and the OOM counter) costs the kernel about ten times more
//! to generate (`memory.stat` walks every statistic), so it is taken only
//! when it can matter: when the usage moved by [`MOVE_FRACTION`] of the
//! limit since the last full sample, on a kernel wake-up, and at least every
//! [`FULL_EVERY`] for `/status`.
//!
//! Not every full sample is news for the trigger. Its slope is a fit over
//! the last second of samples, and one flat sample taken (for `/status`)
//! just before a leak starts pulls the fitted slope of the leak down to a
//! fraction of the real one, so "imminent" fires tens of points later. The
//! trigger is therefore fed a full sample only when the working set moved by
//! a step since the last one it saw, when the sample is past the next rung,
//! or at least every [`OBSERVE_EVERY`] (for baselines).
//!
//! [`Pace`] keeps the last full sample's usage and time; [`poll_interval`]
//! picks the next timeout from the distance to the next rung and the slope,
//! and [`Pace::interval`] overrides it with the fastest interval while the
//! usage is rising in steps: a leak that jumped one step between two idle
//! ticks gets its next samples at once, so the trigger has a slope within a
//! few milliseconds.

use std::time::{Duration, Instant};

/// A full sample is taken at least this often, whatever the sentinel says.
pub(crate) const FULL_EVERY: Duration = Duration::from_millis(500);

/// The usage must move by this fraction of the limit since the last full
/// sample before a tick takes another (0.5 %: 1.3 MiB of a 256 MiB limit).
pub(crate) const MOVE_FRACTION: f64 = 0.005;

/// The trigger sees a sample at least this often, moved or not (its
/// baseline timer runs on samples).
pub(crate) const OBSERVE_EVERY: Duration = Duration::from_secs(10);

/// The step without a limit, when only samples for `/status` are wanted.
const MOVE_WITHOUT_LIMIT: u64 = 1 << 20;

/// Bytes of usage that count as a move.
fn step(limit: Option<u64>) -> u64 {
    match limit {
        Some(l) if l > 0 => ((l as f64 * MOVE_FRACTION) as u64).max(1),
        _ => MOVE_WITHOUT_LIMIT,
    }
}

/// The sentinel's memory of the last full sample.
#[derive(Debug, Clone, Default)]
pub struct Pace {
    last_full: Option<(Instant, u64)>,
    limit: Option<u64>,
    /// The last full sample was a step above the one before it.
    rising: bool,
    /// The last sample the trigger saw: time and working set.
    last_observed: Option<(Instant, u64)>,
}

impl Pace {
    /// Forgets everything: the next tick takes a full sample.
    pub fn reset(&mut self) {
        *self = Pace::default();
    }

    /// After a sentinel read of `usage` at `at`: is a full sample due?
    pub fn needs_full(&self, at: Instant, usage: u64) -> bool {
        match self.last_full {
            None => true,
            Some((t, u)) => {
                at.saturating_duration_since(t) >= FULL_EVERY
                    || usage.abs_diff(u) >= step(self.limit)
            }
        }
    }

    /// Notes a full sample.
    pub fn took_full(&mut self, at: Instant, usage: u64, limit: Option<u64>) {
        self.rising = self
            .last_full
            .is_some_and(|(_, u)| usage >= u.saturating_add(step(limit)));
        self.last_full = Some((at, usage));
        self.limit = limit;
    }

    /// Whether the trigger should see this full sample: the working set
    /// moved a step since the last one it saw, the sample is past the next
    /// rung (`crossing`), or it has seen nothing for [`OBSERVE_EVERY`].
    pub fn worth_observing(&self, s: &crate::memory::Sample, crossing: bool) -> bool {
        match self.last_observed {
            None => true,
            Some((t, ws)) => {
                crossing
                    || s.working_set.abs_diff(ws) >= step(s.limit)
                    || s.at.saturating_duration_since(t) >= OBSERVE_EVERY
            }
        }
    }

    /// Notes that the trigger saw `s`.
    pub fn observed(&mut self, s: &crate::memory::Sample) {
        self.last_observed = Some((s.at, s.working_set));
    }

    /// The next timeout: the fastest while the usage climbs in steps,
    /// otherwise [`poll_interval`].
    pub fn interval(
        &self,
        percent: f64,
        next_rung: Option<f64>,
        slope_percent_per_s: Option<f64>,
        min: Duration,
        max: Duration,
    ) -> Duration {
        if self.rising {
            min
        } else {
            poll_interval(percent, next_rung, slope_percent_per_s, min, max)
        }
    }
}

/// The poll interval: `max` far below the next rung, `min` close to it, and
/// never longer than a tenth of the time the slope needs to reach it.
pub fn poll_interval(
    percent: f64,
    next_rung: Option<f64>,
    slope_percent_per_s: Option<f64>,
    min: Duration,
    max: Duration,
) -> Duration {
    let target = next_rung.unwrap_or(100.0);
    let distance = (target - percent).max(0.0);
    // Geometric between 5 points (min) and 40 points (max) of distance.
    let by_distance = if distance <= 5.0 {
        min
    } else if distance >= 40.0 {
        max
    } else {
        let f = (distance - 5.0) / 35.0;
        let lo = min.as_secs_f64().ln();
        let hi = max.as_secs_f64().ln();
        Duration::from_secs_f64((lo + f * (hi - lo)).exp())
    };
    let by_slope = match slope_percent_per_s {
        Some(k) if k > 0.0 => Duration::from_secs_f64((distance / k / 10.0).min(3600.0)),
        _ => max,
    };
    by_distance.min(by_slope).clamp(min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(2);
    const MAX: Duration = Duration::from_millis(500);
    const LIMIT: u64 = 256 << 20;

    #[test]
    fn polls_slowly_far_away_and_fast_near_a_rung() {
        assert_eq!(poll_interval(10.0, Some(80.0), None, MIN, MAX), MAX);
        assert_eq!(poll_interval(77.0, Some(80.0), None, MIN, MAX), MIN);
        let mid = poll_interval(55.0, Some(80.0), None, MIN, MAX);
        assert!(mid > MIN && mid < MAX, "{mid:?}");
    }

    #[test]
    fn a_steep_slope_shortens_the_interval() {
        // 50 points away at 137 %/s: a rung in ~365 ms, so poll every ~36 ms.
        let d = poll_interval(30.0, Some(80.0), Some(137.0), MIN, MAX);
        assert!(
            d < Duration::from_millis(40) && d > Duration::from_millis(30),
            "{d:?}"
        );
    }

    #[test]
    fn spent_ladder_polls_against_the_limit() {
        assert_eq!(poll_interval(97.0, None, None, MIN, MAX), MIN);
    }

    #[test]
    fn the_first_tick_and_a_stale_sample_need_a_full_read() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        assert!(p.needs_full(t0, 0));
        p.took_full(t0, 100 << 20, Some(LIMIT));
        assert!(!p.needs_full(t0 + Duration::from_millis(20), 100 << 20));
        assert!(p.needs_full(t0 + FULL_EVERY, 100 << 20));
        p.reset();
        assert!(p.needs_full(t0, 100 << 20));
    }

    #[test]
    fn a_move_of_half_a_percent_either_way_needs_a_full_read() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        let base = 100u64 << 20;
        p.took_full(t0, base, Some(LIMIT));
        let s = LIMIT / 200;
        let t = t0 + Duration::from_millis(20);
        assert!(!p.needs_full(t, base + s - 1));
        assert!(p.needs_full(t, base + s));
        assert!(p.needs_full(t, base - s));
    }

    #[test]
    fn only_samples_with_news_reach_the_trigger() {
        use crate::memory::Sample;
        let t0 = Instant::now();
        let mut p = Pace::default();
        let at = |ms: u64, pct: f64| {
            Sample::synthetic(
                t0 + Duration::from_millis(ms),
                (LIMIT as f64 * pct / 100.0) as u64,
                LIMIT,
            )
        };
        assert!(p.worth_observing(&at(0, 10.0), false));
        p.observed(&at(0, 10.0));
        // Flat: not news, until the refresh for baselines is due.
        assert!(!p.worth_observing(&at(500, 10.2), false));
        assert!(p.worth_observing(&at(500, 10.2), true), "past a rung");
        assert!(p.worth_observing(&at(500, 11.0), false), "moved");
        assert!(p.worth_observing(&at(500, 9.0), false), "fell");
        assert!(p.worth_observing(&at(10_000, 10.0), false), "refresh");
    }

    #[test]
    fn a_step_up_polls_at_the_fastest_until_the_climb_stops() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        p.took_full(t0, 20 << 20, Some(LIMIT));
        // Far below the rung with no slope yet: the slowest interval.
        assert_eq!(p.interval(8.0, Some(80.0), None, MIN, MAX), MAX);
        // A leak jumped 16 points between two ticks.
        p.took_full(t0 + Duration::from_millis(20), 61 << 20, Some(LIMIT));
        assert_eq!(p.interval(24.0, Some(80.0), None, MIN, MAX), MIN);
        // It stopped: back to the schedule.
        p.took_full(t0 + Duration::from_millis(520), 61 << 20, Some(LIMIT));
        assert_eq!(p.interval(24.0, Some(80.0), None, MIN, MAX), MAX);
        // Falling is not rising.
        p.took_full(t0 + Duration::from_millis(540), 20 << 20, Some(LIMIT));
        assert_eq!(p.interval(8.0, Some(80.0), None, MIN, MAX), MAX);
    }
}
