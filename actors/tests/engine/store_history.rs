//! Reading the past back from the store: an account's history (filters and keyset
//! pages), its journal of balance changes, and its balance at a point in time, after a
//! scripted run of the real engine on a clock the test moves.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use tally_actors::{
    AccountId, AccountStatus, AuditContext, Engine, HistoryCursor, HistoryItem, HistoryQuery, JournalEntry,
    ManualClock, MoveRequest, Store, TransactionKind, TransactionRecord, TransactionStatus,
};
use uuid::Uuid;

use crate::on_both_stores;
use crate::support::{Backend, TestDb, account, amount, config, open_accounts};

/// How far the clock moves between two scripted movements.
const STEP: Duration = Duration::from_secs(1);

/// What the script did, in order: `records[k]` is step k + 1 of [`run_script`].
struct Script {
    engine: Engine,
    start: DateTime<Utc>,
    records: Vec<TransactionRecord>,
}

impl Script {
    fn store(&self) -> &Store {
        self.engine.store()
    }

    /// The time step `number` (1-based) ran at.
    fn time_of(&self, number: usize) -> DateTime<Utc> {
        self.records[number - 1].created_at
    }

    /// The ids of steps `numbers`, in the order given.
    fn ids(&self, numbers: &[usize]) -> Vec<Uuid> {
        numbers.iter().map(|number| self.records[number - 1].id).collect()
    }
}

/// Accounts 1, 2 and 3 (3 frozen), then, one clock step apart:
///
/// | step | movement                         | account 1                  |
/// |------|----------------------------------|----------------------------|
/// | 1    | credit 1 with 100.00             | v1, 100.00                 |
/// | 2    | transfer 30.00 from 1 to 2       | v2, 70.00                  |
/// | 3    | debit 500.00 from 1: failed      | refused at v2              |
/// | 4    | transfer 10.00 from 2 to 1       | v3, 80.00                  |
/// | 5    | transfer 5.00 from 1 to frozen 3 | v4 75.00, refund v5 80.00  |
/// | 6    | debit 20.00 from 1               | v6, 60.00                  |
/// | 7    | debit 1000.00 from 1: failed     | refused at v6              |
/// | 8    | credit 1 with 5.00               | v7, 65.00                  |
async fn run_script(db: &TestDb) -> Script {
    let start = Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let engine = Engine::open_with_clock(config(&db.url), clock.clone()).await.unwrap();
    open_accounts(&engine, 3, 0).await;
    engine
        .set_status(account(3), AccountStatus::Frozen, AuditContext::default())
        .await
        .unwrap();

    let steps = [
        MoveRequest::credit(account(1), amount(100_00)),
        MoveRequest::transfer(account(1), account(2), amount(30_00)),
        MoveRequest::debit(account(1), amount(500_00)),
        MoveRequest::transfer(account(2), account(1), amount(10_00)),
        MoveRequest::transfer(account(1), account(3), amount(5_00)),
        MoveRequest::debit(account(1), amount(20_00)),
        MoveRequest::debit(account(1), amount(1000_00)),
        MoveRequest::credit(account(1), amount(5_00)),
    ];
    let mut records = Vec::new();
    for request in steps {
        clock.advance(STEP);
        records.push(engine.execute(request).await.unwrap());
    }
    let statuses: Vec<TransactionStatus> = records.iter().map(|record| record.status).collect();
    use TransactionStatus::{Completed, Failed, RolledBack};
    assert_eq!(
        statuses,
        [
            Completed, Completed, Failed, Completed, RolledBack, Completed, Failed, Completed
        ]
    );
    assert_eq!(engine.balance(account(1)).await.unwrap().balance, 65_00);
    Script { engine, start, records }
}

fn ids(items: &[HistoryItem]) -> Vec<Uuid> {
    items.iter().map(|item| item.transaction.id).collect()
}

/// Every page of `query`'s history, `page_size` rows at a time, following the cursor.
async fn all_pages(store: &Store, query: &HistoryQuery, page_size: i64) -> Vec<HistoryItem> {
    let mut items: Vec<HistoryItem> = Vec::new();
    let mut query = HistoryQuery {
        limit: page_size,
        ..query.clone()
    };
    loop {
        let page = store.history(&query).await.unwrap();
        assert!(page.len() <= page_size as usize);
        let Some(last) = page.last() else {
            return items;
        };
        query.before = Some(last.cursor());
        items.extend(page);
    }
}

