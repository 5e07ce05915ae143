//! End to end: the real Tally started in process on a throwaway PostgreSQL database, set
//! up and loaded through the real HTTP client, then verified — passing on an honest
//! ledger, and failing on a corrupted one while naming exactly the account or the
//! transaction that was tampered with.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Executor;
use tally::configuration::{Environment, Settings};
use tally::startup::Application;
use tally_actors::Store;
use tally_actors::testing::{Backend, TestDb};
use tally_loadtest::client::{ApiClient, RetryPolicy, WriteAnswer, WriteRecord};
use tally_loadtest::owners::{self, OwnerTokens};
use tally_loadtest::report::Report;
use tally_loadtest::runner::{Pacing, RunPlan, Stop};
use tally_loadtest::session::{LoadSession, SessionOptions};
use tally_loadtest::setup::{self, SetupPlan};
use tally_loadtest::verify::{self, Finding, RunRecord, Verification, VerifyInputs};
use tally_loadtest::workload::{HoldMix, HoldSettlement, Mix, OperationKind, Shape, WorkloadConfig};

const ADMIN_USERNAME: &str = "admin";
const ADMIN_PASSWORD: &str = "admin-password";
const JWT_SECRET: &str = "loadtest-secret-loadtest-secret-0123456789";
const USERS: usize = 20;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A Tally serving on a random port over a fresh database, with the tester's handles.
struct Ledger {
    db: TestDb,
    store: Store,
    client: Arc<ApiClient>,
    server: actix_web::dev::ServerHandle,
    engine: tally_actors::Engine,
    ids: Vec<i64>,
    output: PathBuf,
}

impl Ledger {
    async fn start() -> Ledger {
        Ledger::start_with(&[]).await
    }

    /// Start with more settings; later pairs win.
    async fn start_with(extra: &[(&str, &str)]) -> Ledger {
        Ledger::start_configured(extra, false).await
    }

    /// Start with a client that signs the load-test users' own tokens (set-up enrolls
    /// them), so their transfers and reads go as themselves.
    async fn start_as_owners() -> Ledger {
        Ledger::start_configured(&[], true).await
    }

