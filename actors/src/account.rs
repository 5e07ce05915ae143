//! The balance logic of one account: a plain synchronous state machine.
//!
//! The account actor (`actor.rs`) owns one [`AccountState`] and calls these functions for
//! every message; they never await and never read the clock (the time of a change is
//! passed in), so every outcome is unit-testable on its own. Each durable change bumps
//! the account's `version` and returns an [`AccountEffect`]: the account as it is after
//! the change, which the persister writes and which orders the account's journal.
//!
//! What an account enforces, atomically with everything else it does:
//! * its status (frozen and closed accounts move no money);
//! * its rules: an overdraft limit (how far below zero the balance may go), a maximum
//!   balance, and a daily debit cap — what leaves the account (debits and holds) per
//!   calendar day in UTC, a hold released the day it was placed giving its amount back;
//! * open holds (`held`, durable) and the reservations of atomic batches in flight
//!   (`reserved` out and `incoming` in, in memory only: a crash aborts the batch).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::{AccountId, Amount};
use crate::record::TransactionRecord;

/// Whether an account may move money.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// Debits and credits are accepted.
    Active,
    /// Nothing moves in or out, but a refund of the account's own refused transfer and
    /// the release of its holds.
    Frozen,
    /// Final: the account held nothing when it was closed and never moves money again.
    Closed,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Frozen => "frozen",
            AccountStatus::Closed => "closed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(AccountStatus::Active),
            "frozen" => Some(AccountStatus::Frozen),
            "closed" => Some(AccountStatus::Closed),
            _ => None,
        }
    }
}

/// Why an account refused a movement. These are business outcomes, recorded with the
/// transaction (`failure_reason`), not errors of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The source's available balance (balance − held) is below the amount.
    InsufficientFunds,
    /// The account is frozen.
    AccountFrozen,
    /// The account is closed.
    AccountClosed,
    /// No such account in the store.
    AccountNotFound,
    /// The credit would overflow the target's balance.
    BalanceOverflow,
    /// The target could not be reached (its store was unavailable when it had to be
    /// activated), so the debit was refunded rather than left waiting.
    TargetUnavailable,
    /// The debit would take the balance below the account's overdraft limit.
    OverOverdraftLimit,
    /// The credit would take the balance above the account's maximum.
    OverMaxBalance,
    /// The debit would take the day's debits above the account's daily cap.
    OverDailyCap,
    /// A hold reached its expiry time before it was posted or voided.
    HoldExpired,
    /// Another leg of the atomic batch was refused, so this one did not apply.
    BatchAborted,
}

const REFUSALS: [Refusal; 11] = [
    Refusal::InsufficientFunds,
    Refusal::AccountFrozen,
    Refusal::AccountClosed,
    Refusal::AccountNotFound,
    Refusal::BalanceOverflow,
    Refusal::TargetUnavailable,
    Refusal::OverOverdraftLimit,
    Refusal::OverMaxBalance,
    Refusal::OverDailyCap,
    Refusal::HoldExpired,
    Refusal::BatchAborted,
];

impl Refusal {
    /// Every refusal, for registries and tests.
    pub const ALL: &'static [Refusal] = &REFUSALS;

    /// The stable snake_case code stored in `failure_reason` and shown to clients.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::InsufficientFunds => "insufficient_funds",
            Refusal::AccountFrozen => "account_frozen",
            Refusal::AccountClosed => "account_closed",
            Refusal::AccountNotFound => "account_not_found",
            Refusal::BalanceOverflow => "balance_overflow",
            Refusal::TargetUnavailable => "target_unavailable",
            Refusal::OverOverdraftLimit => "over_overdraft_limit",
            Refusal::OverMaxBalance => "over_max_balance",
            Refusal::OverDailyCap => "over_daily_cap",
            Refusal::HoldExpired => "hold_expired",
            Refusal::BatchAborted => "batch_aborted",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        REFUSALS.into_iter().find(|refusal| refusal.code() == code)
    }

    pub(crate) fn for_status(status: AccountStatus) -> Option<Self> {
        match status {
            AccountStatus::Active => None,
            AccountStatus::Frozen => Some(Refusal::AccountFrozen),
            AccountStatus::Closed => Some(Refusal::AccountClosed),
        }
    }
}