async fn an_accounts_history_lists_each_of_its_transactions_once_newest_first(backend: Backend) {
    let db = TestDb::create(backend).await;
    let script = run_script(&db).await;
    let store = script.store();

    let history = store.history(&HistoryQuery::new(account(1), 100)).await.unwrap();
    assert_eq!(
        ids(&history),
        script.ids(&[8, 7, 6, 5, 4, 3, 2, 1]),
        "newest first; a refused debit comes right after the entry it was refused at"
    );
    let positions: Vec<u64> = history.iter().map(|item| item.position).collect();
    assert_eq!(positions, [7, 6, 6, 4, 3, 2, 2, 1]);
    for item in &history {
        let stored = store.transaction(item.transaction.id).await.unwrap();
        assert_eq!(stored.as_ref(), Some(&item.transaction));
    }

    // Account 2 was the target of step 2 and the source of step 4.
    let history = store.history(&HistoryQuery::new(account(2), 100)).await.unwrap();
    assert_eq!(ids(&history), script.ids(&[4, 2]));
    assert_eq!(history.iter().map(|item| item.position).collect::<Vec<_>>(), [2, 1]);

    // The rolled-back transfer moved nothing into account 3: it is in the source's
    // history once (checked above) and not in the target's.
    assert!(
        store
            .history(&HistoryQuery::new(account(3), 100))
            .await
            .unwrap()
            .is_empty()
    );

    // The external account is the source of credits and the target of debits; failed
    // debits never reached it.
    let history = store
        .history(&HistoryQuery::new(AccountId::EXTERNAL, 100))
        .await
        .unwrap();
    assert_eq!(ids(&history), script.ids(&[8, 6, 1]));

    // A limit caps the page; an oversized one is clamped, a zero one is empty.
    let page = store.history(&HistoryQuery::new(account(1), 3)).await.unwrap();
    assert_eq!(ids(&page), script.ids(&[8, 7, 6]));
    assert_eq!(
        store
            .history(&HistoryQuery::new(account(1), i64::MAX))
            .await
            .unwrap()
            .len(),
        8
    );
    assert!(
        store
            .history(&HistoryQuery::new(account(1), 0))
            .await
            .unwrap()
            .is_empty()
    );
    script.engine.shutdown().await;
}

