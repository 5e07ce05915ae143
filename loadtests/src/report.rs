//! Measurements and what is made of them: the [`Recorder`] that every finished operation
//! reports to (HdrHistograms per operation and overall, outcome and error counts, one
//! sample per second), and the [`Report`] built from it at the end, printed for a person
//! and written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::workload::OperationKind;

/// The longest latency the histograms hold exactly; anything longer is recorded as this.
/// An hour is far beyond every request timeout and retry budget the tester allows.
pub const LATENCY_MAX_MICROSECONDS: u64 = 3_600_000_000;

/// Significant decimal digits the histograms keep: 0.1 % relative error, the usual
/// choice for latency, at a few hundred kilobytes per histogram.
const HISTOGRAM_PRECISION_DIGITS: u8 = 3;

/// The shortest last sample a timeline keeps (see [`Recorder::tick_final`]).
pub const FINAL_SAMPLE_SECONDS_MIN: f64 = 0.5;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_MICROSECONDS, HISTOGRAM_PRECISION_DIGITS)
        .expect("static histogram bounds are valid")
}

/// How one operation ended, as the report counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutcomeClass {
    /// 2xx: applied (a write) or answered (a read).
    Completed,
    /// 422 with a recorded transaction: the ledger refused the movement (a correct
    /// answer, e.g. `insufficient_funds`).
    Refused(String),
    /// Any other error answer, by problem `code` (or `http_NNN` without one).
    Failed(String),
    /// No answer: a transport error, or retries ran out. For a write the outcome is not
    /// known to the client.
    Unknown(String),
}

/// One finished operation as the runner hands it to the recorder.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub class: OutcomeClass,
    /// Every failed attempt along the way (retried or final), by code: `unavailable`,
    /// `rate_limited`, `transport_connect`…
    pub attempt_errors: Vec<String>,
    /// What the steps of an operation made of several did, with how many times:
    /// `hold_placed`, `hold_posted`, `batch_legs_applied` (by the legs)… Empty for
    /// single-request operations.
    pub steps: Vec<(Step, u64)>,
}

/// A step of a hold or a batch that the server answered with 2xx (or refused, for a
/// batch's legs), counted in the report next to the operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    HoldPlaced,
    HoldPosted,
    HoldPostedInPart,
    HoldVoided,
    BatchLegsApplied,
    BatchLegsRefused,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::HoldPlaced => "hold_placed",
            Step::HoldPosted => "hold_posted",
            Step::HoldPostedInPart => "hold_posted_in_part",
            Step::HoldVoided => "hold_voided",
            Step::BatchLegsApplied => "batch_legs_applied",
            Step::BatchLegsRefused => "batch_legs_refused",
        }
    }
}

impl Outcome {
    pub fn completed() -> Outcome {
        Outcome {
            class: OutcomeClass::Completed,
            attempt_errors: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// Whether the operation counts as an error in the live progress line.
    pub fn is_error(&self) -> bool {
        matches!(self.class, OutcomeClass::Failed(_) | OutcomeClass::Unknown(_))
    }

    fn key(&self) -> String {
        match &self.class {
            OutcomeClass::Completed => "completed".into(),
            OutcomeClass::Refused(code) => format!("refused:{code}"),
            OutcomeClass::Failed(code) => format!("failed:{code}"),
            OutcomeClass::Unknown(code) => format!("unknown:{code}"),
        }
    }
}

/// One second of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecondSample {
    /// Seconds since the start at the end of this sample.
    pub elapsed_seconds: f64,
    /// Operations finished in this second, per second.
    pub operations_per_second: f64,
    pub errors: u64,
    /// `None` when nothing finished in this second.
    pub p99_ms: Option<f64>,
    pub p50_ms: Option<f64>,
}

/// Something that happened to the system under test during the run (a kill, a database
/// restart), drawn on the plot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub elapsed_seconds: f64,
    pub what: String,
}