/// Why a change of status or rules was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatusChangeRefusal {
    #[error("the external system account has no status or rules to change")]
    ExternalAccount,
    #[error("a closed account stays closed")]
    AccountClosed,
    #[error("only an account with a zero balance and nothing held can be closed")]
    BalanceNotZero,
    #[error("an overdraft limit, a maximum balance and a daily cap cannot be negative, and a cap must be positive")]
    InvalidRule,
}

/// Why a hold could not be posted or voided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldRefusal {
    /// The account has no open hold with that id (never placed, or already posted,
    /// voided or expired).
    NotOpen,
    /// The amount to post is more than the hold.
    AmountAboveHold,
    /// Money cannot leave the account now (frozen, closed).
    Refused(Refusal),
}

/// Limits an account enforces. The defaults enforce nothing beyond "no overdraft".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRules {
    /// How far below zero the balance may go, in minor units.
    pub overdraft_limit: i64,
    /// The highest balance credits may reach, in minor units.
    pub max_balance: Option<i64>,
    /// The most that may leave the account per calendar day (UTC), in minor units.
    pub daily_debit_cap: Option<i64>,
}

impl AccountRules {
    fn is_valid(&self) -> bool {
        self.overdraft_limit >= 0
            && self.max_balance.is_none_or(|max| max >= 0)
            && self.daily_debit_cap.is_none_or(|cap| cap > 0)
    }
}

/// What left the account on one calendar day (UTC), for the daily cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyUsage {
    /// Days since the Unix epoch.
    pub day: i64,
    pub debited: i64,
}

/// The calendar day (UTC) of `at`, as days since the Unix epoch.
pub fn day_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(86_400)
}

/// An account as it is right after one applied change: what the persister writes to
/// `balances`, and, with the movement that caused it, one entry of the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountEffect {
    pub account: AccountId,
    /// The account's version after the change; versions count every change by one, so
    /// the persister can tell whether all earlier changes of the account are written.
    pub version: u64,
    pub balance: i64,
    pub held: i64,
    pub status: AccountStatus,
    pub rules: AccountRules,
    pub usage: DailyUsage,
    pub at: DateTime<Utc>,
}

/// The in-memory state of one account, owned by exactly one account actor.
///
/// What every account uses is held inline; rules, holds and batch reservations, which
/// most accounts never have, live in a box that exists only while one of them differs
/// from its default. A million plain accounts stay small (the actor's whole task fits
/// a smaller allocation), and nothing about the logic depends on where a field lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountState {
    pub id: AccountId,
    pub balance: i64,
    pub status: AccountStatus,
    pub version: u64,
    pub usage: DailyUsage,
    /// `None`: every field of [`AccountExtras`] at its default.
    extras: Option<Box<AccountExtras>>,
}

/// The parts of an account's state most accounts leave at their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct AccountExtras {
    /// The sum of the open holds: not available for debits.
    held: i64,
    rules: AccountRules,
    /// Open holds placed on this account (as source), by transaction id.
    holds: BTreeMap<Uuid, TransactionRecord>,
    /// Reserved by atomic batches in flight to leave this account.
    reserved: i64,
    /// Reserved by atomic batches in flight to arrive in this account.
    incoming: i64,
}

static NO_HOLDS: BTreeMap<Uuid, TransactionRecord> = BTreeMap::new();

impl AccountState {
    /// A new account: empty, active, version 0, no rules.
    pub fn new(id: AccountId) -> Self {
        AccountState {
            id,
            balance: 0,
            status: AccountStatus::Active,
            version: 0,
            usage: DailyUsage::default(),
            extras: None,
        }
    }

    /// The account with these rules and open holds (`held` is their sum).
    pub fn with_rules_and_holds(
        mut self,
        rules: AccountRules,
        held: i64,
        holds: BTreeMap<Uuid, TransactionRecord>,
    ) -> Self {
        let extras = self.extras_mut();
        extras.rules = rules;
        extras.held = held;
        extras.holds = holds;
        self.tidy();
        self
    }

