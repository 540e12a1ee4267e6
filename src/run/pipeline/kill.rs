//! The pipeline's side of an OOM kill: counting it, confirming provisional
//! captures, and writing `oom.json` beside the capture [`crate::oom`]
//! attributes it to (off the runtime thread).

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use crate::keys;
use crate::manifest::{self, OomRecord, TriggerSample, SCHEMA};
use crate::memory::Sample;
use crate::oom::{self, Evidence};

use super::Pipeline;

impl Pipeline {
    /// The kernel (or a restart) says the app was killed at `at`.
    pub(super) fn record_oom(&mut self, at: SystemTime, evidence: Evidence, last: Option<Sample>) {
        if matches!(evidence, Evidence::OomKill { .. }) {
            self.shared.oom_kills.fetch_add(1, Ordering::Relaxed);
        }
        // The kill confirms what imminent began.
        self.confirm(evidence.name());
        // A kill while a capture is still being finished may be that
        // capture's: its profiles may well be on disk already.
        if self.running.is_some() {
            self.pending_oom.push((at, evidence, last));
            return;
        }
        self.write_oom(at, evidence, last);
    }

    pub(super) fn write_oom(&mut self, at: SystemTime, evidence: Evidence, last: Option<Sample>) {
        let attribution = self
            .shared
            .captures
            .lock()
            .ok()
            .and_then(|c| oom::attribute(&c, at, evidence, self.last_kill));
        let Some(a) = attribution else {
            if matches!(evidence, Evidence::OomKill { .. }) {
                self.last_kill = Some(at);
                tracing::warn!(
                    evidence = evidence.name(),
                    "the app was OOM-killed, but no capture preceded the kill"
                );
            }
            return;
        };
        self.last_kill = Some(at);
        if let Some(l) = a.lead_seconds.filter(|l| *l >= 0.0) {
            self.shared.metrics.lead_seconds.observe(l);
        }
        let rec = OomRecord {
            schema: SCHEMA,
            capture_id: a.capture_id.clone(),
            detected_at: manifest::timestamp(at),
            evidence: evidence.name().into(),
            oom_kills: match evidence {
                Evidence::OomKill { kills } => Some(kills),
                Evidence::Restart => None,
            },
            lead_seconds: a.lead_seconds,
            chosen: Some(a.chosen.into()),
            last_sample: last.as_ref().map(TriggerSample::from_sample),
        };
        tracing::warn!(
            capture = %a.capture_id,
            key = %a.key,
            evidence = evidence.name(),
            lead_seconds = a.lead_seconds,
            chosen = a.chosen,
            "the app was OOM-killed; {}",
            match a.lead_seconds {
                Some(l) if l >= 0.0 => format!("the capture was durable {l:.3} s before the kill"),
                Some(l) => format!("the capture became durable only {:.3} s after the kill", -l),
                None => "the capture's timing is unknown".into(),
            }
        );
        // Two kills in one second are two records: the sequence keeps them
        // apart within this process, `unique_id` from an earlier one.
        self.oom_seq += 1;
        let seq = self.oom_seq;
        self.shared
            .spool_work("spool oom.json", true, move |spool| {
                let id = spool.unique_id(&format!(
                    "{}_oom{seq}",
                    keys::compact_time(SystemTime::now())
                ));
                let bytes = serde_json::to_vec_pretty(&rec).unwrap_or_default();
                spool.add_single(&id, &a.key, manifest::OOM_FILE, &bytes)
            });
    }
}
