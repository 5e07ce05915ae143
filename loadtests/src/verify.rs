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
//!    or not. A hold is found the same way, and its stored status must match its
//!    settlement's answer (posted with the posted amount, voided, rolled back); when only
//!    the settlement's answer was lost, the hold's status tells what happened. A batch
//!    is found by its key (stored with leg 0) or its batch id, and
//!    [`Store::batch_legs`] must return exactly the legs sent, with the ids answered,
//!    all completed (201) or all failed (422);
//! 5. when the run knew the balances before it and the outcome of every write, each
//!    account's balance is its balance before plus the run's movements: a completed
//!    transfer, credit or debit; a posted hold's posted amount (a voided, refused or
//!    still pending hold moves nothing); every leg of a completed batch.
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
use crate::workload::{HoldSettlement, OperationKind, format_minor};

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
    /// The initiator of every write without its own [`WriteRecord::initiator`]: keys
    /// are scoped to this user.
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

const CHECK_WRITES: &str = "acknowledged writes in the store";

/// The type a write is stored as.
fn stored_kind(kind: OperationKind) -> &'static str {
    match kind {
        OperationKind::Transfer | OperationKind::Hold | OperationKind::Batch => "transfer",
        OperationKind::Credit => "credit",
        OperationKind::Debit => "debit",
        OperationKind::History | OperationKind::Balance => "read",
    }
}