#[derive(Debug)]
struct RecorderState {
    overall: Histogram<u64>,
    per_kind: BTreeMap<OperationKind, Histogram<u64>>,
    interval: Histogram<u64>,
    interval_errors: u64,
    interval_started_seconds: f64,
    outcomes: BTreeMap<String, u64>,
    attempt_errors: BTreeMap<String, u64>,
    steps: BTreeMap<String, u64>,
    accepted_writes: u64,
    timeline: Vec<SecondSample>,
    events: Vec<Event>,
}

/// Where every finished operation is counted. Shared by all workers behind one mutex:
/// recording is a few hundred nanoseconds, far below a request's cost.
#[derive(Debug)]
pub struct Recorder {
    state: Mutex<RecorderState>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            state: Mutex::new(RecorderState {
                overall: histogram(),
                per_kind: BTreeMap::new(),
                interval: histogram(),
                interval_errors: 0,
                interval_started_seconds: 0.0,
                outcomes: BTreeMap::new(),
                attempt_errors: BTreeMap::new(),
                steps: BTreeMap::new(),
                accepted_writes: 0,
                timeline: Vec::new(),
                events: Vec::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RecorderState> {
        // A panic while recording leaves plain counters behind: still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn record(&self, kind: OperationKind, latency: Duration, outcome: &Outcome) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        let mut state = self.state();
        state.overall.saturating_record(micros);
        state
            .per_kind
            .entry(kind)
            .or_insert_with(histogram)
            .saturating_record(micros);
        state.interval.saturating_record(micros);
        if outcome.is_error() {
            state.interval_errors += 1;
        }
        if kind.is_write() && outcome.class == OutcomeClass::Completed {
            state.accepted_writes += 1;
        }
        *state.outcomes.entry(outcome.key()).or_insert(0) += 1;
        for error in &outcome.attempt_errors {
            *state.attempt_errors.entry(error.clone()).or_insert(0) += 1;
        }
        for (step, count) in &outcome.steps {
            *state.steps.entry(step.as_str().to_string()).or_insert(0) += count;
        }
    }

    pub fn event(&self, elapsed: Duration, what: impl Into<String>) {
        self.state().events.push(Event {
            elapsed_seconds: elapsed.as_secs_f64(),
            what: what.into(),
        });
    }

    /// Close the current interval at `elapsed` since the start and return its sample.
    pub fn tick(&self, elapsed: Duration) -> SecondSample {
        let mut state = self.state();
        let now = elapsed.as_secs_f64();
        let span = (now - state.interval_started_seconds).max(1e-6);
        let count = state.interval.len();
        let sample = SecondSample {
            elapsed_seconds: now,
            operations_per_second: count as f64 / span,
            errors: state.interval_errors,
            p99_ms: (count > 0).then(|| milliseconds(state.interval.value_at_quantile(0.99))),
            p50_ms: (count > 0).then(|| milliseconds(state.interval.value_at_quantile(0.50))),
        };
        state.interval.reset();
        state.interval_errors = 0;
        state.interval_started_seconds = now;
        state.timeline.push(sample.clone());
        sample
    }

    /// Close the last interval of a run at `elapsed`. A sliver shorter than
    /// [`FINAL_SAMPLE_SECONDS_MIN`] would show a wildly wrong rate (a few operations
    /// over a few milliseconds), so it is left out of the timeline; its operations still
    /// count in the totals.
    pub fn tick_final(&self, elapsed: Duration) -> Option<SecondSample> {
        let span = elapsed.as_secs_f64() - self.state().interval_started_seconds;
        if span < FINAL_SAMPLE_SECONDS_MIN {
            let mut state = self.state();
            state.interval.reset();
            state.interval_errors = 0;
            state.interval_started_seconds = elapsed.as_secs_f64();
            return None;
        }
        Some(self.tick(elapsed))
    }

    pub fn accepted_writes(&self) -> u64 {
        self.state().accepted_writes
    }

    /// Everything measured, summarized over `elapsed`.
    pub fn summarize(&self, elapsed: Duration) -> Measurements {
        let state = self.state();
        Measurements {
            duration_seconds: elapsed.as_secs_f64(),
            overall: LatencySummary::from_histogram(&state.overall, elapsed),
            per_operation: state
                .per_kind
                .iter()
                .map(|(kind, histogram)| {
                    (
                        kind.as_str().to_string(),
                        LatencySummary::from_histogram(histogram, elapsed),
                    )
                })
                .collect(),
            outcomes: state.outcomes.clone(),
            attempt_errors: state.attempt_errors.clone(),
            steps: state.steps.clone(),
            accepted_writes: state.accepted_writes,
            timeline: state.timeline.clone(),
            events: state.events.clone(),
        }
    }
}

fn milliseconds(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Throughput and latency percentiles of one histogram.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub per_second: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn from_histogram(histogram: &Histogram<u64>, elapsed: Duration) -> LatencySummary {
        let count = histogram.len();
        let seconds = elapsed.as_secs_f64();
        let quantile = |q: f64| {
            if count == 0 {
                0.0
            } else {
                milliseconds(histogram.value_at_quantile(q))
            }
        };
        LatencySummary {
            count,
            per_second: if seconds > 0.0 { count as f64 / seconds } else { 0.0 },
            mean_ms: if count == 0 { 0.0 } else { histogram.mean() / 1000.0 },
            p50_ms: quantile(0.50),
            p90_ms: quantile(0.90),
            p99_ms: quantile(0.99),
            p999_ms: quantile(0.999),
            max_ms: if count == 0 { 0.0 } else { milliseconds(histogram.max()) },
        }
    }
}

/// What the recorder measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurements {
    pub duration_seconds: f64,
    pub overall: LatencySummary,
    pub per_operation: BTreeMap<String, LatencySummary>,
    /// Final outcome of every operation: `completed`, `refused:CODE`, `failed:CODE`,
    /// `unknown:REASON`.
    pub outcomes: BTreeMap<String, u64>,
    /// Every failed attempt, retried or not, by code.
    pub attempt_errors: BTreeMap<String, u64>,
    /// Steps of holds and batches (see [`Step`]), by name.
    #[serde(default)]
    pub steps: BTreeMap<String, u64>,
    /// Writes answered 2xx.
    pub accepted_writes: u64,
    pub timeline: Vec<SecondSample>,
    pub events: Vec<Event>,
}

/// What the server said about durability at the end of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerNotes {
    /// `strict` or `relaxed`, from `/readyz`.
    pub durability: Option<String>,
    /// `tally_persister_queue_depth` right after the load stopped: accepted, not yet
    /// durable.
    pub queue_depth_at_end: Option<f64>,
    /// `tally_persister_batch_size_sum`: writes made durable since the server started.
    pub writes_durable: Option<f64>,
    /// `tally_persister_batch_size_count`: group commits since the server started.
    pub batches: Option<f64>,
}

