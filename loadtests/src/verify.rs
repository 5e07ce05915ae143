//! Checking that the ledger is right after a load (design.md §11), from the store and
//! through the API:
//!
//! 1. the server is idle: everything it accepted is durable (queue depth 0);
//! 2. the store's own invariants ([`Store::verify`]): conservation, no negative user
//!    balance, balance = sum of the journal, journal order;
//! 3. every account's `/balances/current` equals its balance row;
//! 4. every write the run was answered for is in the store exactly as answered — with a
//!    key, [`Store::find_by_idempotency_key`] returns exactly the transaction the client
//!    was told about (so a retried write applied once); without one, [`Store::transaction`]
//!    finds it. Writes whose answer was lost are looked up by key and counted as applied
//!    or not;
//! 5. when the run knew the balances before it and the outcome of every write, each
//!    account's balance is its balance before plus the run's movements.
//!
//! Each failure is a [`Finding`] naming the account or the transaction and the numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tally_actors::{Store, TransactionRecord, TransactionStatus, Violation};
use uuid::Uuid;

use crate::client::{ApiClient, WriteAnswer, WriteRecord};
use crate::database;
use crate::workload::{OperationKind, format_minor};

/// Violations of each kind the store lists: enough to see a pattern, bounded so a badly
/// broken ledger still prints a readable report.
const VIOLATIONS_PER_KIND_MAX: i64 = 50;

/// Store lookups and API reads in flight while verifying: the store handle's pool size,
/// so lookups queue in the tester rather than in the database.
pub const VERIFY_CONCURRENCY: usize = 16;

/// How often the idle check asks the server.
const IDLE_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A check that failed, precisely.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub check: String,
    pub account: Option<i64>,
    pub transaction: Option<Uuid>,
    pub detail: String,
}

/// One check and how it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    pub summary: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    pub checks: Vec<CheckResult>,
    pub findings: Vec<Finding>,
}

impl Verification {
    pub fn passed(&self) -> bool {
        self.findings.is_empty() && self.checks.iter().all(|check| check.passed)
    }

    fn check(&mut self, name: &str, findings: Vec<Finding>, summary: String) {
        self.checks.push(CheckResult {
            name: name.to_string(),
            passed: findings.is_empty(),
            summary,
        });
        self.findings.extend(findings);
    }

    pub fn render(&self) -> String {
        let mut text = String::from("\n== verification\n");
        for check in &self.checks {
            let mark = if check.passed { "ok  " } else { "FAIL" };
            let _ = writeln!(text, "{mark} {}: {}", check.name, check.summary);
            for finding in self.findings.iter().filter(|finding| finding.check == check.name) {
                let mut subject = String::new();
                if let Some(account) = finding.account {
                    let _ = write!(subject, "account {account}: ");
                }
                if let Some(transaction) = finding.transaction {
                    let _ = write!(subject, "transaction {transaction}: ");
                }
                let _ = writeln!(text, "       {subject}{}", finding.detail);
            }
        }
        let _ = writeln!(
            text,
            "{}",
            if self.passed() {
                "all checks passed"
            } else {
                "VERIFICATION FAILED"
            }
        );
        text
    }
}

/// What a run leaves for the verifier (written as `run.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    /// The initiator of every write: keys are scoped to this user.
    pub admin_id: i64,
    /// Every balance row before the run, when the run read them.
    pub balances_before: Option<BTreeMap<i64, i64>>,
    pub writes: Vec<WriteRecord>,
}

/// What to verify with.
#[derive(Debug)]
pub struct VerifyInputs<'a> {
    pub store: &'a Store,
    /// The running server, for the idle and API checks.
    pub api: Option<&'a ApiClient>,
    pub run: Option<&'a RunRecord>,
    /// The longest the server may take to make everything durable.
    pub idle_timeout: Duration,
}

pub async fn verify(inputs: VerifyInputs<'_>) -> anyhow::Result<Verification> {
    let mut verification = Verification::default();
    if let Some(api) = inputs.api {
        let (findings, summary) = wait_idle(api, inputs.idle_timeout).await;
        verification.check("server idle", findings, summary);
    }
    let violations = inputs
        .store
        .verify(VIOLATIONS_PER_KIND_MAX)
        .await
        .context("running the store's invariant checks")?;
    let (sum, accounts) = inputs.store.balance_sum().await?;
    let findings: Vec<Finding> = violations.iter().map(violation_finding).collect();
    verification.check(
        "store invariants",
        findings,
        format!(
            "{accounts} accounts summing to {sum}; conservation, no negative balance, balance = journal, journal order"
        ),
    );
    let balances_after = database::balances(inputs.store).await?;
    if let Some(api) = inputs.api {
        let (findings, summary) = api_balances(api, &balances_after).await;
        verification.check("API balances = store", findings, summary);
    }
    if let Some(run) = inputs.run {
        let (findings, summary, resolved) = writes(inputs.store, run).await?;
        verification.check("acknowledged writes in the store", findings, summary);
        match (&run.balances_before, resolved) {
            (Some(before), Some(resolved)) => {
                let (findings, summary) = expected_balances(before, &resolved, &balances_after);
                verification.check("balances = before + the run's movements", findings, summary);
            }
            (None, _) => {}
            (Some(_), None) => verification.checks.push(CheckResult {
                name: "balances = before + the run's movements".into(),
                passed: true,
                summary: "skipped: some writes without a key got no answer, so their outcome is unknown".into(),
            }),
        }
    }
    Ok(verification)
}