    async fn start_configured(extra: &[(&str, &str)], owners: bool) -> Ledger {
        tally_actors::testing::init_logging();
        let db = TestDb::create(Backend::Postgres).await;
        let mut pairs = vec![
            ("HOST", "127.0.0.1"),
            ("PORT", "0"),
            ("DATABASE_URL", db.url.as_str()),
            ("TALLY_ARBITERS", "2"),
            ("TALLY_HTTP_WORKERS", "2"),
            ("TALLY_DB_CONNECTIONS", "4"),
            ("JWT_SECRET", JWT_SECRET),
            ("TALLY_ADMIN_USERNAME", ADMIN_USERNAME),
            ("TALLY_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ("TALLY_RATE_LIMIT_IP_PER_SECOND", "1000000"),
            ("TALLY_RATE_LIMIT_IP_BURST", "1000000"),
            ("TALLY_RATE_LIMIT_USER_PER_SECOND", "1000000"),
            ("TALLY_RATE_LIMIT_USER_BURST", "1000000"),
            ("TALLY_RATE_LIMIT_LOGIN_PER_MINUTE", "1000000"),
            ("TALLY_RATE_LIMIT_LOGIN_BURST", "1000000"),
        ];
        pairs.extend_from_slice(extra);
        let settings = Settings::from_environment(&Environment::from_pairs(pairs)).expect("valid settings");
        let application = Application::build(settings).await.expect("Tally starts");
        let base_url = format!("http://127.0.0.1:{}", application.port());
        let server = application.handle();
        let engine = application.engine().clone();
        actix_web::rt::spawn(async move {
            let _ = application.run_until_stopped().await;
        });
        let client = ApiClient::login(&base_url, ADMIN_USERNAME, ADMIN_PASSWORD, Duration::from_secs(30))
            .await
            .expect("the admin logs in");
        let client = Arc::new(if owners {
            client.with_owners(OwnerTokens::new(
                JWT_SECRET,
                owners::DEFAULT_ISSUER,
                owners::DEFAULT_AUDIENCE,
                owners::TOKEN_LIFETIME,
            ))
        } else {
            client
        });
        let store = Store::connect(&db.url, 4).await.expect("the store connects");
        let summary = setup::setup(&store, client.clone(), &setup_plan())
            .await
            .expect("set-up works");
        assert_eq!(summary.funded, USERS);
        let output = std::env::temp_dir().join(format!("tally-loadtest-{}", uuid::Uuid::new_v4().simple()));
        Ledger {
            db,
            store,
            client,
            server,
            engine,
            ids: summary.ids,
            output,
        }
    }

    fn plan(&self, pacing: Pacing, requests: u64, mix: &str) -> RunPlan {
        RunPlan {
            pacing,
            stop: Stop {
                duration: Some(Duration::from_secs(20)),
                requests: Some(requests),
            },
            workload: WorkloadConfig {
                accounts: Arc::new(self.ids.clone()),
                shape: Shape::Uniform,
                mix: mix.parse::<Mix>().unwrap(),
                amount_min_minor: 1,
                amount_max_minor: 20_00,
                batch_legs: 4,
                hold_mix: HoldMix::default(),
            },
            seed: 42,
            progress: false,
        }
    }

    /// Run a load and verify; returns the report and what the run recorded.
    async fn load(&self, plan: RunPlan, keys: bool) -> (Report, RunRecord) {
        let retry = RetryPolicy {
            attempts_max: 10,
            retry_time_max: Duration::from_secs(10),
        };
        let options = SessionOptions {
            idempotency_keys: keys,
            retry,
            snapshot: true,
            idle_timeout: IDLE_TIMEOUT,
        };
        let mut session = LoadSession::prepare("test".into(), self.client.clone(), self.store.clone(), plan, options)
            .await
            .expect("the run is prepared");
        let elapsed = session.execute().await;
        let notes = session.server_notes().await;
        let report = session
            .finish(elapsed, notes, &self.output, true, IDLE_TIMEOUT, Some(&self.client))
            .await
            .expect("the run finishes");
        let record: RunRecord =
            serde_json::from_str(&std::fs::read_to_string(self.output.join("run.json")).unwrap()).unwrap();
        (report, record)
    }

    async fn verify(&self, record: &RunRecord) -> Verification {
        let verification = verify::verify(VerifyInputs {
            store: &self.store,
            api: Some(&self.client),
            run: Some(record),
            idle_timeout: IDLE_TIMEOUT,
        })
        .await
        .expect("verification runs");
        println!("{}", verification.render());
        verification
    }

    /// Run a statement that must change exactly one row.
    async fn execute(&self, sql: String) {
        let pool = self.store.postgres_pool().expect("a PostgreSQL store");
        let done = pool
            .execute(sqlx::AssertSqlSafe(sql))
            .await
            .expect("the statement runs");
        assert_eq!(done.rows_affected(), 1);
    }

    async fn stop(self) {
        self.server.stop(true).await;
        self.engine.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.output);
        if let Some(pool) = self.store.postgres_pool() {
            pool.close().await;
        }
        drop(self.db);
    }
}

fn setup_plan() -> SetupPlan {
    SetupPlan {
        prefix: "e2e".into(),
        users: USERS,
        initial_balance_minor: 100_00,
        concurrency: 8,
    }
}

fn passed_checks(verification: &Verification) -> Vec<&str> {
    verification
        .checks
        .iter()
        .filter(|check| check.passed)
        .map(|check| check.name.as_str())
        .collect()
}