async fn history_filters_select_by_kind_status_time_and_counterparty(backend: Backend) {
    let db = TestDb::create(backend).await;
    let script = run_script(&db).await;
    let store = script.store();
    let everything = HistoryQuery::new(account(1), 100);

    let cases: Vec<(&str, HistoryQuery, Vec<usize>)> = vec![
        (
            "debits",
            HistoryQuery {
                kind: Some(TransactionKind::Debit),
                ..everything.clone()
            },
            vec![7, 6, 3],
        ),
        (
            "credits",
            HistoryQuery {
                kind: Some(TransactionKind::Credit),
                ..everything.clone()
            },
            vec![8, 1],
        ),
        (
            "transfers",
            HistoryQuery {
                kind: Some(TransactionKind::Transfer),
                ..everything.clone()
            },
            vec![5, 4, 2],
        ),
        (
            "completed",
            HistoryQuery {
                status: Some(TransactionStatus::Completed),
                ..everything.clone()
            },
            vec![8, 6, 4, 2, 1],
        ),
        (
            "failed",
            HistoryQuery {
                status: Some(TransactionStatus::Failed),
                ..everything.clone()
            },
            vec![7, 3],
        ),
        (
            "rolled back",
            HistoryQuery {
                status: Some(TransactionStatus::RolledBack),
                ..everything.clone()
            },
            vec![5],
        ),
        (
            "since step 3 until step 6, which is excluded",
            HistoryQuery {
                since: Some(script.time_of(3)),
                until: Some(script.time_of(6)),
                ..everything.clone()
            },
            vec![5, 4, 3],
        ),
        (
            "since after the last step",
            HistoryQuery {
                since: Some(script.time_of(8) + TimeDelta::microseconds(1)),
                ..everything.clone()
            },
            vec![],
        ),
        (
            "until the first step, which is excluded",
            HistoryQuery {
                until: Some(script.time_of(1)),
                ..everything.clone()
            },
            vec![],
        ),
        (
            "with account 2",
            HistoryQuery {
                counterparty: Some(account(2)),
                ..everything.clone()
            },
            vec![4, 2],
        ),
        (
            "with the external account",
            HistoryQuery {
                counterparty: Some(AccountId::EXTERNAL),
                ..everything.clone()
            },
            vec![8, 7, 6, 3, 1],
        ),
        (
            "with frozen account 3",
            HistoryQuery {
                counterparty: Some(account(3)),
                ..everything.clone()
            },
            vec![5],
        ),
        (
            "with itself",
            HistoryQuery {
                counterparty: Some(account(1)),
                ..everything.clone()
            },
            vec![],
        ),
        (
            "failed debits since step 4",
            HistoryQuery {
                kind: Some(TransactionKind::Debit),
                status: Some(TransactionStatus::Failed),
                since: Some(script.time_of(4)),
                ..everything.clone()
            },
            vec![7],
        ),
        (
            "completed transfers with account 2 before step 4's position",
            HistoryQuery {
                kind: Some(TransactionKind::Transfer),
                status: Some(TransactionStatus::Completed),
                counterparty: Some(account(2)),
                before: Some(HistoryCursor {
                    position: 3,
                    id: script.records[3].id,
                }),
                ..everything.clone()
            },
            vec![2],
        ),
    ];
    for (what, query, expected) in cases {
        let history = store.history(&query).await.unwrap();
        assert_eq!(ids(&history), script.ids(&expected), "{what}");
        for page_size in [1, 2] {
            assert_eq!(
                ids(&all_pages(store, &query, page_size).await),
                script.ids(&expected),
                "{what}, in pages of {page_size}"
            );
        }
    }

    // Account 3 was only ever the target of a rolled-back transfer.
    let frozen = HistoryQuery {
        status: Some(TransactionStatus::RolledBack),
        ..HistoryQuery::new(account(3), 100)
    };
    assert!(store.history(&frozen).await.unwrap().is_empty());
    script.engine.shutdown().await;
}

async fn history_pages_follow_the_cursor_without_gaps_or_duplicates(backend: Backend) {
    let db = TestDb::create(backend).await;
    let script = run_script(&db).await;
    let store = script.store();

    for account_id in [0, 1, 2] {
        let query = HistoryQuery::new(account(account_id), 100);
        let full = store.history(&query).await.unwrap();
        for page_size in 1..=4 {
            let paged = all_pages(store, &query, page_size).await;
            assert_eq!(paged, full, "account {account_id} in pages of {page_size}");
            let distinct: HashSet<Uuid> = ids(&paged).into_iter().collect();
            assert_eq!(distinct.len(), paged.len());
        }
    }

    // A cursor in the middle of a tie (two rows at position 6) continues with the
    // other row of the tie.
    let full = store.history(&HistoryQuery::new(account(1), 100)).await.unwrap();
    let after_step_7 = HistoryQuery {
        before: Some(full[1].cursor()),
        ..HistoryQuery::new(account(1), 2)
    };
    assert_eq!(ids(&store.history(&after_step_7).await.unwrap()), script.ids(&[6, 5]));
    script.engine.shutdown().await;
}

fn entry(record: &TransactionRecord, version: u64, delta: i64, balance_after: i64) -> JournalEntry {
    let counterparty = if record.from == account(1) {
        record.to
    } else {
        record.from
    };
    JournalEntry {
        transaction_id: record.id,
        kind: record.kind,
        version,
        delta,
        balance_after,
        counterparty,
        created_at: record.created_at,
    }
}

