//! Driving the load: a closed loop (a fixed number of workers, each sending its next
//! request when the previous one is answered) or an open loop (requests scheduled at a
//! fixed rate whatever the server does).
//!
//! In the open loop each request's latency is measured from the moment it was
//! *scheduled*, not from when it could be sent: if the server stalls, requests pile up
//! and every one of them shows the wait, which is what a client arriving at that rate
//! would see. Measuring from the send instead would hide the stall (coordinated
//! omission). The loop also bounds the requests in flight, so a stalled server cannot
//! make the tester grow without limit; waiting for a free slot counts as latency too.
//!
//! The runner knows nothing of HTTP: it calls an [`Executor`], so the scheduling can be
//! tested against a simulated server under paused time.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::report::{Outcome, Recorder, SecondSample};
use crate::workload::{Operation, Workload, WorkloadConfig};

/// Sends one operation and reports how it ended (after any retries it makes).
pub trait Executor: Send + Sync + 'static {
    /// `sequence` numbers the operations of one run from 0 (idempotency keys derive
    /// from it).
    fn execute(&self, sequence: u64, operation: Operation) -> impl Future<Output = Outcome> + Send;
}

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// `concurrency` workers, each waiting for its answer before sending again.
    Closed { concurrency: usize },
    /// Requests scheduled every 1/`rate_per_second` s, at most `in_flight_max` unanswered.
    Open { rate_per_second: f64, in_flight_max: usize },
}

impl Pacing {
    pub fn describe(&self) -> String {
        match self {
            Pacing::Closed { concurrency } => format!("closed loop (concurrency {concurrency})"),
            Pacing::Open {
                rate_per_second,
                in_flight_max,
            } => format!("open loop ({rate_per_second}/s, at most {in_flight_max} in flight)"),
        }
    }
}

/// When the run stops: at the duration or after the number of requests, whichever comes
/// first (at least one of them is set).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stop {
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct RunPlan {
    pub pacing: Pacing,
    pub stop: Stop,
    pub workload: WorkloadConfig,
    pub seed: u64,
    /// Print one line per second.
    pub progress: bool,
}

/// Run the plan against `executor`, recording into `recorder`. Returns the time from
/// the start until the last operation finished.
pub async fn run<E: Executor>(plan: RunPlan, executor: Arc<E>, recorder: Arc<Recorder>) -> Duration {
    assert!(
        plan.stop.duration.is_some() || plan.stop.requests.is_some(),
        "a run needs a duration or a request count"
    );
    let started = Instant::now();
    let ticker = tokio::spawn(progress(started, recorder.clone(), plan.progress));
    match plan.pacing {
        Pacing::Closed { concurrency } => closed_loop(&plan, concurrency, started, executor, recorder.clone()).await,
        Pacing::Open {
            rate_per_second,
            in_flight_max,
        } => {
            open_loop(
                &plan,
                rate_per_second,
                in_flight_max,
                started,
                executor,
                recorder.clone(),
            )
            .await
        }
    }
    ticker.abort();
    let elapsed = started.elapsed();
    // The last, partial second.
    if let Some(last) = recorder.tick_final(elapsed)
        && plan.progress
    {
        println!("{}", progress_line(&last, recorder.accepted_writes()));
    }
    elapsed
}

async fn closed_loop<E: Executor>(
    plan: &RunPlan,
    concurrency: usize,
    started: Instant,
    executor: Arc<E>,
    recorder: Arc<Recorder>,
) {
    let deadline = plan.stop.duration.map(|duration| started + duration);
    let requests = plan.stop.requests.unwrap_or(u64::MAX);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let mut workload = Workload::new(plan.workload.clone(), plan.seed.wrapping_add(worker as u64));
        let (executor, recorder, next) = (executor.clone(), recorder.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    break;
                }
                let sequence = next.fetch_add(1, Ordering::Relaxed);
                if sequence >= requests {
                    break;
                }
                let operation = workload.next_operation();
                let kind = operation.kind();
                let sent = Instant::now();
                let outcome = executor.execute(sequence, operation).await;
                recorder.record(kind, sent.elapsed(), &outcome);
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a load worker panicked");
    }
}