    /// The sum of the open holds: not available for debits.
    pub fn held(&self) -> i64 {
        self.extras.as_ref().map_or(0, |extras| extras.held)
    }

    pub fn rules(&self) -> AccountRules {
        self.extras.as_ref().map(|extras| extras.rules).unwrap_or_default()
    }

    /// Open holds placed on this account (as source), by transaction id.
    pub fn holds(&self) -> &BTreeMap<Uuid, TransactionRecord> {
        self.extras.as_ref().map_or(&NO_HOLDS, |extras| &extras.holds)
    }

    /// Reserved by atomic batches in flight to leave this account.
    pub fn reserved(&self) -> i64 {
        self.extras.as_ref().map_or(0, |extras| extras.reserved)
    }

    /// Reserved by atomic batches in flight to arrive in this account.
    pub fn incoming(&self) -> i64 {
        self.extras.as_ref().map_or(0, |extras| extras.incoming)
    }

    fn extras_mut(&mut self) -> &mut AccountExtras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// Drop the extras once they are all back at their defaults.
    fn tidy(&mut self) {
        if self
            .extras
            .as_deref()
            .is_some_and(|extras| *extras == AccountExtras::default())
        {
            self.extras = None;
        }
    }

    /// Money that a debit may take now: the balance less holds and reservations, plus
    /// the overdraft limit.
    pub fn available(&self) -> i64 {
        self.balance - self.held() - self.reserved() + self.rules().overdraft_limit
    }

    /// The day's debits so far, as of `at`.
    fn debited_on(&self, at: DateTime<Utc>) -> i64 {
        if self.usage.day == day_of(at) {
            self.usage.debited
        } else {
            0
        }
    }

    fn count_debit(&mut self, amount: i64, at: DateTime<Utc>) {
        let today = day_of(at);
        let debited = self.debited_on(at) + amount;
        self.usage = DailyUsage { day: today, debited };
    }

    /// Give back to the day's budget what a debit of `placed` took, when that was today.
    fn uncount_debit(&mut self, amount: i64, placed: DateTime<Utc>, at: DateTime<Utc>) {
        if day_of(placed) == day_of(at) && self.usage.day == day_of(at) {
            self.usage.debited = (self.usage.debited - amount).max(0);
        }
    }

    /// Whether `amount` may leave the account now.
    fn check_debit(&self, amount: Amount, at: DateTime<Utc>) -> Result<(), Refusal> {
        if self.id.is_external() {
            return Ok(());
        }
        if let Some(refusal) = Refusal::for_status(self.status) {
            return Err(refusal);
        }
        if self.available() < amount.minor() {
            return Err(if self.rules().overdraft_limit > 0 {
                Refusal::OverOverdraftLimit
            } else {
                Refusal::InsufficientFunds
            });
        }
        if let Some(cap) = self.rules().daily_debit_cap
            && self.debited_on(at) + amount.minor() > cap
        {
            return Err(Refusal::OverDailyCap);
        }
        Ok(())
    }

    /// Whether `amount` may arrive now (with `incoming` already promised).
    fn check_credit(&self, amount: Amount) -> Result<i64, Refusal> {
        if !self.id.is_external()
            && let Some(refusal) = Refusal::for_status(self.status)
        {
            return Err(refusal);
        }
        let balance = self
            .balance
            .checked_add(amount.minor())
            .ok_or(Refusal::BalanceOverflow)?;
        if !self.id.is_external()
            && let Some(max) = self.rules().max_balance
            && balance + self.incoming() > max
        {
            return Err(Refusal::OverMaxBalance);
        }
        Ok(balance)
    }

    /// Take `amount` out of the account. Only the external account has no limits.
    pub fn debit(&mut self, amount: Amount, at: DateTime<Utc>) -> Result<AccountEffect, Refusal> {
        self.check_debit(amount, at)?;
        let balance = self
            .balance
            .checked_sub(amount.minor())
            .ok_or(Refusal::BalanceOverflow)?;
        if !self.id.is_external() {
            self.count_debit(amount.minor(), at);
        }
        Ok(self.commit(balance, at))
    }