/// How the stored record differs from the movement the client asked for, if it does.
/// `amount_minor` is compared with the record's held amount for a hold (its `amount` is
/// what was posted).
fn differs(sent: (&str, i64, i64, i64), record: &TransactionRecord) -> Option<String> {
    let amount = record.held_amount.unwrap_or(record.amount).minor();
    let stored = (record.kind.as_str(), record.from.get(), record.to.get(), amount);
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

fn mismatch(write: &WriteRecord, record: &TransactionRecord) -> Option<String> {
    differs(
        (stored_kind(write.kind), write.from, write.to, write.amount_minor),
        record,
    )
}

/// What checking one write found.
#[derive(Debug, PartialEq, Eq)]
enum WriteCheck {
    /// As answered, with the money it moved.
    Answered(Vec<Movement>),
    /// (Part of) the answer was lost, and the store tells what happened: `applied`
    /// when the lost request took effect (found in the store once), with the money
    /// moved.
    Resolved {
        applied: bool,
        movements: Vec<Movement>,
    },
    /// No key and no answer: nobody can tell.
    Unresolvable,
    Bad(Finding),
}

fn bad(transaction: Option<Uuid>, detail: String) -> WriteCheck {
    WriteCheck::Bad(Finding {
        check: CHECK_WRITES.into(),
        account: None,
        transaction,
        detail,
    })
}

fn movement(record: &TransactionRecord) -> Vec<Movement> {
    if record.moved_money() {
        vec![Movement {
            from: record.from.get(),
            to: record.to.get(),
            amount_minor: record.amount.minor(),
        }]
    } else {
        Vec::new()
    }
}

fn key_text(write: &WriteRecord) -> String {
    write
        .key
        .as_ref()
        .map_or_else(String::new, |key| format!(" (idempotency key {key})"))
}

/// The stored record of a single-transaction write (a transfer, credit, debit, or a
/// hold): by its key when it had one, else by the id it was answered with. `None` when
/// there is nothing to look it up by (no key, no id).
async fn find_record(
    store: &Store,
    initiator: i64,
    write: &WriteRecord,
) -> anyhow::Result<Option<Option<TransactionRecord>>> {
    Ok(Some(match &write.key {
        Some(key) => store
            .find_by_idempotency_key(initiator, key)
            .await
            .with_context(|| format!("looking up key {key}"))?,
        None => match &write.answer {
            WriteAnswer::Completed { id, .. } | WriteAnswer::Refused { id, .. } => store
                .transaction(*id)
                .await
                .with_context(|| format!("looking up {id}"))?,
            WriteAnswer::NotApplied { .. } | WriteAnswer::Unknown { .. } => return Ok(None),
        },
    }))
}

/// A stored batch: the batch id and its legs in leg order (empty: not stored).
type StoredBatch = (Option<Uuid>, Vec<TransactionRecord>);

/// The stored legs of a batch write: by its key (which the server stores with leg 0),
/// else by the batch id it was answered with.
async fn find_batch(store: &Store, initiator: i64, write: &WriteRecord) -> anyhow::Result<Option<StoredBatch>> {
    let batch_id = match &write.key {
        Some(key) => store
            .find_by_idempotency_key(initiator, key)
            .await
            .with_context(|| format!("looking up key {key}"))?
            .and_then(|first| first.batch_id),
        None => match &write.answer {
            WriteAnswer::Completed { id, .. } | WriteAnswer::Refused { id, .. } => Some(*id),
            WriteAnswer::NotApplied { .. } | WriteAnswer::Unknown { .. } => return Ok(None),
        },
    };
    let legs = match batch_id {
        Some(batch) => store
            .batch_legs(batch)
            .await
            .with_context(|| format!("reading the legs of batch {batch}"))?,
        None => Vec::new(),
    };
    Ok(Some((batch_id.filter(|_| !legs.is_empty()), legs)))
}

async fn check_write(store: &Store, admin_id: i64, write: &WriteRecord) -> anyhow::Result<WriteCheck> {
    // A key is scoped to the user who sent the write.
    let initiator = write.initiator.unwrap_or(admin_id);
    if write.kind == OperationKind::Batch {
        return Ok(match find_batch(store, initiator, write).await? {
            Some(stored) => judge_batch(write, stored),
            None => unfound(write),
        });
    }
    let Some(found) = find_record(store, initiator, write).await? else {
        return Ok(unfound(write));
    };
    Ok(match write.kind {
        OperationKind::Hold => judge_hold(write, found),
        _ => judge_single(write, found),
    })
}

/// A write without a key nor an id to look it up by.
fn unfound(write: &WriteRecord) -> WriteCheck {
    match write.answer {
        WriteAnswer::NotApplied { .. } => WriteCheck::Answered(Vec::new()),
        _ => WriteCheck::Unresolvable,
    }
}

/// A transfer, credit or debit against what the store holds for it.
fn judge_single(write: &WriteRecord, found: Option<TransactionRecord>) -> WriteCheck {
    let key_text = key_text(write);
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
            None => WriteCheck::Answered(movement(&record)),
        },
        (WriteAnswer::NotApplied { code }, Some(record)) => bad(
            Some(record.id),
            format!(
                "answered {code} (nothing applied) yet stored as {}{key_text}",
                record.status.as_str()
            ),
        ),
        (WriteAnswer::NotApplied { .. }, None) => WriteCheck::Answered(Vec::new()),
        (WriteAnswer::Unknown { .. }, Some(record)) => match mismatch(write, &record) {
            Some(detail) => bad(Some(record.id), detail),
            None => WriteCheck::Resolved {
                applied: true,
                movements: movement(&record),
            },
        },
        (WriteAnswer::Unknown { .. }, None) => WriteCheck::Resolved {
            applied: false,
            movements: Vec::new(),
        },
    }
}