#[actix_web::test]
async fn an_open_loop_run_of_every_operation_verifies_clean_and_writes_its_files() {
    let ledger = Ledger::start().await;
    let plan = ledger.plan(
        Pacing::Open {
            rate_per_second: 200.0,
            in_flight_max: 64,
        },
        300,
        "transfer=60,credit=10,debit=10,history=10,balance=10",
    );
    let (report, record) = ledger.load(plan, false).await;
    let measurements = &report.measurements;
    assert_eq!(measurements.overall.count, 300);
    assert!(measurements.accepted_writes > 0);
    assert!(
        measurements
            .outcomes
            .keys()
            .all(|outcome| outcome == "completed" || outcome.starts_with("refused:")),
        "only completions and business refusals: {:?}",
        measurements.outcomes
    );
    assert_eq!(
        measurements.per_operation.len(),
        5,
        "{:?}",
        measurements.per_operation.keys()
    );
    assert_eq!(report.server.durability.as_deref(), Some("strict"));
    assert!(report.server.writes_durable.unwrap_or(0.0) >= measurements.accepted_writes as f64);
    let verification = report.verification.as_ref().expect("the run verified");
    assert!(verification.passed(), "{}", verification.render());
    assert_eq!(
        passed_checks(verification),
        [
            "server idle",
            "store invariants",
            "API balances = store",
            "acknowledged writes in the store",
            "balances = before + the run's movements"
        ]
    );
    assert!(record.writes.iter().all(|write| write.key.is_none()));
    for file in ["result.json", "run.json", "report.txt", "timeline.svg"] {
        assert!(ledger.output.join(file).exists(), "{file} written");
    }
    ledger.stop().await;
}

#[actix_web::test]
async fn verify_fails_naming_the_account_whose_balance_row_was_corrupted() {
    let ledger = Ledger::start().await;
    let plan = ledger.plan(Pacing::Closed { concurrency: 8 }, 200, "transfer=100");
    let (report, record) = ledger.load(plan, true).await;
    assert!(report.verification.as_ref().unwrap().passed());
    assert!(
        record.writes.iter().all(|write| write.key.is_some()),
        "keys on every write"
    );
    let victim = ledger.ids[7];
    ledger
        .execute(format!(
            "UPDATE balances SET amount = amount + 1 WHERE user_id = {victim}"
        ))
        .await;
    let verification = ledger.verify(&record).await;
    assert!(!verification.passed());
    let failed: Vec<&str> = verification
        .checks
        .iter()
        .filter(|check| !check.passed)
        .map(|check| check.name.as_str())
        .collect();
    assert_eq!(
        failed,
        [
            "store invariants",
            "API balances = store",
            "balances = before + the run's movements"
        ]
    );
    for finding in &verification.findings {
        assert!(
            finding.account.is_none_or(|account| account == victim),
            "only account {victim} is blamed: {finding:?}"
        );
        assert_eq!(finding.transaction, None);
    }
    let named = |check: &str| {
        verification
            .findings
            .iter()
            .find(|finding| finding.check == check && finding.account == Some(victim))
            .unwrap_or_else(|| panic!("{check} names account {victim}"))
            .detail
            .clone()
    };
    assert!(named("store invariants").contains("journal sums to"));
    assert!(
        named("API balances = store").contains("difference -0.01"),
        "{}",
        named("API balances = store")
    );
    assert!(named("balances = before + the run's movements").contains("but the store holds"));
    assert!(
        verification
            .findings
            .iter()
            .any(|finding| finding.detail.contains("sum to 1, not 0")),
        "conservation is broken by one cent"
    );
    ledger.stop().await;
}

#[actix_web::test]
async fn verify_fails_naming_the_acknowledged_transaction_that_was_deleted() {
    let ledger = Ledger::start().await;
    let plan = ledger.plan(Pacing::Closed { concurrency: 8 }, 200, "transfer=100");
    let (report, record) = ledger.load(plan, false).await;
    assert!(report.verification.as_ref().unwrap().passed());
    let (deleted, from, to) = record
        .writes
        .iter()
        .find_map(|write| match write.answer {
            WriteAnswer::Completed { id, .. } => Some((id, write.from, write.to)),
            _ => None,
        })
        .expect("a completed transfer");
    ledger
        .execute(format!("DELETE FROM transactions WHERE id = '{deleted}'"))
        .await;
    let verification = ledger.verify(&record).await;
    assert!(!verification.passed());
    let missing: Vec<_> = findings_of(&verification, "acknowledged writes in the store");
    assert_eq!(missing.len(), 1, "exactly the deleted transaction: {missing:?}");
    assert_eq!(missing[0].transaction, Some(deleted));
    assert!(
        missing[0].detail.contains("answered 201 but not in the store"),
        "{}",
        missing[0].detail
    );
    // The store's own checks see the journal of both parties break, and only theirs.
    let store_findings: Vec<_> = findings_of(&verification, "store invariants");
    assert!(!store_findings.is_empty());
    for finding in store_findings {
        assert!(
            finding.account == Some(from) || finding.account == Some(to),
            "only {from} and {to} are blamed: {finding:?}"
        );
    }
    ledger.stop().await;
}

