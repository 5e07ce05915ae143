//! One load run from start to verdict, shared by `run` and `chaos`: prepare (the
//! accounts, the balances before), execute (the runner with the HTTP executor), finish
//! (what the server says about durability, the report, the verification, and the files
//! in the output directory: `result.json`, `run.json`, `report.txt`, `timeline.svg`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tally_actors::Store;

use crate::client::{ApiClient, HttpExecutor, RetryPolicy, WriteLog};
use crate::database;
use crate::plot;
use crate::report::{Recorder, Report, ServerNotes, metric_value};
use crate::runner::{self, RunPlan};
use crate::verify::{self, RunRecord, VerifyInputs};

/// How a run treats writes and the ledger around it.
#[derive(Clone, Copy, Debug)]
pub struct SessionOptions {
    /// Send a key with every write and retry what may be retried.
    pub idempotency_keys: bool,
    pub retry: RetryPolicy,
    /// Wait until the server is idle and read every balance before the run, so
    /// verification can check balances against the run's movements.
    pub snapshot: bool,
    /// The longest that wait may take.
    pub idle_timeout: Duration,
}

/// Everything a run needs besides its plan.
#[derive(Debug)]
pub struct LoadSession {
    pub run_id: String,
    pub command: String,
    pub client: Arc<ApiClient>,
    pub store: Store,
    pub plan: RunPlan,
    pub idempotency_keys: bool,
    pub retry: RetryPolicy,
    pub recorder: Arc<Recorder>,
    pub writes: Arc<WriteLog>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    balances_before: Option<BTreeMap<i64, i64>>,
}

/// A short random id that names the run and prefixes its idempotency keys.
pub fn new_run_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("run-{}", &id[..12])
}

impl LoadSession {
    /// Prepare a run (see [`SessionOptions::snapshot`]).
    pub async fn prepare(
        command: String,
        client: Arc<ApiClient>,
        store: Store,
        plan: RunPlan,
        options: SessionOptions,
    ) -> anyhow::Result<LoadSession> {
        let balances_before = if options.snapshot {
            let waited = verify::wait_until_idle(&client, options.idle_timeout).await;
            if !waited.passed {
                anyhow::bail!("before the run: {}", waited.summary);
            }
            Some(database::balances(&store).await?)
        } else {
            None
        };
        Ok(LoadSession {
            run_id: new_run_id(),
            command,
            client,
            store,
            plan,
            idempotency_keys: options.idempotency_keys,
            retry: options.retry,
            recorder: Arc::new(Recorder::new()),
            writes: Arc::new(WriteLog::default()),
            started_at: chrono::Utc::now(),
            balances_before,
        })
    }

    /// Send the load; returns how long it took.
    pub async fn execute(&mut self) -> Duration {
        let executor = Arc::new(HttpExecutor {
            client: self.client.clone(),
            key_prefix: self.idempotency_keys.then(|| self.run_id.clone()),
            retry: self.retry,
            writes: self.writes.clone(),
        });
        self.started_at = chrono::Utc::now();
        println!(
            "\nrun {}: {} against {} for {}",
            self.run_id,
            self.plan.pacing.describe(),
            self.client.base_url(),
            match (self.plan.stop.duration, self.plan.stop.requests) {
                (Some(duration), Some(requests)) => format!("{} s or {requests} requests", duration.as_secs_f64()),
                (Some(duration), None) => format!("{} s", duration.as_secs_f64()),
                (None, Some(requests)) => format!("{requests} requests"),
                (None, None) => unreachable!("a stop condition is required"),
            }
        );
        runner::run(self.plan.clone(), executor, self.recorder.clone()).await
    }

    /// What the server says about durability right after the load.
    pub async fn server_notes(&self) -> ServerNotes {
        let mut notes = ServerNotes::default();
        if let Ok((200, text)) = self.client.get_root("/metrics").await {
            notes.queue_depth_at_end = metric_value(&text, "tally_persister_queue_depth");
            notes.writes_durable = metric_value(&text, "tally_persister_batch_size_sum");
            notes.batches = metric_value(&text, "tally_persister_batch_size_count");
        }
        if let Ok(readiness) = self.client.readiness().await {
            notes.durability = readiness["durability"].as_str().map(str::to_string);
        }
        notes
    }

    /// Build the report, verify (unless `verify` is false), and write everything to
    /// `output`.
    pub async fn finish(
        self,
        elapsed: Duration,
        server: ServerNotes,
        output: &Path,
        verify: bool,
        idle_timeout: Duration,
        api_for_verify: Option<&ApiClient>,
    ) -> anyhow::Result<Report> {
        std::fs::create_dir_all(output).with_context(|| format!("creating {}", output.display()))?;
        let measurements = self.recorder.summarize(elapsed);
        let record = RunRecord {
            run_id: self.run_id.clone(),
            admin_id: self.client.admin_id(),
            balances_before: self.balances_before,
            writes: self.writes.take(),
        };
        let mut report = Report {
            run_id: self.run_id.clone(),
            command: self.command,
            started_at: self.started_at,
            target: self.client.base_url().to_string(),
            pacing: self.plan.pacing.describe(),
            shape: self.plan.workload.shape.to_string(),
            accounts: self.plan.workload.accounts.len(),
            idempotency_keys: self.idempotency_keys,
            measurements,
            server,
            verification: None,
        };
        print!("{}", report.render());
        write_json(&output.join("run.json"), &record)?;
        if verify {
            let verification = verify::verify(VerifyInputs {
                store: &self.store,
                api: api_for_verify,
                run: Some(&record),
                idle_timeout,
            })
            .await?;
            print!("{}", verification.render());
            report.verification = Some(verification);
        }
        write_json(&output.join("result.json"), &report)?;
        let mut text = report.render();
        if let Some(verification) = &report.verification {
            text.push_str(&verification.render());
        }
        std::fs::write(output.join("report.txt"), text)?;
        let title = format!("{} — {} — {}", report.run_id, report.pacing, report.shape);
        let svg = plot::render(&title, &report.measurements.timeline, &report.measurements.events);
        std::fs::write(output.join("timeline.svg"), svg)?;
        println!(
            "\nwrote {}/{{result.json, run.json, report.txt, timeline.svg}}",
            output.display()
        );
        Ok(report)
    }
}

pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    serde_json::to_writer_pretty(std::io::BufWriter::new(file), value)
        .with_context(|| format!("writing {}", path.display()))
}
