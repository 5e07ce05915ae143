//! Account identifiers and amounts: the two values every engine message carries.
//!
//! Both are parsed once, at the edge, and trusted afterwards (parse, don't validate).
//! Amounts are integers in minor units; floats never touch money.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The largest amount one movement may carry, in minor units (10^13 = 100 billion in a
/// two-decimal currency). Bounding single amounts keeps every balance far from `i64`
/// overflow for any realistic number of movements, and matches the API contract.
pub const AMOUNT_MAX_MINOR: i64 = 10_000_000_000_000;

/// An account, identified by the owning user's integer id. Id 0 is the system
/// `external` account that credits come from and debits go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("account ids are non-negative integers, got {0}")]
pub struct InvalidAccountId(pub i64);

impl AccountId {
    /// The system account on the other side of every credit and debit. It may go
    /// negative, which is what keeps the sum of all balances at exactly zero.
    pub const EXTERNAL: AccountId = AccountId(0);

    pub fn new(raw: i64) -> Result<Self, InvalidAccountId> {
        if raw < 0 {
            return Err(InvalidAccountId(raw));
        }
        Ok(AccountId(raw))
    }

    pub fn get(self) -> i64 {
        self.0
    }

    pub fn is_external(self) -> bool {
        self == Self::EXTERNAL
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A strictly positive amount of money in minor units, at most [`AMOUNT_MAX_MINOR`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Amount(i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("amount must be at most {AMOUNT_MAX_MINOR} minor units")]
    TooLarge,
}

impl Amount {
    pub fn from_minor(minor: i64) -> Result<Self, AmountError> {
        if minor <= 0 {
            return Err(AmountError::NotPositive);
        }
        if minor > AMOUNT_MAX_MINOR {
            return Err(AmountError::TooLarge);
        }
        Ok(Amount(minor))
    }

    pub fn minor(self) -> i64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let minor = i64::deserialize(deserializer)?;
        Amount::from_minor(minor).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_outside_one_to_ten_to_the_thirteen_are_refused() {
        assert_eq!(Amount::from_minor(0), Err(AmountError::NotPositive));
        assert_eq!(Amount::from_minor(-5), Err(AmountError::NotPositive));
        assert_eq!(Amount::from_minor(AMOUNT_MAX_MINOR + 1), Err(AmountError::TooLarge));
        assert_eq!(Amount::from_minor(1).unwrap().minor(), 1);
        assert_eq!(Amount::from_minor(AMOUNT_MAX_MINOR).unwrap().minor(), AMOUNT_MAX_MINOR);
    }

    #[test]
    fn negative_account_ids_are_refused() {
        assert_eq!(AccountId::new(-1), Err(InvalidAccountId(-1)));
        assert!(AccountId::new(0).unwrap().is_external());
        assert!(!AccountId::new(7).unwrap().is_external());
    }
}