/// The whole result of one run, as written to `result.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub run_id: String,
    pub command: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub target: String,
    /// `closed (concurrency 64)` or `open (2000/s, at most 512 in flight)`.
    pub pacing: String,
    pub shape: String,
    pub accounts: usize,
    pub idempotency_keys: bool,
    pub measurements: Measurements,
    pub server: ServerNotes,
    /// Filled in once verification ran.
    pub verification: Option<crate::verify::Verification>,
}

impl Report {
    /// The report for a person.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let measurements = &self.measurements;
        let _ = writeln!(text, "\n== run {} ({})", self.run_id, self.target);
        let _ = writeln!(
            text,
            "{} for {:.1} s, shape {}, {} accounts, idempotency keys {}",
            self.pacing,
            measurements.duration_seconds,
            self.shape,
            self.accounts,
            if self.idempotency_keys { "on" } else { "off" }
        );
        let _ = writeln!(
            text,
            "\n{:<10} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "operation", "count", "per second", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        let mut rows: Vec<(&str, &LatencySummary)> = measurements
            .per_operation
            .iter()
            .map(|(name, summary)| (name.as_str(), summary))
            .collect();
        rows.push(("all", &measurements.overall));
        for (name, summary) in rows {
            let _ = writeln!(
                text,
                "{:<10} {:>9} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                name,
                summary.count,
                summary.per_second,
                summary.p50_ms,
                summary.p90_ms,
                summary.p99_ms,
                summary.p999_ms,
                summary.max_ms
            );
        }
        let _ = writeln!(text, "\noutcomes:");
        for (outcome, count) in &measurements.outcomes {
            let _ = writeln!(text, "  {outcome:<36} {count:>9}");
        }
        if !measurements.attempt_errors.is_empty() {
            let _ = writeln!(
                text,
                "error answers and transport errors, every attempt (retried ones too):"
            );
            for (code, count) in &measurements.attempt_errors {
                let _ = writeln!(text, "  {code:<36} {count:>9}");
            }
        }
        if !measurements.steps.is_empty() {
            let _ = writeln!(text, "steps of holds and batches:");
            let seconds = measurements.duration_seconds;
            for (step, count) in &measurements.steps {
                let rate = if seconds > 0.0 { *count as f64 / seconds } else { 0.0 };
                let _ = writeln!(text, "  {step:<36} {count:>9} {rate:>10.1}/s");
            }
        }
        let _ = writeln!(text, "accepted writes (2xx): {}", measurements.accepted_writes);
        if !measurements.events.is_empty() {
            let _ = writeln!(text, "events:");
            for event in &measurements.events {
                let _ = writeln!(text, "  {:>7.2} s  {}", event.elapsed_seconds, event.what);
            }
        }
        let server = &self.server;
        if let Some(durability) = &server.durability {
            let _ = writeln!(text, "server durability: {durability}");
            if durability == "relaxed" {
                let _ = writeln!(
                    text,
                    "  relaxed: a 2xx means applied in memory, not durably stored; at the end \
                     {} writes were still queued, {} durable since the server started ({} batches)",
                    show(server.queue_depth_at_end),
                    show(server.writes_durable),
                    show(server.batches)
                );
            } else {
                let _ = writeln!(
                    text,
                    "  strict: every 2xx write was durable when answered ({} durable since the server \
                     started, {} batches)",
                    show(server.writes_durable),
                    show(server.batches)
                );
            }
        }
        text
    }
}

