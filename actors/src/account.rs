//! The balance logic of one account: a plain synchronous state machine.
//!
//! The account actor (`actor.rs`) owns one [`AccountState`] and calls these functions for
//! every message; they never await and never read the clock (the time of a change is
//! passed in), so every outcome is unit-testable on its own. Each applied change bumps
//! the account's `version` and returns an [`AccountEffect`]: the account as it is after
//! the change, which the persister writes and which orders the account's journal.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::money::{AccountId, Amount};

/// Whether an account may move money.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// Debits and credits are accepted.
    Active,
    /// Nothing moves in or out, but a refund of the account's own refused transfer.
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
}

impl Refusal {
    /// The stable snake_case code stored in `failure_reason` and shown to clients.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::InsufficientFunds => "insufficient_funds",
            Refusal::AccountFrozen => "account_frozen",
            Refusal::AccountClosed => "account_closed",
            Refusal::AccountNotFound => "account_not_found",
            Refusal::BalanceOverflow => "balance_overflow",
            Refusal::TargetUnavailable => "target_unavailable",
        }
    }

    pub fn parse(code: &str) -> Option<Self> {
        [
            Refusal::InsufficientFunds,
            Refusal::AccountFrozen,
            Refusal::AccountClosed,
            Refusal::AccountNotFound,
            Refusal::BalanceOverflow,
            Refusal::TargetUnavailable,
        ]
        .into_iter()
        .find(|refusal| refusal.code() == code)
    }

    fn for_status(status: AccountStatus) -> Option<Self> {
        match status {
            AccountStatus::Active => None,
            AccountStatus::Frozen => Some(Refusal::AccountFrozen),
            AccountStatus::Closed => Some(Refusal::AccountClosed),
        }
    }
}

/// Why a status change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatusChangeRefusal {
    #[error("the external system account cannot change status")]
    ExternalAccount,
    #[error("a closed account stays closed")]
    AccountClosed,
    #[error("only an account with a zero balance and nothing held can be closed")]
    BalanceNotZero,
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
    pub at: DateTime<Utc>,
}

/// The in-memory state of one account, owned by exactly one account actor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountState {
    pub id: AccountId,
    pub balance: i64,
    /// Reserved and not available for debits. Never negative, and never more than a
    /// non-negative balance.
    pub held: i64,
    pub status: AccountStatus,
    pub version: u64,
}

impl AccountState {
    /// A new account: empty, active, version 0.
    pub fn new(id: AccountId) -> Self {
        AccountState {
            id,
            balance: 0,
            held: 0,
            status: AccountStatus::Active,
            version: 0,
        }
    }

    /// Money that a debit may take now.
    pub fn available(&self) -> i64 {
        self.balance - self.held
    }

    /// Take `amount` out of the account. Only the external account may go below zero.
    pub fn debit(&mut self, amount: Amount, at: DateTime<Utc>) -> Result<AccountEffect, Refusal> {
        if !self.id.is_external() {
            if let Some(refusal) = Refusal::for_status(self.status) {
                return Err(refusal);
            }
            if self.available() < amount.minor() {
                return Err(Refusal::InsufficientFunds);
            }
        }
        let balance = self
            .balance
            .checked_sub(amount.minor())
            .ok_or(Refusal::BalanceOverflow)?;
        Ok(self.commit(balance, at))
    }

    /// Put `amount` into the account.
    pub fn credit(&mut self, amount: Amount, at: DateTime<Utc>) -> Result<AccountEffect, Refusal> {
        if !self.id.is_external()
            && let Some(refusal) = Refusal::for_status(self.status)
        {
            return Err(refusal);
        }
        let balance = self
            .balance
            .checked_add(amount.minor())
            .ok_or(Refusal::BalanceOverflow)?;
        Ok(self.commit(balance, at))
    }

    /// Give back `amount` that [`debit`](Self::debit) took from this account for a
    /// transfer whose credit was refused. It cannot be refused: the money left this
    /// very account a moment ago, whatever its status is now.
    pub fn refund(&mut self, amount: Amount, at: DateTime<Utc>) -> AccountEffect {
        let balance = self
            .balance
            .checked_add(amount.minor())
            .expect("a refund restores money this account held a moment ago");
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
        if status == AccountStatus::Closed && (self.balance != 0 || self.held != 0) {
            return Err(StatusChangeRefusal::BalanceNotZero);
        }
        self.status = status;
        let balance = self.balance;
        Ok(self.commit(balance, at))
    }

    /// The current state as an effect, without changing anything.
    pub fn snapshot(&self, at: DateTime<Utc>) -> AccountEffect {
        AccountEffect {
            account: self.id,
            version: self.version,
            balance: self.balance,
            held: self.held,
            status: self.status,
            at,
        }
    }

    fn commit(&mut self, balance: i64, at: DateTime<Utc>) -> AccountEffect {
        debug_assert!(self.held >= 0, "held is never negative");
        self.balance = balance;
        self.version += 1;
        self.snapshot(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
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
    fn held_money_is_not_available_for_debits() {
        let mut state = account(100);
        state.held = 30;
        assert_eq!(state.debit(amount(71), now()), Err(Refusal::InsufficientFunds));
        assert_eq!(state.debit(amount(70), now()).unwrap().balance, 30);
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
        let effect = state.refund(amount(40), now());
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
        for refusal in [
            Refusal::InsufficientFunds,
            Refusal::AccountFrozen,
            Refusal::AccountClosed,
            Refusal::AccountNotFound,
            Refusal::BalanceOverflow,
            Refusal::TargetUnavailable,
        ] {
            assert_eq!(Refusal::parse(refusal.code()), Some(refusal));
        }
        for status in [AccountStatus::Active, AccountStatus::Frozen, AccountStatus::Closed] {
            assert_eq!(AccountStatus::parse(status.as_str()), Some(status));
        }
    }
}