async fn the_journal_lists_balance_changes_with_a_debit_and_a_refund_for_a_rollback(backend: Backend) {
    let db = TestDb::create(backend).await;
    let script = run_script(&db).await;
    let store = script.store();
    let step = |number: usize| &script.records[number - 1];

    let expected = vec![
        entry(step(8), 7, 5_00, 65_00),
        entry(step(6), 6, -20_00, 60_00),
        entry(step(5), 5, 5_00, 80_00),
        entry(step(5), 4, -5_00, 75_00),
        entry(step(4), 3, 10_00, 80_00),
        entry(step(2), 2, -30_00, 70_00),
        entry(step(1), 1, 100_00, 100_00),
    ];
    let journal = store.journal(account(1), None, 100).await.unwrap();
    assert_eq!(journal, expected);
    for pair in journal.windows(2) {
        assert_eq!(
            pair[1].balance_after + pair[0].delta,
            pair[0].balance_after,
            "each balance after follows from the one before"
        );
    }
    let sum: i64 = journal.iter().map(|entry| entry.delta).sum();
    assert_eq!(sum, script.engine.balance(account(1)).await.unwrap().balance);

    for page_size in 1..=3 {
        let mut paged = Vec::new();
        let mut before = None;
        loop {
            let page = store.journal(account(1), before, page_size).await.unwrap();
            let Some(last) = page.last() else { break };
            before = Some(last.version);
            paged.extend(page);
        }
        assert_eq!(paged, expected, "in pages of {page_size}");
    }
    assert_eq!(store.journal(account(1), Some(4), 2).await.unwrap(), expected[4..6]);
    assert!(store.journal(account(1), Some(1), 10).await.unwrap().is_empty());
    assert!(store.journal(account(1), None, 0).await.unwrap().is_empty());

    // Account 2: credited by step 2, debited by step 4.
    let journal = store.journal(account(2), None, 100).await.unwrap();
    assert_eq!(
        journal
            .iter()
            .map(|entry| (entry.version, entry.delta, entry.balance_after, entry.counterparty))
            .collect::<Vec<_>>(),
        [(2, -10_00, 20_00, account(1)), (1, 30_00, 30_00, account(1))]
    );
    // Account 3 was only ever refused money.
    assert!(store.journal(account(3), None, 100).await.unwrap().is_empty());
    script.engine.shutdown().await;
}

async fn the_balance_at_a_time_is_the_latest_journal_entry_created_by_then(backend: Backend) {
    let db = TestDb::create(backend).await;
    let script = run_script(&db).await;
    let store = script.store();
    let half_step = TimeDelta::milliseconds(500);
    let balance_at = |at: DateTime<Utc>| async move {
        store
            .balance_at(account(1), at)
            .await
            .unwrap()
            .map(|entry| (entry.version, entry.balance_after))
    };

    assert_eq!(balance_at(script.start).await, None, "before the first movement");
    assert_eq!(balance_at(script.time_of(1) - TimeDelta::microseconds(1)).await, None);
    assert_eq!(balance_at(script.time_of(1)).await, Some((1, 100_00)));
    assert_eq!(balance_at(script.time_of(2) + half_step).await, Some((2, 70_00)));
    assert_eq!(
        balance_at(script.time_of(3) + half_step).await,
        Some((2, 70_00)),
        "a failed debit changes no balance"
    );
    assert_eq!(balance_at(script.time_of(4) + half_step).await, Some((3, 80_00)));
    assert_eq!(
        balance_at(script.time_of(5)).await,
        Some((5, 80_00)),
        "a rolled-back transfer is seen with its refund, never half done"
    );
    assert_eq!(balance_at(script.time_of(7) + half_step).await, Some((6, 60_00)));
    let last = store
        .balance_at(account(1), script.time_of(8) + TimeDelta::days(1))
        .await
        .unwrap()
        .expect("after the last movement");
    assert_eq!(last.balance_after, 65_00);
    assert_eq!(last.transaction_id, script.records[7].id);
    assert_eq!(
        last.balance_after,
        script.engine.balance(account(1)).await.unwrap().balance
    );

    let late = script.time_of(8) + TimeDelta::days(1);
    assert_eq!(
        store
            .balance_at(account(2), late)
            .await
            .unwrap()
            .map(|entry| entry.balance_after),
        Some(20_00)
    );
    assert_eq!(store.balance_at(account(3), late).await.unwrap(), None);
    script.engine.shutdown().await;
}

on_both_stores!(
    an_accounts_history_lists_each_of_its_transactions_once_newest_first,
    history_filters_select_by_kind_status_time_and_counterparty,
    history_pages_follow_the_cursor_without_gaps_or_duplicates,
    the_journal_lists_balance_changes_with_a_debit_and_a_refund_for_a_rollback,
    the_balance_at_a_time_is_the_latest_journal_entry_created_by_then,
);
