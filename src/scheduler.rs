//! Which capture runs next: one at a time, and the one closest to the OOM
//! is never lost to an older one.
//!
//! Pure logic, no I/O and no clock: a [`Job`] (a decision, what woke the
//! watcher, and an optional reply handle) enters [`Scheduler::offer`]; an
//! [`Offer`] leaves, saying whether to start it now, that it waits (and which
//! queued job it pushed out), or that it was refused. [`Scheduler::done`]
//! hands back the queued job when the running one ends.
//!
//! One capture runs at a time because two would double what the app pays for
//! its profiles at the worst moment. While one runs, a single slot holds the
//! next: a newer decision replaces a queued one of the same or lower rank
//! (newest wins: it is closer to the OOM), never one of a higher rank. The
//! ranks, low to high: a baseline, a manual request, a near-OOM decision. So
//! a manual request from the network can never push out an automatic
//! capture, and a baseline never pushes out anything.

use crate::trigger::{Decision, Reason};
use crate::watch::Wake;

/// A capture waiting to run, with where its outcome goes.
#[derive(Debug)]
pub struct Job<R> {
    pub decision: Decision,
    pub wake: Wake,
    pub reply: Option<R>,
}

impl<R> Job<R> {
    fn rank(&self) -> u8 {
        rank(&self.decision.reason)
    }
}

/// Baselines yield to people, people yield to the OOM.
fn rank(r: &Reason) -> u8 {
    match r {
        Reason::Baseline => 0,
        Reason::Manual => 1,
        Reason::Threshold(_) | Reason::Imminent => 2,
    }
}

/// What to do with an offered job.
#[derive(Debug)]
pub enum Offer<R> {
    /// Nothing runs: start it now (the scheduler counts it as running).
    Start(Job<R>),
    /// Something runs; it waits in the slot, replacing `replaced` if any.
    Queued { replaced: Option<Job<R>> },
    /// Something runs and the slot holds a job that outranks it.
    Refused { job: Job<R>, queued: Reason },
}

/// The one-running, one-waiting queue.
#[derive(Debug)]
pub struct Scheduler<R> {
    running: bool,
    pending: Option<Job<R>>,
}

impl<R> Default for Scheduler<R> {
    fn default() -> Self {
        Scheduler {
            running: false,
            pending: None,
        }
    }
}

impl<R> Scheduler<R> {
    pub fn offer(&mut self, job: Job<R>) -> Offer<R> {
        if !self.running {
            self.running = true;
            return Offer::Start(job);
        }
        match &self.pending {
            Some(q) if q.rank() > job.rank() => Offer::Refused {
                queued: q.decision.reason,
                job,
            },
            _ => Offer::Queued {
                replaced: self.pending.replace(job),
            },
        }
    }

    /// The running job ended (or never started); returns the queued one,
    /// which now counts as running.
    pub fn done(&mut self) -> Option<Job<R>> {
        self.running = self.pending.is_some();
        self.pending.take()
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Shutdown: the queued job, which will not run.
    pub fn take_pending(&mut self) -> Option<Job<R>> {
        self.pending.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Sample;
    use std::time::Instant;

    fn job(reason: Reason, tag: u32) -> Job<u32> {
        Job {
            decision: Decision {
                reason,
                sample: Sample::synthetic(Instant::now(), 1, 2),
                slope: None,
                predicted_oom_in: None,
            },
            wake: Wake::Poll,
            reply: Some(tag),
        }
    }

    #[test]
    fn the_first_job_starts_and_the_next_waits() {
        let mut s = Scheduler::default();
        assert!(matches!(s.offer(job(Reason::Imminent, 1)), Offer::Start(_)));
        assert!(matches!(
            s.offer(job(Reason::Threshold(80.0), 2)),
            Offer::Queued { replaced: None }
        ));
        let next = s.done().expect("the queued job runs next");
        assert_eq!(next.reply, Some(2));
        assert!(s.is_running());
        assert!(s.done().is_none());
        assert!(!s.is_running());
    }

    #[test]
    fn newest_wins_among_near_oom_decisions() {
        let mut s = Scheduler::default();
        s.offer(job(Reason::Imminent, 1));
        s.offer(job(Reason::Threshold(80.0), 2));
        let Offer::Queued {
            replaced: Some(old),
        } = s.offer(job(Reason::Threshold(90.0), 3))
        else {
            panic!("the 90 % decision should replace the queued 80 % one")
        };
        assert_eq!(old.reply, Some(2));
        assert_eq!(s.done().unwrap().reply, Some(3));
    }

    #[test]
    fn a_manual_request_never_pushes_out_an_automatic_capture() {
        let mut s = Scheduler::default();
        s.offer(job(Reason::Imminent, 1));
        s.offer(job(Reason::Threshold(95.0), 2));
        let Offer::Refused { job: j, queued } = s.offer(job(Reason::Manual, 3)) else {
            panic!("a manual request must not replace a near-OOM decision")
        };
        assert_eq!(j.reply, Some(3));
        assert_eq!(queued, Reason::Threshold(95.0));
        assert_eq!(s.done().unwrap().reply, Some(2));
    }

    #[test]
    fn near_oom_replaces_a_queued_manual_request_and_baselines_yield() {
        let mut s = Scheduler::default();
        s.offer(job(Reason::Baseline, 1));
        s.offer(job(Reason::Manual, 2));
        let Offer::Queued { replaced: Some(m) } = s.offer(job(Reason::Imminent, 3)) else {
            panic!("a near-OOM decision replaces a queued manual one")
        };
        assert_eq!(m.reply, Some(2));
        assert!(matches!(
            s.offer(job(Reason::Baseline, 4)),
            Offer::Refused { .. }
        ));
        assert_eq!(s.take_pending().unwrap().reply, Some(3));
    }
}
