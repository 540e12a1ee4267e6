//! How often: the capture quotas (docs/how-it-works.md, "Admit").
//!
//! A [`Decision`] enters [`Admission::admit`]; `Permitted` or `Dropped`
//! leaves, and every drop is counted by reason. The quota is a `governor`
//! GCRA limiter: a burst of `OOMSNAP_RATE_BURST` captures refilling one every
//! `OOMSNAP_RATE_PERIOD`. Baselines do not spend it. The clock is a type
//! parameter so tests step time by hand.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::trigger::Decision;

/// The verdict on one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Permitted,
    /// Dropped; the quota returns after `retry_in`.
    Dropped {
        retry_in: Duration,
    },
}

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// The quota and its counters.
pub struct Admission<C: Clock = DefaultClock> {
    limiter: Limiter<C>,
    clock: C,
    burst: u32,
    period: Duration,
    remaining: u32,
    /// Drops by (decision reason, cause): `quota`, `paused`, `superseded`,
    /// `shutdown`.
    dropped: BTreeMap<(String, String), u64>,
    permitted: u64,
    last_drop_log: Option<C::Instant>,
    /// Until when the quota is thought spent: exact after a drop (the
    /// limiter says when), an upper bound of one period after the last unit
    /// was taken.
    spent_until: Option<C::Instant>,
    /// The cause a quota drop is counted under.
    cause: &'static str,
}

