//! What the API returns: the JSON views of users, transactions, balances and journal
//! entries, and the cursors of paginated lists.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_actors::{AccountBalance, AccountId, JournalEntry, Role, TransactionRecord, UserRecord};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::domain::format_minor;
use crate::error::ApiError;

/// Entries per page when the client does not say.
pub const PAGE_SIZE_DEFAULT: i64 = 50;
/// The most entries one page may hold: bounds the work and the memory of one request.
pub const PAGE_SIZE_MAX: i64 = 200;

/// A user as the API shows it (never the password hash).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: i64,
    pub username: String,
    pub email: String,
    #[schema(value_type = String, example = "user")]
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&UserRecord> for UserView {
    fn from(user: &UserRecord) -> Self {
        UserView {
            id: user.id,
            username: user.username.clone(),
            email: user.email.clone(),
            role: user.role,
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

/// A transaction. Each party sees its own balance after the movement; the system
/// account's side is shown as `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransactionView {
    pub id: Uuid,
    /// `credit`, `debit`, `transfer` or `reversal`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `completed`, `failed` (refused at the debit), `rolled_back` (the credit was
    /// refused and the debit refunded); for holds `pending`, `posted` or `voided`.
    pub status: String,
    /// A decimal string, e.g. "12.34".
    pub amount: String,
    /// `null` for a credit (the money comes from outside the ledger).
    pub from_user_id: Option<i64>,
    /// `null` for a debit.
    pub to_user_id: Option<i64>,
    pub from_balance_after: Option<String>,
    pub to_balance_after: Option<String>,
    /// Why it failed or was rolled back (`insufficient_funds`, `account_frozen`…).
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub completed_at: DateTime<Utc>,
    /// For a hold: the amount reserved when it was placed (`amount` is what was posted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_amount: Option<String>,
    /// For a hold: when the engine voids it if it is still pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// For a reversal: the transaction it gives back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reversal_of: Option<Uuid>,
    /// For a leg of an atomic batch: the batch, and the leg's place in it (from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leg: Option<u32>,
}

fn user_side(account: AccountId) -> Option<i64> {
    (!account.is_external()).then(|| account.get())
}

impl TransactionView {
    /// The view `viewer` may see: admins see both balances, a party only its own.
    pub fn for_viewer(record: &TransactionRecord, viewer: &AuthUser) -> Self {
        let sees = |account: AccountId| !account.is_external() && (viewer.is_admin() || viewer.id == account);
        TransactionView {
            id: record.id,
            kind: record.kind.as_str().to_string(),
            status: record.status.as_str().to_string(),
            amount: format_minor(record.amount.minor()),
            from_user_id: user_side(record.from),
            to_user_id: user_side(record.to),
            from_balance_after: record
                .from_balance_after()
                .filter(|_| sees(record.from))
                .map(format_minor),
            to_balance_after: record.to_balance_after().filter(|_| sees(record.to)).map(format_minor),
            failure_reason: record.failure_reason.map(|reason| reason.code().to_string()),
            created_at: record.created_at,
            completed_at: record.completed_at,
            held_amount: record.held_amount.map(|held| format_minor(held.minor())),
            expires_at: record.expires_at,
            reversal_of: record.parent_id,
            batch_id: record.batch_id,
            leg: record.leg,
        }
    }
}

/// An account's balances now.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BalanceView {
    pub user_id: i64,
    pub balance: String,
    /// Reserved by pending transfers; not available for debits.
    pub held: String,
    pub available: String,
    /// `active`, `frozen` or `closed`.
    pub status: String,
    /// Counts every change of the account.
    pub version: u64,
}

impl From<&AccountBalance> for BalanceView {
    fn from(balance: &AccountBalance) -> Self {
        BalanceView {
            user_id: balance.account.get(),
            balance: format_minor(balance.balance),
            held: format_minor(balance.held),
            available: format_minor(balance.available),
            status: balance.status.as_str().to_string(),
            version: balance.version,
        }
    }
}

/// One change of an account's balance.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JournalEntryView {
    pub transaction_id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u64,
    /// Signed: "-12.34" for money out.
    pub amount: String,
    pub balance_after: String,
    /// The other party; `null` for the system account.
    pub counterparty_user_id: Option<i64>,
    pub created_at: DateTime<Utc>,
}

impl From<&JournalEntry> for JournalEntryView {
    fn from(entry: &JournalEntry) -> Self {
        JournalEntryView {
            transaction_id: entry.transaction_id,
            kind: entry.kind.as_str().to_string(),
            version: entry.version,
            amount: format_minor(entry.delta),
            balance_after: format_minor(entry.balance_after),
            counterparty_user_id: user_side(entry.counterparty),
            created_at: entry.created_at,
        }
    }
}

/// A balance at a point in time, read from the journal.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct BalanceAtView {
    pub user_id: i64,
    pub time: DateTime<Utc>,
    pub balance: String,
    /// The account's version at that time (0: before its first movement).
    pub version: u64,
    /// The last movement at or before that time.
    pub transaction_id: Option<Uuid>,
}

/// One page of a list, and where the next one starts.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Encode a cursor: opaque to clients.
pub fn encode_cursor(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

/// Decode a cursor made by [`encode_cursor`]; anything else is a 400.
pub fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| ApiError::invalid_parameter("cursor", "is not a cursor this API returned"))
}

/// The page size asked for, within bounds.
pub fn page_size(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(PAGE_SIZE_DEFAULT),
        Some(limit) if (1..=PAGE_SIZE_MAX).contains(&limit) => Ok(limit),
        Some(_) => Err(ApiError::invalid_parameter(
            "limit",
            format!("must be between 1 and {PAGE_SIZE_MAX}"),
        )),
    }
}