/// A hold against what the store holds for it: the placement as answered, then the
/// settlement. A posted hold moves what was posted; a voided one, a refused one and one
/// still pending move nothing. When the settlement's answer was lost, the hold's stored
/// status tells what happened (its id is known, so this needs no key).
fn judge_hold(write: &WriteRecord, found: Option<TransactionRecord>) -> WriteCheck {
    let key_text = key_text(write);
    let record = match (&write.answer, found) {
        (WriteAnswer::Completed { id, .. } | WriteAnswer::Refused { id, .. }, None) => {
            return bad(
                Some(*id),
                format!(
                    "hold {}→{} {} answered {} but not in the store{key_text}",
                    write.from,
                    write.to,
                    format_minor(write.amount_minor),
                    if matches!(write.answer, WriteAnswer::Completed { .. }) {
                        "201"
                    } else {
                        "422"
                    }
                ),
            );
        }
        (WriteAnswer::Completed { id, .. } | WriteAnswer::Refused { id, .. }, Some(record)) if record.id != *id => {
            return bad(
                Some(*id),
                format!(
                    "the hold was answered {id} but the store holds {}{key_text}: placed twice or answered wrongly",
                    record.id
                ),
            );
        }
        (WriteAnswer::NotApplied { code }, Some(record)) => {
            return bad(
                Some(record.id),
                format!(
                    "hold answered {code} (nothing applied) yet stored as {}{key_text}",
                    record.status.as_str()
                ),
            );
        }
        (WriteAnswer::NotApplied { .. }, None) => return WriteCheck::Answered(Vec::new()),
        (WriteAnswer::Unknown { .. }, None) => {
            return WriteCheck::Resolved {
                applied: false,
                movements: Vec::new(),
            };
        }
        (_, Some(record)) => record,
    };
    if let Some(detail) = mismatch(write, &record) {
        return bad(Some(record.id), detail);
    }
    let status = record.status;
    match &write.answer {
        WriteAnswer::Refused { status: answered, .. } => {
            if status.as_str() != answered {
                return bad(
                    Some(record.id),
                    format!("hold answered {answered} but stored as {}", status.as_str()),
                );
            }
            WriteCheck::Answered(Vec::new())
        }
        // Placed, with the answer lost: the run never settled it, so it can only be
        // refused, pending, or voided by its expiry.
        WriteAnswer::Unknown { .. } => match status {
            TransactionStatus::Failed | TransactionStatus::Pending | TransactionStatus::Voided => {
                WriteCheck::Resolved {
                    applied: true,
                    movements: Vec::new(),
                }
            }
            _ => bad(
                Some(record.id),
                format!(
                    "a hold the run never settled (its placement went unanswered) is stored as {}",
                    status.as_str()
                ),
            ),
        },
        WriteAnswer::Completed { .. } => judge_settlement(write, &record),
        WriteAnswer::NotApplied { .. } => unreachable!("handled above"),
    }
}

/// The settlement of a hold whose placement was answered 201, against its stored record.
fn judge_settlement(write: &WriteRecord, record: &TransactionRecord) -> WriteCheck {
    let status = record.status;
    let Some(settlement) = &write.settlement else {
        return bad(
            Some(record.id),
            "the hold was placed but the run recorded no settlement for it".into(),
        );
    };
    let wanted = match settlement.settle {
        HoldSettlement::Post | HoldSettlement::PostPartial { .. } => TransactionStatus::Posted,
        HoldSettlement::Void => TransactionStatus::Voided,
    };
    let captured = settlement.settle.captured_minor(write.amount_minor);
    // A finding when the hold is posted with another amount than the run posted.
    let posted_right = || {
        (status == TransactionStatus::Posted && record.amount.minor() != captured).then(|| {
            bad(
                Some(record.id),
                format!(
                    "posted {} of {} held but stored with {} posted",
                    format_minor(captured),
                    format_minor(write.amount_minor),
                    format_minor(record.amount.minor())
                ),
            )
        })
    };
    match &settlement.answer {
        WriteAnswer::Completed { id, .. } if *id != record.id => bad(
            Some(record.id),
            format!(
                "the {} of the hold was answered for transaction {id}",
                settlement.settle.as_str()
            ),
        ),
        WriteAnswer::Completed { .. } if status != wanted => bad(
            Some(record.id),
            format!(
                "the {} was answered 200 but the hold is stored as {}",
                settlement.settle.as_str(),
                status.as_str()
            ),
        ),
        WriteAnswer::Completed { .. } => posted_right().unwrap_or_else(|| WriteCheck::Answered(movement(record))),
        WriteAnswer::Refused { status: answered, .. } if status.as_str() != answered => bad(
            Some(record.id),
            format!(
                "the {} was answered {answered} but the hold is stored as {}",
                settlement.settle.as_str(),
                status.as_str()
            ),
        ),
        WriteAnswer::Refused { .. } => WriteCheck::Answered(Vec::new()),
        // Refused before anything happened (409: no longer pending, expired): nothing
        // moved, so the hold must not be posted.
        WriteAnswer::NotApplied { code } => match status {
            TransactionStatus::Pending | TransactionStatus::Voided => WriteCheck::Answered(Vec::new()),
            _ => bad(
                Some(record.id),
                format!(
                    "the {} was answered {code} (nothing applied) yet the hold is stored as {}",
                    settlement.settle.as_str(),
                    status.as_str()
                ),
            ),
        },
        WriteAnswer::Unknown { .. } => match status {
            TransactionStatus::Pending => WriteCheck::Resolved {
                applied: false,
                movements: Vec::new(),
            },
            // Voided by the request, or (when a post was asked) by its expiry.
            TransactionStatus::Voided => WriteCheck::Resolved {
                applied: wanted == TransactionStatus::Voided,
                movements: Vec::new(),
            },
            TransactionStatus::Posted if wanted == TransactionStatus::Posted => {
                posted_right().unwrap_or_else(|| WriteCheck::Resolved {
                    applied: true,
                    movements: movement(record),
                })
            }
            TransactionStatus::RolledBack if wanted == TransactionStatus::Posted => WriteCheck::Resolved {
                applied: true,
                movements: Vec::new(),
            },
            _ => bad(
                Some(record.id),
                format!(
                    "the run asked for a {} (answer lost) but the hold is stored as {}",
                    settlement.settle.as_str(),
                    status.as_str()
                ),
            ),
        },
    }
}