    /// Put `amount` into the account.
    pub fn credit(&mut self, amount: Amount, at: DateTime<Utc>) -> Result<AccountEffect, Refusal> {
        let balance = self.check_credit(amount)?;
        Ok(self.commit(balance, at))
    }

    /// Give back `amount` that [`debit`](Self::debit) took from this account at
    /// `debited_at` for a transfer whose credit was refused. It cannot be refused: the
    /// money left this very account a moment ago, whatever its status is now.
    pub fn refund(&mut self, amount: Amount, debited_at: DateTime<Utc>, at: DateTime<Utc>) -> AccountEffect {
        let balance = self
            .balance
            .checked_add(amount.minor())
            .expect("a refund restores money this account held a moment ago");
        if !self.id.is_external() {
            self.uncount_debit(amount.minor(), debited_at, at);
        }
        self.commit(balance, at)
    }

    /// Reserve the hold `record` (a pending transfer from this account): its amount
    /// stops being available but stays in the balance.
    pub fn place_hold(&mut self, mut record: TransactionRecord, at: DateTime<Utc>) -> Result<AccountEffect, Refusal> {
        self.check_debit(record.amount, at)?;
        // The hold sits in the account's history at the version that reserves it.
        record.refused_version = Some(self.version + 1);
        self.count_debit(record.amount.minor(), at);
        let extras = self.extras_mut();
        extras.held += record.amount.minor();
        extras.holds.insert(record.id, record);
        let balance = self.balance;
        Ok(self.commit(balance, at))
    }

    /// Capture `amount` of the hold `id` (all of it when `None`): the amount leaves the
    /// balance and the whole hold is released. Returns the effect and the hold.
    pub fn capture_hold(
        &mut self,
        id: Uuid,
        amount: Option<Amount>,
        at: DateTime<Utc>,
    ) -> Result<(AccountEffect, TransactionRecord), HoldRefusal> {
        let hold = self.holds().get(&id).ok_or(HoldRefusal::NotOpen)?;
        let held = hold.amount;
        let captured = amount.unwrap_or(held);
        if captured > held {
            return Err(HoldRefusal::AmountAboveHold);
        }
        if let Some(refusal) = Refusal::for_status(self.status) {
            return Err(HoldRefusal::Refused(refusal));
        }
        let extras = self.extras_mut();
        let hold = extras.holds.remove(&id).expect("checked above");
        extras.held -= held.minor();
        self.uncount_debit(held.minor() - captured.minor(), hold.created_at, at);
        let balance = self.balance - captured.minor();
        Ok((self.commit(balance, at), hold))
    }