#[actix_web::test]
async fn setup_again_funds_only_what_a_run_drained_and_never_pays_twice() {
    let ledger = Ledger::start().await;
    let again = setup::setup(&ledger.store, ledger.client.clone(), &setup_plan())
        .await
        .unwrap();
    assert_eq!(
        (again.funded, again.already_funded),
        (0, USERS),
        "everyone is at the balance already"
    );
    assert_eq!(again.ids, ledger.ids, "the same users, in the same order");
    // Drain some accounts the way a run would, then set up twice at once. Whether one
    // or both set-ups see an account drained depends on timing; either way it is
    // topped up once, since both derive the same key from the version they read.
    let drained = &ledger.ids[2..7];
    for &user in drained {
        let body = serde_json::json!({ "user_id": user, "amount": "60.00" });
        let answer = ledger
            .client
            .send(reqwest::Method::POST, "/transactions/debit", Some(&body), None)
            .await
            .unwrap();
        assert_eq!(answer.status, 201, "{}", answer.body());
    }
    let plan = setup_plan();
    let (first, second) = tokio::join!(
        setup::setup(&ledger.store, ledger.client.clone(), &plan),
        setup::setup(&ledger.store, ledger.client.clone(), &plan),
    );
    let funded = first.unwrap().funded + second.unwrap().funded;
    assert!(
        (5..=10).contains(&funded),
        "each drained account funded by one or both: {funded}"
    );
    for &user in drained {
        let (balance, _) = ledger.client.balance(user).await.unwrap();
        assert_eq!(balance, 100_00, "account {user} got one credit of 60.00, never two");
    }
    let verification = verify::verify(VerifyInputs {
        store: &ledger.store,
        api: Some(&ledger.client),
        run: None,
        idle_timeout: IDLE_TIMEOUT,
    })
    .await
    .unwrap();
    assert!(verification.passed(), "{}", verification.render());
    ledger.stop().await;
}

#[actix_web::test]
async fn a_run_longer_than_a_token_logs_in_again_instead_of_failing() {
    let ledger = Ledger::start_with(&[("JWT_ACCESS_TTL_SECONDS", "1")]).await;
    let mut plan = ledger.plan(Pacing::Closed { concurrency: 4 }, u64::MAX, "transfer=50,balance=50");
    plan.stop.duration = Some(Duration::from_millis(2500));
    let (report, _) = ledger.load(plan, false).await;
    let outcomes = &report.measurements.outcomes;
    assert!(
        outcomes
            .keys()
            .all(|outcome| outcome == "completed" || outcome.starts_with("refused:")),
        "no request failed for an expired token: {outcomes:?}"
    );
    assert!(
        report.measurements.attempt_errors.is_empty(),
        "{:?}",
        report.measurements.attempt_errors
    );
    assert!(report.verification.as_ref().unwrap().passed());
    ledger.stop().await;
}