/// How the stored legs differ from the legs sent (and the ids answered), if they do:
/// the leg's id, and what is wrong. Legs are matched by their stored place in the batch.
fn legs_differ(write: &WriteRecord, legs: &[TransactionRecord]) -> Option<(Option<Uuid>, String)> {
    for (index, sent) in write.legs.iter().enumerate() {
        let place = u32::try_from(index).ok();
        let Some(stored) = legs.iter().find(|leg| leg.leg == place) else {
            return Some((
                sent.id,
                format!(
                    "leg {index} of {} is not in the store ({} legs are)",
                    write.legs.len(),
                    legs.len()
                ),
            ));
        };
        if let Some(id) = sent.id
            && stored.id != id
        {
            return Some((
                Some(id),
                format!(
                    "leg {index} was answered {id} but the store holds {} in its place",
                    stored.id
                ),
            ));
        }
        if let Some(detail) = differs(("transfer", sent.from, sent.to, sent.amount_minor), stored) {
            return Some((Some(stored.id), format!("leg {index}: {detail}")));
        }
    }
    (legs.len() != write.legs.len()).then(|| {
        (
            None,
            format!(
                "the batch has {} legs in the store, {} sent",
                legs.len(),
                write.legs.len()
            ),
        )
    })
}

/// A batch against its stored legs: a 201 moved every leg, a refused batch (every leg
/// `failed`) moved nothing.
fn judge_batch(write: &WriteRecord, (stored_id, legs): StoredBatch) -> WriteCheck {
    let key_text = key_text(write);
    let every = |wanted: TransactionStatus| legs.iter().find(|leg| leg.status != wanted);
    match (&write.answer, stored_id) {
        (WriteAnswer::Completed { id, .. } | WriteAnswer::Refused { id, .. }, None) => bad(
            Some(*id),
            format!(
                "batch answered {} but not in the store{key_text}: its {} legs were lost",
                if matches!(write.answer, WriteAnswer::Completed { .. }) {
                    "201"
                } else {
                    "422"
                },
                write.legs.len()
            ),
        ),
        (WriteAnswer::Completed { id, .. } | WriteAnswer::Refused { id, .. }, Some(stored)) if stored != *id => bad(
            Some(*id),
            format!(
                "the client was answered batch {id} but the store holds batch {stored}{key_text}: applied twice or answered wrongly"
            ),
        ),
        (WriteAnswer::Completed { .. } | WriteAnswer::Refused { .. } | WriteAnswer::Unknown { .. }, Some(stored)) => {
            if let Some((transaction, detail)) = legs_differ(write, &legs) {
                return bad(transaction.or(Some(stored)), format!("batch {stored}: {detail}"));
            }
            match &write.answer {
                WriteAnswer::Completed { .. } => match every(TransactionStatus::Completed) {
                    Some(leg) => bad(
                        Some(leg.id),
                        format!(
                            "batch {stored} answered 201 but leg {:?} is stored as {}",
                            leg.leg,
                            leg.status.as_str()
                        ),
                    ),
                    None => WriteCheck::Answered(legs.iter().flat_map(movement).collect()),
                },
                WriteAnswer::Refused { .. } => match every(TransactionStatus::Failed) {
                    Some(leg) => bad(
                        Some(leg.id),
                        format!(
                            "batch {stored} answered 422 (nothing applied) but leg {:?} is stored as {}",
                            leg.leg,
                            leg.status.as_str()
                        ),
                    ),
                    None => WriteCheck::Answered(Vec::new()),
                },
                _ => {
                    let completed = every(TransactionStatus::Completed).is_none();
                    if !completed && let Some(leg) = every(TransactionStatus::Failed) {
                        return bad(
                            Some(leg.id),
                            format!(
                                "batch {stored} is half applied: leg {:?} is stored as {}",
                                leg.leg,
                                leg.status.as_str()
                            ),
                        );
                    }
                    WriteCheck::Resolved {
                        applied: true,
                        movements: legs.iter().flat_map(movement).collect(),
                    }
                }
            }
        }
        (WriteAnswer::NotApplied { code }, Some(stored)) => bad(
            Some(stored),
            format!("batch answered {code} (nothing applied) yet stored{key_text}"),
        ),
        (WriteAnswer::NotApplied { .. }, None) => WriteCheck::Answered(Vec::new()),
        (WriteAnswer::Unknown { .. }, None) => WriteCheck::Resolved {
            applied: false,
            movements: Vec::new(),
        },
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
            WriteCheck::Answered(moved) => {
                answered += 1;
                movements.extend(moved);
            }
            WriteCheck::Resolved {
                applied,
                movements: moved,
            } => {
                if applied {
                    resolved_applied += 1;
                } else {
                    resolved_not_applied += 1;
                }
                movements.extend(moved);
            }
            WriteCheck::Unresolvable => unresolvable += 1,
            WriteCheck::Bad(finding) => findings.push(finding),
        }
    }
    let keyed = run.writes.iter().filter(|write| write.key.is_some()).count();
    let retried = run.writes.iter().filter(|write| write.attempts > 1).count();
    let holds = run
        .writes
        .iter()
        .filter(|write| write.kind == OperationKind::Hold)
        .count();
    let batches: Vec<&WriteRecord> = run
        .writes
        .iter()
        .filter(|write| write.kind == OperationKind::Batch)
        .collect();
    let legs: usize = batches.iter().map(|write| write.legs.len()).sum();
    let summary = format!(
        "{} writes ({keyed} with a key, {retried} retried, {replayed} answered by a replay; {holds} holds, {} \
         batches of {legs} legs): {answered} as answered; answer lost: {resolved_applied} found applied once, \
         {resolved_not_applied} not applied, {unresolvable} unknowable (no key)",
        run.writes.len(),
        batches.len()
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
    use crate::client::{LegRecord, SettlementRecord};
    use tally_actors::{AccountId, Amount, TransactionKind};

    /// A stored transfer (a hold when `held` is given, a batch leg when `batch` is).
    fn stored(
        id: Uuid,
        status: TransactionStatus,
        (from, to, amount): (i64, i64, i64),
        held: Option<i64>,
        batch: Option<(Uuid, u32)>,
    ) -> TransactionRecord {
        let now = chrono::Utc::now();
        TransactionRecord {
            id,
            kind: TransactionKind::Transfer,
            status,
            from: AccountId::new(from).unwrap(),
            to: AccountId::new(to).unwrap(),
            amount: Amount::from_minor(amount).unwrap(),
            debit: None,
            credit: None,
            refund: None,
            refused_version: None,
            failure_reason: None,
            initiator: Some(1),
            idempotency_key: None,
            created_at: now,
            completed_at: now,
            held_amount: held.map(|held| Amount::from_minor(held).unwrap()),
            expires_at: None,
            parent_id: None,
            batch_id: batch.map(|(batch, _)| batch),
            leg: batch.map(|(_, leg)| leg),
        }
    }

    fn completed(id: Uuid) -> WriteAnswer {
        WriteAnswer::Completed { id, replayed: false }
    }

    fn lost() -> WriteAnswer {
        WriteAnswer::Unknown {
            last_error: "transport_other".into(),
        }
    }

    /// A hold of 5.00 from 1 to 2, placed as `placed`, settled as `settle` with `answer`.
    fn hold(placed: WriteAnswer, settlement: Option<(HoldSettlement, WriteAnswer)>) -> WriteRecord {
        WriteRecord {
            sequence: 3,
            kind: OperationKind::Hold,
            from: 1,
            to: 2,
            amount_minor: 500,
            key: None,
            initiator: None,
            attempts: 1,
            answer: placed,
            settlement: settlement.map(|(settle, answer)| SettlementRecord {
                settle,
                key: None,
                attempts: 1,
                answer,
            }),
            legs: Vec::new(),
        }
    }

    fn held(id: Uuid, status: TransactionStatus, posted: i64) -> Option<TransactionRecord> {
        Some(stored(id, status, (1, 2, posted), Some(500), None))
    }

    const PARTIAL: HoldSettlement = HoldSettlement::PostPartial { amount_minor: 120 };

    fn moved(from: i64, to: i64, amount_minor: i64) -> Movement {
        Movement { from, to, amount_minor }
    }

    fn finding(check: WriteCheck) -> Finding {
        match check {
            WriteCheck::Bad(finding) => finding,
            other => panic!("expected a finding, got {other:?}"),
        }
    }

    #[test]
    fn a_posted_hold_moves_what_was_posted_and_a_voided_one_moves_nothing() {
        let id = Uuid::now_v7();
        let posted = hold(completed(id), Some((PARTIAL, completed(id))));
        assert_eq!(
            judge_hold(&posted, held(id, TransactionStatus::Posted, 120)),
            WriteCheck::Answered(vec![moved(1, 2, 120)])
        );
        let whole = hold(completed(id), Some((HoldSettlement::Post, completed(id))));
        assert_eq!(
            judge_hold(&whole, held(id, TransactionStatus::Posted, 500)),
            WriteCheck::Answered(vec![moved(1, 2, 500)])
        );
        let voided = hold(completed(id), Some((HoldSettlement::Void, completed(id))));
        assert_eq!(
            judge_hold(&voided, held(id, TransactionStatus::Voided, 500)),
            WriteCheck::Answered(Vec::new())
        );
        let refused = hold(
            WriteAnswer::Refused {
                id,
                status: "failed".into(),
                code: "insufficient_funds".into(),
            },
            None,
        );
        assert_eq!(
            judge_hold(&refused, held(id, TransactionStatus::Failed, 500)),
            WriteCheck::Answered(Vec::new())
        );
    }

    #[test]
    fn a_hold_stored_otherwise_than_answered_is_named_with_the_numbers() {
        let id = Uuid::now_v7();
        let posted = hold(completed(id), Some((PARTIAL, completed(id))));
        let wrong_amount = finding(judge_hold(&posted, held(id, TransactionStatus::Posted, 500)));
        assert_eq!(wrong_amount.transaction, Some(id));
        assert_eq!(
            wrong_amount.detail,
            "posted 1.20 of 5.00 held but stored with 5.00 posted"
        );
        let not_posted = finding(judge_hold(&posted, held(id, TransactionStatus::Voided, 500)));
        assert!(not_posted.detail.contains("stored as voided"), "{}", not_posted.detail);
        let lost = finding(judge_hold(&posted, None));
        assert!(
            lost.detail.contains("answered 201 but not in the store"),
            "{}",
            lost.detail
        );
        let twice = finding(judge_hold(
            &posted,
            held(Uuid::now_v7(), TransactionStatus::Posted, 120),
        ));
        assert!(twice.detail.contains("placed twice"), "{}", twice.detail);
        let other_accounts = Some(stored(id, TransactionStatus::Posted, (1, 3, 120), Some(500), None));
        let elsewhere = finding(judge_hold(&posted, other_accounts));
        assert!(
            elsewhere.detail.contains("stored as transfer 1→3"),
            "{}",
            elsewhere.detail
        );
    }

    #[test]
    fn a_lost_settlement_is_resolved_from_the_status_of_the_hold() {
        let id = Uuid::now_v7();
        let post = hold(completed(id), Some((PARTIAL, lost())));
        assert_eq!(
            judge_hold(&post, held(id, TransactionStatus::Posted, 120)),
            WriteCheck::Resolved {
                applied: true,
                movements: vec![moved(1, 2, 120)]
            }
        );
        assert_eq!(
            judge_hold(&post, held(id, TransactionStatus::Pending, 500)),
            WriteCheck::Resolved {
                applied: false,
                movements: Vec::new()
            }
        );
        let void = hold(completed(id), Some((HoldSettlement::Void, lost())));
        assert_eq!(
            judge_hold(&void, held(id, TransactionStatus::Voided, 500)),
            WriteCheck::Resolved {
                applied: true,
                movements: Vec::new()
            }
        );
        let posted_instead = finding(judge_hold(&void, held(id, TransactionStatus::Posted, 500)));
        assert!(
            posted_instead
                .detail
                .contains("asked for a void (answer lost) but the hold is stored as posted"),
            "{}",
            posted_instead.detail
        );
    }

    #[test]
    fn a_hold_whose_placement_went_unanswered_may_only_be_pending_refused_or_voided() {
        let id = Uuid::now_v7();
        let unanswered = hold(lost(), None);
        assert_eq!(
            judge_hold(&unanswered, held(id, TransactionStatus::Pending, 500)),
            WriteCheck::Resolved {
                applied: true,
                movements: Vec::new()
            }
        );
        assert_eq!(
            judge_hold(&unanswered, None),
            WriteCheck::Resolved {
                applied: false,
                movements: Vec::new()
            }
        );
        let posted = finding(judge_hold(&unanswered, held(id, TransactionStatus::Posted, 500)));
        assert!(posted.detail.contains("never settled"), "{}", posted.detail);
        let refused_yet_stored = hold(
            WriteAnswer::NotApplied {
                code: "rate_limited".into(),
            },
            None,
        );
        let stored_anyway = finding(judge_hold(
            &refused_yet_stored,
            held(id, TransactionStatus::Pending, 500),
        ));
        assert!(
            stored_anyway.detail.contains("nothing applied"),
            "{}",
            stored_anyway.detail
        );
    }

    /// A batch of two transfers (1→2 0.30, 3→4 0.70) answered `answer`, legs with `ids`.
    fn batch(answer: WriteAnswer, ids: [Option<Uuid>; 2]) -> WriteRecord {
        let leg = |(from, to, amount_minor), id| LegRecord {
            from,
            to,
            amount_minor,
            id,
        };
        WriteRecord {
            sequence: 9,
            kind: OperationKind::Batch,
            from: 0,
            to: 0,
            amount_minor: 100,
            key: Some("run-x-9".into()),
            initiator: None,
            attempts: 1,
            answer,
            settlement: None,
            legs: vec![leg((1, 2, 30), ids[0]), leg((3, 4, 70), ids[1])],
        }
    }

    fn stored_legs(batch: Uuid, ids: [Uuid; 2], status: TransactionStatus) -> Vec<TransactionRecord> {
        vec![
            stored(ids[0], status, (1, 2, 30), None, Some((batch, 0))),
            stored(ids[1], status, (3, 4, 70), None, Some((batch, 1))),
        ]
    }

    #[test]
    fn a_completed_batch_moves_every_leg_and_a_refused_one_nothing() {
        let (id, legs) = (Uuid::now_v7(), [Uuid::now_v7(), Uuid::now_v7()]);
        let done = batch(completed(id), legs.map(Some));
        assert_eq!(
            judge_batch(&done, (Some(id), stored_legs(id, legs, TransactionStatus::Completed))),
            WriteCheck::Answered(vec![moved(1, 2, 30), moved(3, 4, 70)])
        );
        let refused = batch(
            WriteAnswer::Refused {
                id,
                status: "failed".into(),
                code: "insufficient_funds".into(),
            },
            legs.map(Some),
        );
        assert_eq!(
            judge_batch(&refused, (Some(id), stored_legs(id, legs, TransactionStatus::Failed))),
            WriteCheck::Answered(Vec::new())
        );
        let unanswered = batch(lost(), [None, None]);
        assert_eq!(
            judge_batch(
                &unanswered,
                (Some(id), stored_legs(id, legs, TransactionStatus::Completed))
            ),
            WriteCheck::Resolved {
                applied: true,
                movements: vec![moved(1, 2, 30), moved(3, 4, 70)]
            }
        );
        assert_eq!(
            judge_batch(&unanswered, (None, Vec::new())),
            WriteCheck::Resolved {
                applied: false,
                movements: Vec::new()
            }
        );
    }

    #[test]
    fn a_batch_stored_otherwise_than_answered_is_named_down_to_the_leg() {
        let (id, legs) = (Uuid::now_v7(), [Uuid::now_v7(), Uuid::now_v7()]);
        let done = batch(completed(id), legs.map(Some));
        let mut missing = stored_legs(id, legs, TransactionStatus::Completed);
        missing.pop();
        let missing = finding(judge_batch(&done, (Some(id), missing)));
        assert_eq!(missing.transaction, Some(legs[1]));
        assert!(
            missing.detail.contains("leg 1 of 2 is not in the store"),
            "{}",
            missing.detail
        );
        let gone = finding(judge_batch(&done, (None, Vec::new())));
        assert_eq!(gone.transaction, Some(id));
        assert!(
            gone.detail.contains("answered 201 but not in the store"),
            "{}",
            gone.detail
        );
        let failed = finding(judge_batch(
            &done,
            (Some(id), stored_legs(id, legs, TransactionStatus::Failed)),
        ));
        assert!(
            failed
                .detail
                .contains("answered 201 but leg Some(0) is stored as failed"),
            "{}",
            failed.detail
        );
        let other = Uuid::now_v7();
        let twice = finding(judge_batch(
            &done,
            (Some(other), stored_legs(other, legs, TransactionStatus::Completed)),
        ));
        assert!(twice.detail.contains("applied twice"), "{}", twice.detail);
        let mut half = stored_legs(id, legs, TransactionStatus::Completed);
        half[1].status = TransactionStatus::Failed;
        let half = finding(judge_batch(&batch(lost(), [None, None]), (Some(id), half)));
        assert!(half.detail.contains("half applied"), "{}", half.detail);
        let mut changed = stored_legs(id, legs, TransactionStatus::Completed);
        changed[0].amount = Amount::from_minor(31).unwrap();
        let changed = finding(judge_batch(&done, (Some(id), changed)));
        assert_eq!(changed.transaction, Some(legs[0]));
        assert!(
            changed.detail.contains("leg 0: stored as transfer 1→2 0.31"),
            "{}",
            changed.detail
        );
    }

    #[test]
    fn run_records_of_holds_and_batches_read_back_as_written() {
        let id = Uuid::now_v7();
        let record = RunRecord {
            run_id: "run-x".into(),
            admin_id: 1,
            balances_before: None,
            writes: vec![
                hold(completed(id), Some((PARTIAL, completed(id)))),
                batch(completed(id), [Some(id), None]),
            ],
        };
        let text = serde_json::to_string(&record).unwrap();
        assert!(
            text.contains(r#""settle":{"action":"post_partial","amount_minor":120}"#),
            "{text}"
        );
        let back: RunRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, record);
        // A run.json written before holds and batches existed still reads.
        let old = r#"{"run_id":"r","admin_id":1,"balances_before":null,"writes":[{"sequence":0,"kind":"transfer",
            "from":1,"to":2,"amount_minor":5,"key":null,"attempts":1,"answer":"not_applied","code":"rate_limited"}]}"#;
        let old: RunRecord = serde_json::from_str(old).unwrap();
        assert_eq!(old.writes[0].settlement, None);
        assert!(old.writes[0].legs.is_empty());
    }

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