async fn open_loop<E: Executor>(
    plan: &RunPlan,
    rate_per_second: f64,
    in_flight_max: usize,
    started: Instant,
    executor: Arc<E>,
    recorder: Arc<Recorder>,
) {
    assert!(rate_per_second > 0.0, "an open loop needs a positive rate");
    let slots = Arc::new(Semaphore::new(in_flight_max));
    let mut workload = Workload::new(plan.workload.clone(), plan.seed);
    let requests = plan.stop.requests.unwrap_or(u64::MAX);
    let mut sequence = 0u64;
    while sequence < requests {
        let scheduled = started + Duration::from_secs_f64(sequence as f64 / rate_per_second);
        if plan
            .stop
            .duration
            .is_some_and(|duration| scheduled >= started + duration)
        {
            break;
        }
        tokio::time::sleep_until(scheduled).await;
        // Waiting here for a slot delays the send, not the schedule: it is counted.
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let operation = workload.next_operation();
        let kind = operation.kind();
        let (executor, recorder) = (executor.clone(), recorder.clone());
        tokio::spawn(async move {
            let outcome = executor.execute(sequence, operation).await;
            recorder.record(kind, scheduled.elapsed(), &outcome);
            drop(slot);
        });
        sequence += 1;
    }
    // Every slot free again: everything sent was answered.
    let _all = slots
        .acquire_many(in_flight_max as u32)
        .await
        .expect("the semaphore is never closed");
}

async fn progress(started: Instant, recorder: Arc<Recorder>, print: bool) {
    let mut ticks = tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        ticks.tick().await;
        let sample = recorder.tick(started.elapsed());
        if print {
            println!("{}", progress_line(&sample, recorder.accepted_writes()));
        }
    }
}