fn violation_finding(violation: &Violation) -> Finding {
    let account = match violation {
        Violation::Conservation { .. } => None,
        Violation::NegativeBalance { account, .. }
        | Violation::HeldMismatch { account, .. }
        | Violation::BalanceMismatch { account, .. }
        | Violation::JournalBreak { account, .. }
        | Violation::DuplicateVersion { account, .. }
        | Violation::VersionBehindJournal { account, .. } => Some(*account),
    };
    Finding {
        check: "store invariants".into(),
        account,
        transaction: None,
        detail: violation.to_string(),
    }
}

/// Wait until the server has made everything it accepted durable.
pub async fn wait_until_idle(api: &ApiClient, timeout: Duration) -> CheckResult {
    let (findings, summary) = wait_idle(api, timeout).await;
    CheckResult {
        name: "server idle".into(),
        passed: findings.is_empty(),
        summary: findings.first().map_or(summary, |finding| finding.detail.clone()),
    }
}

async fn wait_idle(api: &ApiClient, timeout: Duration) -> (Vec<Finding>, String) {
    let started = tokio::time::Instant::now();
    let mut last: String;
    loop {
        match api.readiness().await {
            Ok(readiness) => {
                let depth = readiness["persister"]["queue_depth"].as_u64();
                if depth == Some(0) {
                    return (
                        Vec::new(),
                        format!(
                            "persister queue empty after {:.1} s ({} durability)",
                            started.elapsed().as_secs_f64(),
                            readiness["durability"].as_str().unwrap_or("?")
                        ),
                    );
                }
                last = format!("queue depth {depth:?}, status {}", readiness["status"]);
            }
            Err(error) => last = format!("{error:#}"),
        }
        if started.elapsed() >= timeout {
            let finding = Finding {
                check: "server idle".into(),
                account: None,
                transaction: None,
                detail: format!("not idle after {} s: {last}", timeout.as_secs()),
            };
            return (vec![finding], "the server did not become idle".into());
        }
        tokio::time::sleep(IDLE_POLL_INTERVAL).await;
    }
}

async fn api_balances(api: &ApiClient, rows: &BTreeMap<i64, i64>) -> (Vec<Finding>, String) {
    let users: Vec<(i64, i64)> = rows
        .iter()
        .filter(|(account, _)| **account > 0)
        .map(|(account, amount)| (*account, *amount))
        .collect();
    let checked = users.len();
    let findings: Vec<Finding> = futures_util::stream::iter(users)
        .map(|(account, stored)| async move {
            let detail = match api.balance(account).await {
                Ok((balance, _)) if balance == stored => return None,
                Ok((balance, _)) => format!(
                    "the API says {} but the store's balance row says {} (difference {})",
                    format_minor(balance),
                    format_minor(stored),
                    format_minor(balance - stored)
                ),
                Err(error) => format!("could not read the balance through the API: {error:#}"),
            };
            Some(Finding {
                check: "API balances = store".into(),
                account: Some(account),
                transaction: None,
                detail,
            })
        })
        .buffer_unordered(VERIFY_CONCURRENCY)
        .filter_map(|finding| async move { finding })
        .collect()
        .await;
    let summary = format!(
        "{checked} accounts read through /balances/current, {} differ",
        findings.len()
    );
    (sorted(findings), summary)
}

fn sorted(mut findings: Vec<Finding>) -> Vec<Finding> {
    findings.sort_by_key(|finding| (finding.account, finding.transaction));
    findings
}

/// A write whose effect on the balances is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Movement {
    pub from: i64,
    pub to: i64,
    pub amount_minor: i64,
}

/// How the stored record differs from the movement the client asked for, if it does.
fn mismatch(write: &WriteRecord, record: &TransactionRecord) -> Option<String> {
    let kind = match write.kind {
        OperationKind::Transfer => "transfer",
        OperationKind::Credit => "credit",
        OperationKind::Debit => "debit",
        OperationKind::Hold | OperationKind::Batch => "transfer",
        OperationKind::History | OperationKind::Balance => "read",
    };
    let stored = (
        record.kind.as_str(),
        record.from.get(),
        record.to.get(),
        record.amount.minor(),
    );
    let sent = (kind, write.from, write.to, write.amount_minor);
    (stored != sent).then(|| {
        format!(
            "stored as {} {}→{} {} but sent as {} {}→{} {}",
            stored.0,
            stored.1,
            stored.2,
            format_minor(stored.3),
            sent.0,
            sent.1,
            sent.2,
            format_minor(sent.3)
        )
    })
}

