//! Counters and histograms of one process, rendered in Prometheus' text format by
//! `GET /metrics`. Plain atomics: no registry crate, nothing allocated per observation.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add((seconds * 1_000_000.0) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1_000_000.0;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[derive(Default)]
pub struct Metrics {
    /// Log events this process has seen committed since it started, by stream type.
    pub events_seen: Mutex<BTreeMap<String, u64>>,
    pub jobs_published: AtomicU64,
    pub jobs_republished: AtomicU64,
    /// Calls flow control held back (concurrency) or whose run starts later (throttle).
    pub calls_held: AtomicU64,
    pub jobs_delivered: AtomicU64,
    pub jobs_redelivered: AtomicU64,
    pub jobs_acked: AtomicU64,
    pub jobs_stale: AtomicU64,
    pub calls: AtomicU64,
    /// The scheduler's position in the log (0 when this process is not the scheduler).
    pub scheduler_position: AtomicU64,
    /// From a call's start to the app's answer.
    pub call_seconds: Histogram,
    /// From a run's creation to its end.
    pub run_seconds: Histogram,
}

impl Metrics {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn saw_event(&self, stream_type: &str) {
        if let Ok(mut seen) = self.events_seen.lock() {
            *seen.entry(stream_type.to_owned()).or_default() += 1;
        }
    }

    /// Renders the engine's metrics; `gauges` adds per-call values the caller knows
    /// (queue depth, log head, projection lag).
    pub fn render(&self, out: &mut String) {
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {value}");
        };
        let _ = writeln!(
            out,
            "# HELP flowforge_events_total Log events this process saw committed since it started."
        );
        let _ = writeln!(out, "# TYPE flowforge_events_total counter");
        if let Ok(seen) = self.events_seen.lock() {
            for (stream_type, n) in seen.iter() {
                let _ = writeln!(
                    out,
                    "flowforge_events_total{{stream_type=\"{stream_type}\"}} {n}"
                );
            }
        }
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            out,
            "flowforge_jobs_published_total",
            "Jobs this process queued.",
            load(&self.jobs_published),
        );
        counter(
            out,
            "flowforge_calls_held_total",
            "Calls flow control held back: a concurrency limit was full, or a throttle delayed the run's start.",
            load(&self.calls_held),
        );
        counter(
            out,
            "flowforge_jobs_republished_total",
            "Jobs queued again because their run made no progress within the job lease.",
            load(&self.jobs_republished),
        );
        counter(
            out,
            "flowforge_jobs_delivered_total",
            "Jobs delivered to this process's executors.",
            load(&self.jobs_delivered),
        );
        counter(
            out,
            "flowforge_jobs_redelivered_total",
            "Deliveries of a job delivered before.",
            load(&self.jobs_redelivered),
        );
        counter(
            out,
            "flowforge_jobs_acked_total",
            "Jobs acknowledged after their outcome was committed.",
            load(&self.jobs_acked),
        );
        counter(
            out,
            "flowforge_jobs_stale_total",
            "Jobs found stale (their run had moved on) and dropped.",
            load(&self.jobs_stale),
        );
        counter(
            out,
            "flowforge_calls_total",
            "Calls made to apps.",
            load(&self.calls),
        );
        let _ = writeln!(
            out,
            "# HELP flowforge_scheduler_position Log position the scheduler has processed (0 unless this process runs it)."
        );
        let _ = writeln!(out, "# TYPE flowforge_scheduler_position gauge");
        let _ = writeln!(
            out,
            "flowforge_scheduler_position {}",
            load(&self.scheduler_position)
        );
        self.call_seconds.render(
            out,
            "flowforge_call_duration_seconds",
            "Time from a call to an app to its answer.",
        );
        self.run_seconds.render(
            out,
            "flowforge_run_duration_seconds",
            "Time from a run's creation to its end.",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_count_everything() {
        let h = Histogram::default();
        h.observe(0.0005);
        h.observe(0.003);
        h.observe(120.0);
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"60\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }
}