/// One line of live progress.
pub fn progress_line(sample: &SecondSample, accepted_writes: u64) -> String {
    format!(
        "[{:>6.1} s] {:>9.0} ops/s | errors {:>5} | p99 {:>9} | accepted writes {}",
        sample.elapsed_seconds,
        sample.operations_per_second,
        sample.errors,
        sample
            .p99_ms
            .map_or_else(|| "-".to_string(), |p99| format!("{p99:.1} ms")),
        accepted_writes
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{HoldMix, Mix, Shape};

    /// A simulated server: answers after `service` unless it is stalled, in which case
    /// everything arriving waits until the stall ends.
    struct StallingServer {
        started: Instant,
        service: Duration,
        stall_from: Duration,
        stall_until: Duration,
        served: AtomicU64,
    }

    impl Executor for StallingServer {
        async fn execute(&self, _sequence: u64, _operation: Operation) -> Outcome {
            let now = self.started.elapsed();
            if now >= self.stall_from && now < self.stall_until {
                tokio::time::sleep_until(self.started + self.stall_until).await;
            }
            tokio::time::sleep(self.service).await;
            self.served.fetch_add(1, Ordering::Relaxed);
            Outcome::completed()
        }
    }

    fn plan(pacing: Pacing, seconds: u64) -> RunPlan {
        RunPlan {
            pacing,
            stop: Stop {
                duration: Some(Duration::from_secs(seconds)),
                requests: None,
            },
            workload: WorkloadConfig {
                accounts: Arc::new(vec![1, 2, 3]),
                shape: Shape::Uniform,
                mix: Mix::default(),
                amount_min_minor: 1,
                amount_max_minor: 10,
                batch_legs: 4,
                hold_mix: HoldMix::default(),
            },
            seed: 1,
            progress: false,
        }
    }

    fn server(stall_seconds: (u64, u64)) -> Arc<StallingServer> {
        Arc::new(StallingServer {
            started: Instant::now(),
            service: Duration::from_millis(1),
            stall_from: Duration::from_secs(stall_seconds.0),
            stall_until: Duration::from_secs(stall_seconds.1),
            served: AtomicU64::new(0),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_counts_a_server_stall_against_every_request_scheduled_during_it() {
        let recorder = Arc::new(Recorder::new());
        let pacing = Pacing::Open {
            rate_per_second: 100.0,
            in_flight_max: 1000,
        };
        // Stalled from 1 s to 2 s of a 3 s run at 100 requests/s.
        let elapsed = run(plan(pacing, 3), server((1, 2)), recorder.clone()).await;
        let summary = recorder.summarize(elapsed);
        assert_eq!(summary.overall.count, 300, "every scheduled request was sent");
        // The 100 requests scheduled during the stall waited 1000 ms, 990 ms … 10 ms: the
        // slowest 1/6 of all requests waited over half a second, and the median request
        // of the whole run did not wait at all.
        assert!(summary.overall.max_ms >= 1000.0, "max {}", summary.overall.max_ms);
        assert!(summary.overall.p90_ms >= 400.0, "p90 {}", summary.overall.p90_ms);
        assert!(summary.overall.p50_ms < 5.0, "p50 {}", summary.overall.p50_ms);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_counts_waiting_for_a_free_slot_as_latency() {
        let recorder = Arc::new(Recorder::new());
        // Only one request in flight and a stall of a second: the requests queued behind
        // it could not even be sent, and still their latency counts from their schedule.
        let pacing = Pacing::Open {
            rate_per_second: 100.0,
            in_flight_max: 1,
        };
        let elapsed = run(plan(pacing, 3), server((1, 2)), recorder.clone()).await;
        let summary = recorder.summarize(elapsed);
        assert_eq!(summary.overall.count, 300);
        assert!(summary.overall.p90_ms >= 400.0, "p90 {}", summary.overall.p90_ms);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_loop_shows_the_same_stall_as_one_slow_request() {
        // For contrast: one worker sees the stall once and sends nothing meanwhile, so
        // its percentiles barely move. This is the omission the open loop corrects.
        let recorder = Arc::new(Recorder::new());
        let elapsed = run(
            plan(Pacing::Closed { concurrency: 1 }, 3),
            server((1, 2)),
            recorder.clone(),
        )
        .await;
        let summary = recorder.summarize(elapsed);
        assert!(summary.overall.max_ms >= 999.0, "max {}", summary.overall.max_ms);
        assert!(summary.overall.p99_ms < 5.0, "p99 {}", summary.overall.p99_ms);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_loop_keeps_its_rate_when_the_server_keeps_up() {
        let recorder = Arc::new(Recorder::new());
        let pacing = Pacing::Open {
            rate_per_second: 250.0,
            in_flight_max: 100,
        };
        let elapsed = run(plan(pacing, 4), server((100, 100)), recorder.clone()).await;
        let summary = recorder.summarize(elapsed);
        assert_eq!(summary.overall.count, 1000);
        assert!(
            (summary.overall.per_second - 250.0).abs() < 2.0,
            "{}",
            summary.overall.per_second
        );
        assert!(summary.overall.p99_ms < 2.0);
        // One sample per second.
        assert_eq!(summary.timeline.len(), 4, "{:?}", summary.timeline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_count_stops_the_run_exactly() {
        for pacing in [
            Pacing::Closed { concurrency: 7 },
            Pacing::Open {
                rate_per_second: 1000.0,
                in_flight_max: 10,
            },
        ] {
            let recorder = Arc::new(Recorder::new());
            let server = server((100, 100));
            let mut plan = plan(pacing, 3);
            plan.stop = Stop {
                duration: None,
                requests: Some(123),
            };
            run(plan, server.clone(), recorder.clone()).await;
            assert_eq!(server.served.load(Ordering::Relaxed), 123, "{pacing:?}");
            assert_eq!(recorder.summarize(Duration::from_secs(1)).overall.count, 123);
        }
    }

    #[test]
    fn the_progress_line_shows_rate_errors_and_p99() {
        let line = progress_line(
            &SecondSample {
                elapsed_seconds: 3.0,
                operations_per_second: 4812.4,
                errors: 2,
                p99_ms: Some(12.34),
                p50_ms: Some(3.0),
            },
            9000,
        );
        assert!(line.contains("4812 ops/s") && line.contains("errors     2") && line.contains("p99   12.3 ms"));
        assert!(line.contains("accepted writes 9000"), "{line}");
    }
}