    /// Release the hold `id` whole (a void or an expiry). Always possible, whatever the
    /// status: releasing moves no money.
    pub fn release_hold(
        &mut self,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<(AccountEffect, TransactionRecord), HoldRefusal> {
        let extras = self.extras.as_deref_mut().ok_or(HoldRefusal::NotOpen)?;
        let hold = extras.holds.remove(&id).ok_or(HoldRefusal::NotOpen)?;
        extras.held -= hold.amount.minor();
        self.uncount_debit(hold.amount.minor(), hold.created_at, at);
        let balance = self.balance;
        Ok((self.commit(balance, at), hold))
    }

    /// Promise `amount` to leave with an atomic batch: checked like a debit, kept in
    /// memory only until [`settle_reserved`](Self::settle_reserved) or
    /// [`unreserve`](Self::unreserve).
    pub fn reserve(&mut self, amount: Amount, at: DateTime<Utc>) -> Result<(), Refusal> {
        self.check_debit(amount, at)?;
        self.extras_mut().reserved += amount.minor();
        if !self.id.is_external() {
            self.count_debit(amount.minor(), at);
        }
        Ok(())
    }

    /// Drop a promise made by [`reserve`](Self::reserve) at `reserved_at`.
    pub fn unreserve(&mut self, amount: Amount, reserved_at: DateTime<Utc>, at: DateTime<Utc>) {
        self.extras_mut().reserved -= amount.minor();
        debug_assert!(self.reserved() >= 0, "reservations never go below zero");
        if !self.id.is_external() {
            self.uncount_debit(amount.minor(), reserved_at, at);
        }
        self.tidy();
    }

    /// Keep a promise made by [`reserve`](Self::reserve): the amount leaves. Cannot be
    /// refused: it was checked when promised.
    pub fn settle_reserved(&mut self, amount: Amount, at: DateTime<Utc>) -> AccountEffect {
        self.extras_mut().reserved -= amount.minor();
        debug_assert!(self.reserved() >= 0, "reservations never go below zero");
        let balance = self
            .balance
            .checked_sub(amount.minor())
            .expect("a reserved amount was checked against the balance");
        self.commit(balance, at)
    }

    /// Promise room for `amount` to arrive with an atomic batch (status and maximum
    /// balance are checked now).
    pub fn reserve_incoming(&mut self, amount: Amount) -> Result<(), Refusal> {
        self.check_credit(amount)?;
        self.extras_mut().incoming += amount.minor();
        Ok(())
    }

    pub fn unreserve_incoming(&mut self, amount: Amount) {
        self.extras_mut().incoming -= amount.minor();
        debug_assert!(self.incoming() >= 0, "reservations never go below zero");
        self.tidy();
    }

    /// Keep a promise made by [`reserve_incoming`](Self::reserve_incoming).
    pub fn settle_incoming(&mut self, amount: Amount, at: DateTime<Utc>) -> AccountEffect {
        self.extras_mut().incoming -= amount.minor();
        let balance = self
            .balance
            .checked_add(amount.minor())
            .expect("room for an incoming amount was checked when promised");
        self.commit(balance, at)
    }

    /// Freeze, unfreeze or close the account.
    pub fn set_status(
        &mut self,
        status: AccountStatus,
        at: DateTime<Utc>,
    ) -> Result<AccountEffect, StatusChangeRefusal> {
        if self.id.is_external() {
            return Err(StatusChangeRefusal::ExternalAccount);
        }
        if self.status == AccountStatus::Closed {
            return Err(StatusChangeRefusal::AccountClosed);
        }
        if status == AccountStatus::Closed
            && (self.balance != 0 || self.held() != 0 || self.reserved() != 0 || self.incoming() != 0)
        {
            return Err(StatusChangeRefusal::BalanceNotZero);
        }
        self.status = status;
        let balance = self.balance;
        Ok(self.commit(balance, at))
    }

    /// Replace the account's rules. They apply to what happens from now on: a balance
    /// already beyond a new limit stays, but cannot move further beyond it.
    pub fn set_rules(&mut self, rules: AccountRules, at: DateTime<Utc>) -> Result<AccountEffect, StatusChangeRefusal> {
        if self.id.is_external() {
            return Err(StatusChangeRefusal::ExternalAccount);
        }
        if self.status == AccountStatus::Closed {
            return Err(StatusChangeRefusal::AccountClosed);
        }
        if !rules.is_valid() {
            return Err(StatusChangeRefusal::InvalidRule);
        }
        self.extras_mut().rules = rules;
        let balance = self.balance;
        Ok(self.commit(balance, at))
    }

    /// Whether the actor may stop: nothing of a batch in flight lives only in memory.
    pub fn is_at_rest(&self) -> bool {
        self.reserved() == 0 && self.incoming() == 0
    }

    /// The current state as an effect, without changing anything.
    pub fn snapshot(&self, at: DateTime<Utc>) -> AccountEffect {
        AccountEffect {
            account: self.id,
            version: self.version,
            balance: self.balance,
            held: self.held(),
            status: self.status,
            rules: self.rules(),
            usage: self.usage,
            at,
        }
    }

    fn commit(&mut self, balance: i64, at: DateTime<Utc>) -> AccountEffect {
        debug_assert!(self.held() >= 0, "held is never negative");
        debug_assert_eq!(
            self.held(),
            self.holds().values().map(|hold| hold.amount.minor()).sum::<i64>(),
            "held is the sum of the open holds"
        );
        self.tidy();
        self.balance = balance;
        self.version += 1;
        self.snapshot(at)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;
    use crate::record::{TransactionKind, TransactionStatus};

    fn amount(minor: i64) -> Amount {
        Amount::from_minor(minor).unwrap()
    }

    fn account(balance: i64) -> AccountState {
        AccountState {
            balance,
            ..AccountState::new(AccountId::new(7).unwrap())
        }
    }

    fn now() -> DateTime<Utc> {
        // 2023-11-14T22:13:20Z: late in a UTC day, so "tomorrow" is close.
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn hold(minor: i64, at: DateTime<Utc>) -> TransactionRecord {
        TransactionRecord {
            id: Uuid::now_v7(),
            kind: TransactionKind::Transfer,
            status: TransactionStatus::Pending,
            from: AccountId::new(7).unwrap(),
            to: AccountId::new(8).unwrap(),
            amount: amount(minor),
            debit: None,
            credit: None,
            refund: None,
            refused_version: None,
            failure_reason: None,
            initiator: None,
            idempotency_key: None,
            created_at: at,
            completed_at: at,
            held_amount: Some(amount(minor)),
            expires_at: None,
            parent_id: None,
            batch_id: None,
            leg: None,
        }
    }

    #[test]
    fn debit_within_available_balance_is_applied_and_bumps_the_version() {
        let mut state = account(100);
        let effect = state.debit(amount(40), now()).unwrap();
        assert_eq!((effect.balance, effect.version), (60, 1));
        assert_eq!(state.balance, 60);
    }

    #[test]
    fn debit_of_the_whole_balance_leaves_exactly_zero() {
        let mut state = account(100);
        assert_eq!(state.debit(amount(100), now()).unwrap().balance, 0);
    }

    #[test]
    fn debit_beyond_available_balance_is_insufficient_funds_and_changes_nothing() {
        let mut state = account(100);
        let before = state.clone();
        assert_eq!(state.debit(amount(101), now()), Err(Refusal::InsufficientFunds));
        assert_eq!(state, before);
    }

    #[test]
    fn frozen_and_closed_accounts_refuse_debits_and_credits() {
        for (status, refusal) in [
            (AccountStatus::Frozen, Refusal::AccountFrozen),
            (AccountStatus::Closed, Refusal::AccountClosed),
        ] {
            let mut state = account(100);
            state.status = status;
            assert_eq!(state.debit(amount(1), now()), Err(refusal), "{status:?} debit");
            assert_eq!(state.credit(amount(1), now()), Err(refusal), "{status:?} credit");
            assert_eq!(state.version, 0);
        }
    }

    #[test]
    fn credit_that_would_overflow_is_refused() {
        let mut state = account(i64::MAX - 5);
        assert_eq!(state.credit(amount(6), now()), Err(Refusal::BalanceOverflow));
        assert_eq!(state.credit(amount(5), now()).unwrap().balance, i64::MAX);
    }

    #[test]
    fn the_external_account_may_go_negative_but_not_overflow() {
        let mut external = AccountState::new(AccountId::EXTERNAL);
        assert_eq!(external.debit(amount(500), now()).unwrap().balance, -500);
        external.balance = i64::MIN + 10;
        assert_eq!(external.debit(amount(11), now()), Err(Refusal::BalanceOverflow));
    }

    #[test]
    fn refund_restores_the_debit_even_on_a_frozen_account() {
        let mut state = account(100);
        state.debit(amount(40), now()).unwrap();
        state.status = AccountStatus::Frozen;
        let effect = state.refund(amount(40), now(), now());
        assert_eq!((effect.balance, effect.version), (100, 2));
    }

    #[test]
    fn status_changes_are_versioned_and_closing_needs_an_empty_account() {
        let mut state = account(10);
        assert_eq!(state.set_status(AccountStatus::Frozen, now()).unwrap().version, 1);
        assert_eq!(
            state.set_status(AccountStatus::Closed, now()),
            Err(StatusChangeRefusal::BalanceNotZero)
        );
        state.balance = 0;
        assert_eq!(
            state.set_status(AccountStatus::Closed, now()).unwrap().status,
            AccountStatus::Closed
        );
        assert_eq!(
            state.set_status(AccountStatus::Active, now()),
            Err(StatusChangeRefusal::AccountClosed)
        );
        let mut external = AccountState::new(AccountId::EXTERNAL);
        assert_eq!(
            external.set_status(AccountStatus::Frozen, now()),
            Err(StatusChangeRefusal::ExternalAccount)
        );
    }

    #[test]
    fn refusal_codes_round_trip() {
        for refusal in Refusal::ALL {
            assert_eq!(Refusal::parse(refusal.code()), Some(*refusal));
        }
        for status in [AccountStatus::Active, AccountStatus::Frozen, AccountStatus::Closed] {
            assert_eq!(AccountStatus::parse(status.as_str()), Some(status));
        }
    }

    #[test]
    fn an_overdraft_limit_lets_the_balance_go_that_far_below_zero_and_no_further() {
        let mut state = account(10);
        state
            .set_rules(
                AccountRules {
                    overdraft_limit: 50,
                    ..Default::default()
                },
                now(),
            )
            .unwrap();
        assert_eq!(state.debit(amount(60), now()).unwrap().balance, -50);
        assert_eq!(state.debit(amount(1), now()), Err(Refusal::OverOverdraftLimit));
    }

    #[test]
    fn a_maximum_balance_refuses_credits_beyond_it_counting_promised_arrivals() {
        let mut state = account(90);
        state
            .set_rules(
                AccountRules {
                    max_balance: Some(100),
                    ..Default::default()
                },
                now(),
            )
            .unwrap();
        assert_eq!(state.credit(amount(11), now()), Err(Refusal::OverMaxBalance));
        state.reserve_incoming(amount(5)).unwrap();
        assert_eq!(state.credit(amount(6), now()), Err(Refusal::OverMaxBalance));
        assert_eq!(state.credit(amount(5), now()).unwrap().balance, 95);
        assert_eq!(state.settle_incoming(amount(5), now()).balance, 100);
    }

    #[test]
    fn the_daily_cap_is_hit_exactly_at_its_boundary_and_resets_the_next_day() {
        let mut state = account(1_000);
        state
            .set_rules(
                AccountRules {
                    daily_debit_cap: Some(100),
                    ..Default::default()
                },
                now(),
            )
            .unwrap();
        state.debit(amount(60), now()).unwrap();
        state.place_hold(hold(30, now()), now()).unwrap();
        assert_eq!(state.debit(amount(11), now()), Err(Refusal::OverDailyCap));
        assert_eq!(
            state.debit(amount(10), now()).unwrap().balance,
            930,
            "exactly the cap is allowed"
        );
        assert_eq!(state.debit(amount(1), now()), Err(Refusal::OverDailyCap));
        let tomorrow = now() + TimeDelta::hours(2);
        assert_ne!(day_of(tomorrow), day_of(now()));
        assert_eq!(state.debit(amount(100), tomorrow).unwrap().balance, 830);
    }

    #[test]
    fn a_hold_reserves_without_moving_and_a_partial_capture_releases_the_rest() {
        let mut state = account(100);
        let record = hold(40, now());
        let id = record.id;
        let placed = state.place_hold(record, now()).unwrap();
        assert_eq!((placed.balance, placed.held, state.available()), (100, 40, 60));
        assert_eq!(state.debit(amount(61), now()), Err(Refusal::InsufficientFunds));
        assert_eq!(
            state.capture_hold(id, Some(amount(41)), now()),
            Err(HoldRefusal::AmountAboveHold)
        );
        let (captured, _) = state.capture_hold(id, Some(amount(25)), now()).unwrap();
        assert_eq!((captured.balance, captured.held), (75, 0));
        assert_eq!(state.capture_hold(id, None, now()), Err(HoldRefusal::NotOpen));
    }

    #[test]
    fn a_released_hold_gives_back_availability_and_the_day_s_budget() {
        let mut state = account(100);
        state
            .set_rules(
                AccountRules {
                    daily_debit_cap: Some(50),
                    ..Default::default()
                },
                now(),
            )
            .unwrap();
        let record = hold(50, now());
        let id = record.id;
        state.place_hold(record, now()).unwrap();
        assert_eq!(state.debit(amount(1), now()), Err(Refusal::OverDailyCap));
        let (released, _) = state.release_hold(id, now()).unwrap();
        assert_eq!((released.balance, released.held), (100, 0));
        assert_eq!(state.debit(amount(50), now()).unwrap().balance, 50);
    }

    #[test]
    fn a_frozen_account_keeps_its_holds_refuses_captures_and_may_release_them() {
        let mut state = account(100);
        let record = hold(40, now());
        let id = record.id;
        state.place_hold(record, now()).unwrap();
        state.set_status(AccountStatus::Frozen, now()).unwrap();
        assert_eq!(
            state.capture_hold(id, None, now()),
            Err(HoldRefusal::Refused(Refusal::AccountFrozen))
        );
        assert_eq!(state.held(), 40);
        assert_eq!(state.release_hold(id, now()).unwrap().0.held, 0);
    }

    #[test]
    fn rules_holds_and_reservations_take_room_only_while_they_are_set() {
        let mut state = account(100);
        state.debit(amount(10), now()).unwrap();
        state.credit(amount(10), now()).unwrap();
        assert!(state.extras.is_none(), "plain moves need no extras");

        let id = state.place_hold(hold(40, now()), now()).unwrap().account;
        assert_eq!(id, state.id);
        assert!(state.extras.is_some());
        let open = *state.holds().keys().next().unwrap();
        state.release_hold(open, now()).unwrap();
        assert!(state.extras.is_none(), "a released hold leaves nothing behind");

        state.reserve(amount(5), now()).unwrap();
        state.reserve_incoming(amount(5)).unwrap();
        state.unreserve(amount(5), now(), now());
        assert!(state.extras.is_some(), "money is still promised to arrive");
        state.unreserve_incoming(amount(5));
        assert!(state.extras.is_none());

        let rules = AccountRules {
            overdraft_limit: 50,
            ..AccountRules::default()
        };
        state.set_rules(rules, now()).unwrap();
        assert_eq!(state.rules(), rules);
        assert_eq!(state.available(), 150);
        state.set_rules(AccountRules::default(), now()).unwrap();
        assert!(state.extras.is_none(), "default rules are the absence of rules");
    }

    #[test]
    fn batch_reservations_are_checked_like_debits_and_kept_in_memory_only() {
        let mut state = account(100);
        state.reserve(amount(70), now()).unwrap();
        assert_eq!(state.reserve(amount(31), now()), Err(Refusal::InsufficientFunds));
        assert!(!state.is_at_rest());
        assert_eq!(state.version, 0, "a reservation is not a durable change");
        let settled = state.settle_reserved(amount(70), now());
        assert_eq!((settled.balance, settled.version), (30, 1));
        state.reserve(amount(30), now()).unwrap();
        state.unreserve(amount(30), now(), now());
        assert!(state.is_at_rest());
        assert_eq!(state.balance, 30);
    }

    #[test]
    fn invalid_rules_and_rules_on_the_external_account_are_refused() {
        let mut state = account(0);
        for rules in [
            AccountRules {
                overdraft_limit: -1,
                ..Default::default()
            },
            AccountRules {
                max_balance: Some(-1),
                ..Default::default()
            },
            AccountRules {
                daily_debit_cap: Some(0),
                ..Default::default()
            },
        ] {
            assert_eq!(
                state.set_rules(rules, now()),
                Err(StatusChangeRefusal::InvalidRule),
                "{rules:?}"
            );
        }
        let mut external = AccountState::new(AccountId::EXTERNAL);
        assert_eq!(
            external.set_rules(AccountRules::default(), now()),
            Err(StatusChangeRefusal::ExternalAccount)
        );
    }
}