impl Admission<DefaultClock> {
    pub fn new(burst: u32, period: Duration) -> Self {
        Admission::with_clock(burst, period, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Admission<C> {
    pub fn with_clock(burst: u32, period: Duration, clock: C) -> Self {
        // The configuration bounds the period; the clamp keeps governor's
        // own arithmetic safe whatever a caller passes.
        let period = period.clamp(Duration::from_millis(1), crate::config::MAX_LONG_DURATION);
        let quota = Quota::with_period(period)
            .expect("period above zero")
            .allow_burst(NonZeroU32::new(burst.max(1)).expect("burst above zero"));
        let limiter = RateLimiter::direct_with_clock(quota, clock.clone())
            .with_middleware::<StateInformationMiddleware>();
        Admission {
            limiter,
            clock,
            burst: burst.max(1),
            period,
            remaining: burst.max(1),
            dropped: BTreeMap::new(),
            permitted: 0,
            last_drop_log: None,
            spent_until: None,
            cause: "quota",
        }
    }

    /// The same quota, its drops counted under `cause` instead of `quota`,
    /// so two quotas can share one metric family without clashing labels.
    pub fn counted_as(mut self, cause: &'static str) -> Self {
        self.cause = cause;
        self
    }

    /// Replaces the quota (annotations changed). The new quota starts full:
    /// a change is a deliberate act by the pod's owner.
    pub fn reconfigure(&mut self, burst: u32, period: Duration) {
        if burst == self.burst && period == self.period {
            return;
        }
        let dropped = std::mem::take(&mut self.dropped);
        let permitted = self.permitted;
        let cause = self.cause;
        *self = Admission::with_clock(burst, period, self.clock.clone()).counted_as(cause);
        self.dropped = dropped;
        self.permitted = permitted;
    }

    /// Admits or drops one decision.
    pub fn admit(&mut self, d: &Decision) -> Verdict {
        if !d.reason.spends_quota() {
            self.permitted += 1;
            return Verdict::Permitted;
        }
        match self.take() {
            Ok(()) => Verdict::Permitted,
            Err(retry_in) => {
                *self
                    .dropped
                    .entry((d.reason.label(), self.cause.into()))
                    .or_default() += 1;
                Verdict::Dropped { retry_in }
            }
        }
    }

    /// Spends one unit of the quota outside a decision (a provisional
    /// capture that was confirmed). False when none was left: the caller
    /// drops the capture and counts the drop.
    pub fn charge(&mut self) -> bool {
        self.take().is_ok()
    }

    fn take(&mut self) -> Result<(), Duration> {
        let now = self.clock.now();
        match self.limiter.check() {
            Ok(snapshot) => {
                self.remaining = snapshot.remaining_burst_capacity();
                self.permitted += 1;
                self.spent_until = (self.remaining == 0).then(|| now + self.period.into());
                Ok(())
            }
            Err(not_until) => {
                self.remaining = 0;
                let retry_in = not_until.wait_time_from(now);
                self.spent_until = Some(now + retry_in.into());
                Err(retry_in)
            }
        }
    }

    /// Whether the quota is probably spent now, without spending any: true
    /// from the moment the last unit is taken until at most one period
    /// later. Used to skip work whose only use would need a unit.
    pub fn likely_spent(&self) -> bool {
        self.spent_until.is_some_and(|t| self.clock.now() < t)
    }

    /// Counts a decision dropped for another cause (captures paused, a
    /// newer decision superseded it, shutdown), so every decision is
    /// accounted for.
    pub fn count_drop(&mut self, reason: &str, cause: &str) {
        *self
            .dropped
            .entry((reason.to_string(), cause.to_string()))
            .or_default() += 1;
    }

    /// True at most once per period, so drops are logged without flooding.
    pub fn should_log_drop(&mut self) -> bool {
        let now = self.clock.now();
        let due = match self.last_drop_log {
            None => true,
            Some(t) => {
                let elapsed: Duration = now.duration_since(t).into();
                elapsed >= self.period
            }
        };
        if due {
            self.last_drop_log = Some(now);
        }
        due
    }

    /// Captures left in the burst as of the last decision.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    pub fn dropped(&self) -> &BTreeMap<(String, String), u64> {
        &self.dropped
    }

    /// Drops per cause, summed over reasons.
    pub fn dropped_by_cause(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for ((_, cause), n) in &self.dropped {
            *m.entry(cause.clone()).or_default() += n;
        }
        m
    }

    pub fn permitted(&self) -> u64 {
        self.permitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Sample;
    use crate::trigger::Reason;
    use governor::clock::FakeRelativeClock;
    use std::time::Instant;

    fn decision(reason: Reason) -> Decision {
        Decision {
            reason,
            sample: Sample::synthetic(Instant::now(), 1, 2),
            slope: None,
            predicted_oom_in: None,
        }
    }

    #[test]
    fn quota_exhausts_and_refills() {
        let clock = FakeRelativeClock::default();
        let mut a = Admission::with_clock(3, Duration::from_secs(600), clock.clone());
        let d = decision(Reason::Threshold(80.0));
        for _ in 0..3 {
            assert_eq!(a.admit(&d), Verdict::Permitted);
        }
        let Verdict::Dropped { retry_in } = a.admit(&d) else {
            panic!("fourth capture should be dropped")
        };
        assert!(retry_in <= Duration::from_secs(600) && retry_in > Duration::from_secs(590));
        assert_eq!(
            a.dropped()
                .get(&("threshold-80".to_string(), "quota".to_string())),
            Some(&1)
        );
        assert_eq!(a.dropped_by_cause().get("quota"), Some(&1));
        assert_eq!(a.remaining(), 0);

        clock.advance(Duration::from_secs(600));
        assert_eq!(a.admit(&d), Verdict::Permitted);
        assert!(matches!(a.admit(&d), Verdict::Dropped { .. }));
        clock.advance(Duration::from_secs(3 * 600));
        for _ in 0..3 {
            assert_eq!(a.admit(&d), Verdict::Permitted);
        }
    }

    #[test]
    fn likely_spent_follows_the_last_unit() {
        let clock = FakeRelativeClock::default();
        let mut a = Admission::with_clock(2, Duration::from_secs(60), clock.clone())
            .counted_as("speculative_quota");
        assert!(!a.likely_spent());
        assert!(a.charge());
        assert!(!a.likely_spent());
        assert!(a.charge());
        assert!(a.likely_spent());
        clock.advance(Duration::from_secs(61));
        assert!(!a.likely_spent());
        assert!(a.charge());
        assert!(matches!(
            a.admit(&decision(Reason::Imminent)),
            Verdict::Dropped { .. }
        ));
        assert!(a.likely_spent());
        assert_eq!(a.dropped_by_cause().get("speculative_quota"), Some(&1));
    }

    #[test]
    fn baselines_do_not_spend_the_quota() {
        let mut a = Admission::with_clock(1, Duration::from_secs(60), FakeRelativeClock::default());
        for _ in 0..10 {
            assert_eq!(a.admit(&decision(Reason::Baseline)), Verdict::Permitted);
        }
        assert_eq!(a.admit(&decision(Reason::Manual)), Verdict::Permitted);
        assert!(matches!(
            a.admit(&decision(Reason::Imminent)),
            Verdict::Dropped { .. }
        ));
    }

    #[test]
    fn drop_logs_once_per_period() {
        let clock = FakeRelativeClock::default();
        let mut a = Admission::with_clock(1, Duration::from_secs(60), clock.clone());
        assert!(a.should_log_drop());
        assert!(!a.should_log_drop());
        clock.advance(Duration::from_secs(60));
        assert!(a.should_log_drop());
    }
}