/// What checking one write found.
enum WriteCheck {
    /// As answered; with its movement when it moved money.
    Answered(Option<Movement>),
    /// The answer was lost: found applied (with its movement) or not applied.
    Resolved(Option<Movement>),
    /// No key and no answer: nobody can tell.
    Unresolvable,
    Bad(Finding),
}

fn movement(record: &TransactionRecord) -> Option<Movement> {
    (record.status == TransactionStatus::Completed).then(|| Movement {
        from: record.from.get(),
        to: record.to.get(),
        amount_minor: record.amount.minor(),
    })
}

async fn check_write(store: &Store, admin_id: i64, write: &WriteRecord) -> anyhow::Result<WriteCheck> {
    let bad = |transaction: Option<Uuid>, detail: String| {
        Ok(WriteCheck::Bad(Finding {
            check: "acknowledged writes in the store".into(),
            account: None,
            transaction,
            detail,
        }))
    };
    let found = match &write.key {
        Some(key) => store
            .find_by_idempotency_key(admin_id, key)
            .await
            .with_context(|| format!("looking up key {key}"))?,
        None => match &write.answer {
            WriteAnswer::Completed { id, .. } | WriteAnswer::Refused { id, .. } => store
                .transaction(*id)
                .await
                .with_context(|| format!("looking up {id}"))?,
            WriteAnswer::NotApplied { .. } => return Ok(WriteCheck::Answered(None)),
            WriteAnswer::Unknown { .. } => return Ok(WriteCheck::Unresolvable),
        },
    };
    let key_text = write
        .key
        .as_ref()
        .map_or_else(String::new, |key| format!(" (idempotency key {key})"));
    match (&write.answer, found) {
        (WriteAnswer::Completed { id, .. }, None) => bad(
            Some(*id),
            format!(
                "answered 201 but not in the store{key_text}: {} {}→{} {} was lost",
                write.kind.as_str(),
                write.from,
                write.to,
                format_minor(write.amount_minor)
            ),
        ),
        (WriteAnswer::Refused { id, status, .. }, None) => bad(
            Some(*id),
            format!("answered 422 ({status}) but not in the store{key_text}"),
        ),
        (WriteAnswer::Completed { id, .. } | WriteAnswer::Refused { id, .. }, Some(record)) if record.id != *id => bad(
            Some(*id),
            format!(
                "the client was answered {id} but the store holds {}{key_text}: applied twice or answered wrongly",
                record.id
            ),
        ),
        (WriteAnswer::Completed { id, .. }, Some(record)) if record.status != TransactionStatus::Completed => bad(
            Some(*id),
            format!("answered 201 but stored as {}", record.status.as_str()),
        ),
        (WriteAnswer::Refused { id, status, .. }, Some(record)) if record.status.as_str() != status => bad(
            Some(*id),
            format!("answered {status} but stored as {}", record.status.as_str()),
        ),
        (WriteAnswer::Completed { .. } | WriteAnswer::Refused { .. }, Some(record)) => match mismatch(write, &record) {
            Some(detail) => bad(Some(record.id), detail),
            None => Ok(WriteCheck::Answered(movement(&record))),
        },
        (WriteAnswer::NotApplied { code }, Some(record)) => bad(
            Some(record.id),
            format!(
                "answered {code} (nothing applied) yet stored as {}{key_text}",
                record.status.as_str()
            ),
        ),
        (WriteAnswer::NotApplied { .. }, None) => Ok(WriteCheck::Answered(None)),
        (WriteAnswer::Unknown { .. }, Some(record)) => match mismatch(write, &record) {
            Some(detail) => bad(Some(record.id), detail),
            None => Ok(WriteCheck::Resolved(movement(&record))),
        },
        (WriteAnswer::Unknown { .. }, None) => Ok(WriteCheck::Resolved(None)),
    }
}