#[actix_web::test]
async fn with_the_users_own_tokens_each_transfer_is_sent_by_the_owner_of_the_account_it_debits() {
    let ledger = Ledger::start_as_owners().await;
    let owners = ledger.client.owners().expect("the client has the users' tokens");
    assert_eq!(owners.len(), USERS, "set-up enrolled every user");
    let plan = ledger.plan(
        Pacing::Closed { concurrency: 8 },
        300,
        "transfer=60,credit=10,history=15,balance=15",
    );
    let (report, record) = ledger.load(plan, true).await;
    let verification = report.verification.as_ref().expect("the run verified");
    assert!(verification.passed(), "{}", verification.render());
    assert!(
        report.measurements.attempt_errors.is_empty(),
        "{:?}",
        report.measurements.attempt_errors
    );
    let store = ledger.engine.store();
    let mut transfers = 0;
    let mut credits = 0;
    for write in &record.writes {
        let WriteAnswer::Completed { id, .. } = write.answer else {
            continue;
        };
        let audit = store.audit_entries("transaction", &id.to_string()).await.unwrap();
        match write.kind {
            OperationKind::Transfer => {
                transfers += 1;
                assert_eq!(write.initiator, Some(write.from), "sent by the debited account's owner");
                // The key is scoped to the owner: the stored transfer is found under it.
                let key = write.key.as_deref().expect("keys are on");
                let stored = store.find_by_idempotency_key(write.from, key).await.unwrap();
                assert_eq!(stored.map(|stored| stored.id), Some(id));
                assert!(
                    audit.is_empty(),
                    "an owner's transfer is not an administrative action: {audit:?}"
                );
            }
            OperationKind::Credit => {
                credits += 1;
                assert_eq!(write.initiator, None, "credits go as the admin");
                assert!(!audit.is_empty(), "the admin's credit is audited");
            }
            _ => {}
        }
    }
    assert!(
        transfers > 100 && credits > 10,
        "{transfers} transfers, {credits} credits"
    );
    ledger.stop().await;
}

/// The holds of a run whose placement and settlement were both answered 2xx, with their
/// id and settlement.
fn settled_holds(record: &RunRecord) -> Vec<(&WriteRecord, uuid::Uuid, HoldSettlement)> {
    record
        .writes
        .iter()
        .filter_map(|write| match (&write.answer, &write.settlement) {
            (WriteAnswer::Completed { id, .. }, Some(settlement))
                if matches!(settlement.answer, WriteAnswer::Completed { .. }) =>
            {
                Some((write, *id, settlement.settle))
            }
            _ => None,
        })
        .collect()
}

#[actix_web::test]
async fn a_mixed_run_of_holds_and_batches_with_keys_verifies_clean() {
    let ledger = Ledger::start().await;
    let plan = ledger.plan(
        Pacing::Closed { concurrency: 8 },
        300,
        "transfer=30,hold=40,batch=20,balance=10",
    );
    let (report, record) = ledger.load(plan, true).await;
    let measurements = &report.measurements;
    assert_eq!(measurements.overall.count, 300);
    assert!(
        measurements
            .outcomes
            .keys()
            .all(|outcome| outcome == "completed" || outcome.starts_with("refused:")),
        "only completions and business refusals: {:?}",
        measurements.outcomes
    );
    let operations: Vec<&str> = measurements.per_operation.keys().map(String::as_str).collect();
    assert_eq!(operations, ["balance", "batch", "hold", "transfer"]);
    // Every hold placed was settled, one way or another.
    let steps = &measurements.steps;
    let settled = steps.get("hold_posted").copied().unwrap_or(0)
        + steps.get("hold_posted_in_part").copied().unwrap_or(0)
        + steps.get("hold_voided").copied().unwrap_or(0);
    assert!(
        steps["hold_placed"] > 0 && steps["hold_posted"] > 0 && steps["hold_voided"] > 0,
        "{steps:?}"
    );
    assert_eq!(settled, steps["hold_placed"], "{steps:?}");
    // Small balances and amounts up to 20.00: some batches are refused, all legs at once.
    let legs = steps["batch_legs_applied"] + steps.get("batch_legs_refused").copied().unwrap_or(0);
    assert_eq!(legs, 4 * measurements.per_operation["batch"].count, "{steps:?}");
    let verification = report.verification.as_ref().expect("the run verified");
    assert!(verification.passed(), "{}", verification.render());
    assert_eq!(
        passed_checks(verification),
        [
            "server idle",
            "store invariants",
            "API balances = store",
            "acknowledged writes in the store",
            "balances = before + the run's movements"
        ]
    );
    // The record holds what verification needs: every settlement's key, every leg's id.
    for write in &record.writes {
        let key = write.key.as_deref().expect("keys on every write");
        match write.kind {
            OperationKind::Hold => match &write.answer {
                WriteAnswer::Completed { .. } => {
                    let settlement = write.settlement.as_ref().expect("every placed hold is settled");
                    assert_eq!(settlement.key.as_deref(), Some(format!("{key}-settle").as_str()));
                }
                _ => assert_eq!(write.settlement, None, "a refused hold is not settled"),
            },
            OperationKind::Batch => {
                assert_eq!(write.legs.len(), 4);
                assert!(write.legs.iter().all(|leg| leg.id.is_some()), "{write:?}");
            }
            _ => {}
        }
    }
    ledger.stop().await;
}