fn show(value: Option<f64>) -> String {
    value.map_or_else(|| "?".to_string(), |value| format!("{value:.0}"))
}

/// The value of an unlabelled series in a Prometheus text exposition.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == name).then(|| value.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(code: &str) -> Outcome {
        Outcome {
            class: OutcomeClass::Failed(code.into()),
            attempt_errors: vec![code.into()],
            steps: Vec::new(),
        }
    }

    #[test]
    fn percentiles_come_from_every_recorded_latency() {
        let recorder = Recorder::new();
        // 1 ms .. 1000 ms, one each.
        for millis in 1..=1000 {
            recorder.record(
                OperationKind::Transfer,
                Duration::from_millis(millis),
                &Outcome::completed(),
            );
        }
        let summary = recorder.summarize(Duration::from_secs(10));
        let overall = &summary.overall;
        assert_eq!(overall.count, 1000);
        assert!((overall.per_second - 100.0).abs() < 1e-9);
        let close = |value: f64, expected: f64| (value - expected).abs() <= expected * 0.002;
        assert!(close(overall.p50_ms, 500.0), "p50 {}", overall.p50_ms);
        assert!(close(overall.p90_ms, 900.0), "p90 {}", overall.p90_ms);
        assert!(close(overall.p99_ms, 990.0), "p99 {}", overall.p99_ms);
        assert!(close(overall.p999_ms, 999.0), "p99.9 {}", overall.p999_ms);
        assert!(close(overall.max_ms, 1000.0), "max {}", overall.max_ms);
        assert!(close(overall.mean_ms, 500.5), "mean {}", overall.mean_ms);
        assert_eq!(summary.per_operation["transfer"], *overall);
    }

    #[test]
    fn operations_are_summarized_separately_and_together() {
        let recorder = Recorder::new();
        for _ in 0..30 {
            recorder.record(
                OperationKind::Transfer,
                Duration::from_millis(10),
                &Outcome::completed(),
            );
        }
        for _ in 0..10 {
            recorder.record(OperationKind::Balance, Duration::from_millis(2), &Outcome::completed());
        }
        let summary = recorder.summarize(Duration::from_secs(2));
        assert_eq!(summary.per_operation["transfer"].count, 30);
        assert_eq!(summary.per_operation["balance"].count, 10);
        assert_eq!(summary.overall.count, 40);
        assert!((summary.overall.per_second - 20.0).abs() < 1e-9);
        // Reads are not writes.
        assert_eq!(summary.accepted_writes, 30);
    }

    #[test]
    fn outcomes_and_attempt_errors_are_counted_by_code() {
        let recorder = Recorder::new();
        let retried = Outcome {
            class: OutcomeClass::Completed,
            attempt_errors: vec!["unavailable".into(), "transport_connect".into()],
            steps: Vec::new(),
        };
        recorder.record(OperationKind::Transfer, Duration::from_millis(1), &retried);
        recorder.record(
            OperationKind::Transfer,
            Duration::from_millis(1),
            &failed("rate_limited"),
        );
        recorder.record(
            OperationKind::Transfer,
            Duration::from_millis(1),
            &Outcome {
                class: OutcomeClass::Refused("insufficient_funds".into()),
                attempt_errors: vec![],
                steps: Vec::new(),
            },
        );
        let summary = recorder.summarize(Duration::from_secs(1));
        assert_eq!(summary.outcomes["completed"], 1);
        assert_eq!(summary.outcomes["failed:rate_limited"], 1);
        assert_eq!(summary.outcomes["refused:insufficient_funds"], 1);
        assert_eq!(summary.attempt_errors["unavailable"], 1);
        assert_eq!(summary.attempt_errors["transport_connect"], 1);
        assert_eq!(summary.attempt_errors["rate_limited"], 1);
        assert_eq!(summary.accepted_writes, 1);
    }

    #[test]
    fn steps_of_holds_and_batches_are_counted_and_shown_per_second() {
        let recorder = Recorder::new();
        let hold = |settled: Step| Outcome {
            class: OutcomeClass::Completed,
            attempt_errors: Vec::new(),
            steps: vec![(Step::HoldPlaced, 1), (settled, 1)],
        };
        recorder.record(OperationKind::Hold, Duration::from_millis(4), &hold(Step::HoldPosted));
        recorder.record(OperationKind::Hold, Duration::from_millis(4), &hold(Step::HoldPosted));
        recorder.record(OperationKind::Hold, Duration::from_millis(4), &hold(Step::HoldVoided));
        let batch = Outcome {
            class: OutcomeClass::Completed,
            attempt_errors: Vec::new(),
            steps: vec![(Step::BatchLegsApplied, 4)],
        };
        recorder.record(OperationKind::Batch, Duration::from_millis(6), &batch);
        let summary = recorder.summarize(Duration::from_secs(2));
        assert_eq!(summary.per_operation["hold"].count, 3, "a hold is one operation");
        assert_eq!(summary.per_operation["batch"].count, 1);
        assert_eq!(summary.steps["hold_placed"], 3);
        assert_eq!(summary.steps["hold_posted"], 2);
        assert_eq!(summary.steps["hold_voided"], 1);
        assert_eq!(summary.steps["batch_legs_applied"], 4);
        assert_eq!(summary.accepted_writes, 4);
        let report = Report {
            run_id: "run-x".into(),
            command: "test".into(),
            started_at: chrono::Utc::now(),
            target: "http://127.0.0.1:1".into(),
            pacing: "closed loop (concurrency 1)".into(),
            shape: "uniform".into(),
            accounts: 2,
            idempotency_keys: false,
            measurements: summary,
            server: ServerNotes::default(),
            verification: None,
        };
        let text = report.render();
        assert!(text.contains("steps of holds and batches:"), "{text}");
        assert!(
            text.lines()
                .any(|line| line.contains("batch_legs_applied") && line.contains("4") && line.contains("2.0/s")),
            "{text}"
        );
        assert!(text.lines().any(|line| line.starts_with("hold ")), "{text}");
    }

    #[test]
    fn each_tick_reports_only_its_own_second() {
        let recorder = Recorder::new();
        for _ in 0..100 {
            recorder.record(OperationKind::Transfer, Duration::from_millis(5), &Outcome::completed());
        }
        let first = recorder.tick(Duration::from_secs(1));
        assert_eq!(first.operations_per_second, 100.0);
        assert!((first.p99_ms.unwrap() - 5.0).abs() < 0.01);
        recorder.record(
            OperationKind::Transfer,
            Duration::from_millis(50),
            &failed("unavailable"),
        );
        let second = recorder.tick(Duration::from_secs(2));
        assert_eq!(second.operations_per_second, 1.0);
        assert_eq!(second.errors, 1);
        assert!((second.p99_ms.unwrap() - 50.0).abs() < 0.1);
        let empty = recorder.tick(Duration::from_millis(2500));
        assert_eq!(empty.operations_per_second, 0.0);
        assert_eq!(empty.p99_ms, None);
        assert_eq!(recorder.summarize(Duration::from_secs(3)).timeline.len(), 3);
    }

    #[test]
    fn a_last_sliver_of_a_second_is_left_out_of_the_timeline_but_not_the_totals() {
        let recorder = Recorder::new();
        recorder.record(OperationKind::Transfer, Duration::from_millis(5), &Outcome::completed());
        recorder.tick(Duration::from_secs(1));
        for _ in 0..10 {
            recorder.record(OperationKind::Transfer, Duration::from_millis(5), &Outcome::completed());
        }
        // 10 operations in 7 ms would read as 1,400 per second.
        assert_eq!(recorder.tick_final(Duration::from_millis(1007)), None);
        let summary = recorder.summarize(Duration::from_millis(1007));
        assert_eq!(summary.timeline.len(), 1);
        assert_eq!(summary.overall.count, 11);
        // A longer last interval is kept, at its own rate.
        recorder.record(OperationKind::Transfer, Duration::from_millis(5), &Outcome::completed());
        let last = recorder.tick_final(Duration::from_millis(1807)).unwrap();
        assert!((last.operations_per_second - 1.0 / 0.8).abs() < 1e-6, "{last:?}");
    }

    #[test]
    fn an_empty_run_summarizes_to_zeros_not_nonsense() {
        let summary = Recorder::new().summarize(Duration::ZERO);
        assert_eq!(summary.overall.count, 0);
        assert_eq!(summary.overall.per_second, 0.0);
        assert_eq!(summary.overall.max_ms, 0.0);
    }

    #[test]
    fn latencies_beyond_the_histogram_are_clamped_not_lost() {
        let recorder = Recorder::new();
        recorder.record(
            OperationKind::Transfer,
            Duration::from_secs(10 * 3600),
            &Outcome::completed(),
        );
        let summary = recorder.summarize(Duration::from_secs(1));
        assert_eq!(summary.overall.count, 1);
        assert!(summary.overall.max_ms >= 3_599_000.0);
    }

    #[test]
    fn metric_values_are_read_from_the_exposition_text() {
        let text = "# HELP tally_persister_queue_depth x\n# TYPE tally_persister_queue_depth gauge\n\
                    tally_persister_queue_depth 12\ntally_persister_batch_size_sum 3400\n\
                    tally_persister_batch_size_count 17\ntally_other{kind=\"a\"} 1\n";
        assert_eq!(metric_value(text, "tally_persister_queue_depth"), Some(12.0));
        assert_eq!(metric_value(text, "tally_persister_batch_size_sum"), Some(3400.0));
        assert_eq!(metric_value(text, "tally_persister_batch_size"), None);
        assert_eq!(metric_value(text, "tally_missing"), None);
    }
}