/// Check every write; returns the findings, a summary, and every movement the run made
/// when all outcomes are known.
async fn writes(store: &Store, run: &RunRecord) -> anyhow::Result<(Vec<Finding>, String, Option<Vec<Movement>>)> {
    let checks: Vec<anyhow::Result<WriteCheck>> = futures_util::stream::iter(&run.writes)
        .map(|write| check_write(store, run.admin_id, write))
        .buffered(VERIFY_CONCURRENCY)
        .collect()
        .await;
    let mut findings = Vec::new();
    let mut movements = Vec::new();
    let (mut answered, mut resolved_applied, mut resolved_not_applied, mut unresolvable) = (0, 0, 0, 0);
    let mut replayed = 0;
    for (write, check) in run.writes.iter().zip(checks) {
        if matches!(write.answer, WriteAnswer::Completed { replayed: true, .. }) {
            replayed += 1;
        }
        match check? {
            WriteCheck::Answered(movement) => {
                answered += 1;
                movements.extend(movement);
            }
            WriteCheck::Resolved(Some(movement)) => {
                resolved_applied += 1;
                movements.push(movement);
            }
            WriteCheck::Resolved(None) => resolved_not_applied += 1,
            WriteCheck::Unresolvable => unresolvable += 1,
            WriteCheck::Bad(finding) => findings.push(finding),
        }
    }
    let keyed = run.writes.iter().filter(|write| write.key.is_some()).count();
    let retried = run.writes.iter().filter(|write| write.attempts > 1).count();
    let summary = format!(
        "{} writes ({keyed} with a key, {retried} retried, {replayed} answered by a replay): {answered} as answered; \
         answer lost: {resolved_applied} found applied once, {resolved_not_applied} not applied, {unresolvable} \
         unknowable (no key)",
        run.writes.len()
    );
    let movements = (unresolvable == 0).then_some(movements);
    Ok((sorted(findings), summary, movements))
}

/// Each account's balance before plus the run's movements, against the store after.
pub fn expected_balances(
    before: &BTreeMap<i64, i64>,
    movements: &[Movement],
    after: &BTreeMap<i64, i64>,
) -> (Vec<Finding>, String) {
    let mut moved: BTreeMap<i64, i64> = BTreeMap::new();
    for movement in movements {
        *moved.entry(movement.from).or_insert(0) -= movement.amount_minor;
        *moved.entry(movement.to).or_insert(0) += movement.amount_minor;
    }
    let mut findings = Vec::new();
    let accounts: std::collections::BTreeSet<i64> = before.keys().chain(moved.keys()).copied().collect();
    for account in &accounts {
        let start = before.get(account).copied().unwrap_or(0);
        let delta = moved.get(account).copied().unwrap_or(0);
        let stored = after.get(account).copied();
        if stored != Some(start + delta) {
            findings.push(Finding {
                check: "balances = before + the run's movements".into(),
                account: Some(*account),
                transaction: None,
                detail: format!(
                    "expected {} ({} before, {} moved by the run) but the store holds {}",
                    format_minor(start + delta),
                    format_minor(start),
                    format_minor(delta),
                    stored.map_or_else(|| "no row".to_string(), format_minor)
                ),
            });
        }
    }
    let summary = format!(
        "{} accounts, {} movements, {} differ",
        accounts.len(),
        movements.len(),
        findings.len()
    );
    (findings, summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_balances_add_the_runs_movements_to_the_balances_before() {
        let before = BTreeMap::from([(0, -300), (1, 100), (2, 200)]);
        let movements = [
            Movement {
                from: 1,
                to: 2,
                amount_minor: 30,
            },
            Movement {
                from: 0,
                to: 1,
                amount_minor: 5,
            },
        ];
        let after = BTreeMap::from([(0, -305), (1, 75), (2, 230)]);
        let (findings, summary) = expected_balances(&before, &movements, &after);
        assert!(findings.is_empty(), "{findings:?}");
        assert!(summary.contains("3 accounts, 2 movements, 0 differ"), "{summary}");
    }

    #[test]
    fn a_balance_off_by_a_cent_is_named_with_the_numbers() {
        let before = BTreeMap::from([(0, -300), (1, 100), (2, 200)]);
        let movements = [Movement {
            from: 1,
            to: 2,
            amount_minor: 30,
        }];
        let after = BTreeMap::from([(0, -300), (1, 70), (2, 231)]);
        let (findings, _) = expected_balances(&before, &movements, &after);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].account, Some(2));
        assert_eq!(
            findings[0].detail,
            "expected 2.30 (2.00 before, 0.30 moved by the run) but the store holds 2.31"
        );
    }

    #[test]
    fn the_report_names_each_failed_check_and_its_findings() {
        let mut verification = Verification::default();
        verification.check("store invariants", Vec::new(), "fine".into());
        let transaction = Uuid::now_v7();
        verification.check(
            "acknowledged writes in the store",
            vec![Finding {
                check: "acknowledged writes in the store".into(),
                account: None,
                transaction: Some(transaction),
                detail: "answered 201 but not in the store".into(),
            }],
            "1 write".into(),
        );
        assert!(!verification.passed());
        let text = verification.render();
        assert!(text.contains("ok   store invariants: fine"), "{text}");
        assert!(text.contains(&format!("transaction {transaction}: answered 201 but not in the store")));
        assert!(text.contains("VERIFICATION FAILED"));
    }
}