#[actix_web::test]
async fn a_keyless_open_loop_of_holds_and_batches_verifies_clean() {
    let ledger = Ledger::start().await;
    let plan = ledger.plan(
        Pacing::Open {
            rate_per_second: 200.0,
            in_flight_max: 64,
        },
        200,
        "hold=50,batch=50",
    );
    let (report, record) = ledger.load(plan, false).await;
    let verification = report.verification.as_ref().expect("the run verified");
    assert!(verification.passed(), "{}", verification.render());
    assert!(
        !verification
            .checks
            .iter()
            .any(|check| check.summary.starts_with("skipped")),
        "every outcome is known: {}",
        verification.render()
    );
    assert!(record.writes.iter().all(|write| write.key.is_none()));
    ledger.stop().await;
}

#[actix_web::test]
async fn verify_fails_naming_the_posted_hold_whose_amount_was_changed() {
    let ledger = Ledger::start().await;
    let mut plan = ledger.plan(Pacing::Closed { concurrency: 8 }, 100, "hold=100");
    plan.workload.hold_mix = "post=100".parse().unwrap();
    let (report, record) = ledger.load(plan, false).await;
    assert!(report.verification.as_ref().unwrap().passed());
    let (write, hold, _) = settled_holds(&record)
        .into_iter()
        .find(|(write, _, settle)| *settle == HoldSettlement::Post && write.amount_minor < 20_00)
        .expect("a hold posted whole");
    ledger
        .execute(format!(
            "UPDATE transactions SET amount = amount + 1 WHERE id = '{hold}'"
        ))
        .await;
    let verification = ledger.verify(&record).await;
    assert!(!verification.passed());
    let named: Vec<_> = findings_of(&verification, "acknowledged writes in the store");
    assert_eq!(named.len(), 1, "exactly the changed hold: {named:?}");
    assert_eq!(named[0].transaction, Some(hold));
    assert!(named[0].detail.contains("but stored with"), "{}", named[0].detail);
    for finding in verification.findings.iter().filter(|finding| finding.account.is_some()) {
        assert!(
            finding.account == Some(write.from) || finding.account == Some(write.to),
            "only the hold's parties are blamed: {finding:?}"
        );
    }
    ledger.stop().await;
}

#[actix_web::test]
async fn verify_fails_naming_the_batch_leg_that_was_deleted() {
    let ledger = Ledger::start().await;
    let plan = ledger.plan(Pacing::Closed { concurrency: 8 }, 60, "batch=100");
    let (report, record) = ledger.load(plan, true).await;
    assert!(report.verification.as_ref().unwrap().passed());
    let leg = record
        .writes
        .iter()
        .filter(|write| matches!(write.answer, WriteAnswer::Completed { .. }))
        .find_map(|write| write.legs[2].id)
        .expect("a completed batch");
    ledger
        .execute(format!("DELETE FROM transactions WHERE id = '{leg}'"))
        .await;
    let verification = ledger.verify(&record).await;
    assert!(!verification.passed());
    let named: Vec<_> = findings_of(&verification, "acknowledged writes in the store");
    assert_eq!(named.len(), 1, "exactly the batch with the deleted leg: {named:?}");
    assert_eq!(named[0].transaction, Some(leg));
    assert!(
        named[0].detail.contains("leg 2 of 4 is not in the store"),
        "{}",
        named[0].detail
    );
    ledger.stop().await;
}

/// The findings of one check.
fn findings_of<'a>(verification: &'a Verification, check: &str) -> Vec<&'a Finding> {
    verification
        .findings
        .iter()
        .filter(|finding| finding.check == check)
        .collect()
}
