//! Setting up the accounts a load runs over: users `{prefix}{index}` created straight in
//! the store (idempotently, in large statements), then funded through the API with
//! credits whose idempotency keys make the set-up safe to run in parallel, to retry and
//! to repeat. When the client has the users' own tokens ([`crate::owners`]), each user
//! reads their balance before it is topped up, so the server has met every user (and
//! cached their token version) before a measured run, as a server in service has.
//!
//! The funding key of a user is `fund-{prefix}-{index}-{version}`, where `version` is the
//! account's version read just before: a retry of the same top-up reuses its key (and is
//! replayed, never applied twice), while a later top-up of an account a run has drained
//! sees a new version and so gets a new key.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use argon2::{Argon2, PasswordHasher};
use futures_util::StreamExt;
use serde_json::json;
use tally_actors::{NewUser, Role, Store};

use crate::client::ApiClient;
use crate::workload::format_minor;

/// Users created per statement: large enough that 100,000 users take a few seconds,
/// small enough that one statement's arrays stay a few megabytes.
const USERS_PER_STATEMENT: usize = 5_000;

/// The password every load-test user gets. They never log in (the tester either sends
/// everything as the admin or signs the users' tokens itself), but their rows need a
/// real argon2id hash like any other user's.
pub const USER_PASSWORD: &str = "load-test-user-password";

/// Attempts to fund one account before set-up gives up: enough to ride out a busy
/// server's 503s, few enough that a broken server fails set-up quickly.
const FUNDING_ATTEMPTS_MAX: u32 = 20;

/// Pause between funding attempts of one account.
const FUNDING_RETRY_PAUSE: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct SetupPlan {
    pub prefix: String,
    pub users: usize,
    pub initial_balance_minor: i64,
    /// Funding requests in flight.
    pub concurrency: usize,
}

/// What set-up did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetupSummary {
    pub ids: Vec<i64>,
    pub funded: usize,
    pub already_funded: usize,
}

/// Create the users (if missing) and return their ids in index order.
pub async fn create_users(store: &Store, prefix: &str, users: usize) -> anyhow::Result<Vec<i64>> {
    let password_hash = Argon2::default()
        .hash_password(USER_PASSWORD.as_bytes())
        .map_err(|error| anyhow::anyhow!("hashing the users' password: {error}"))?
        .to_string();
    let mut ids = Vec::with_capacity(users);
    let indexes: Vec<usize> = (0..users).collect();
    for chunk in indexes.chunks(USERS_PER_STATEMENT) {
        let new_users: Vec<NewUser> = chunk
            .iter()
            .map(|index| NewUser {
                username: format!("{prefix}{index}"),
                email: format!("{prefix}{index}@loadtest.invalid").to_lowercase(),
                password_hash: password_hash.clone(),
                role: Role::User,
            })
            .collect();
        let created = store
            .create_users(&new_users, None)
            .await
            .with_context(|| format!("creating users {prefix}{}..", chunk[0]))?;
        if created.len() != chunk.len() {
            bail!(
                "creating users {prefix}{}..: asked for {} and got {} back (is one of the names or emails taken \
                 by someone else?)",
                chunk[0],
                chunk.len(),
                created.len()
            );
        }
        ids.extend(created.into_iter().map(|(_, id)| id));
    }
    Ok(ids)
}

/// Top one account up to the target balance; returns whether money moved.
async fn fund(client: &ApiClient, prefix: &str, index: usize, user: i64, target_minor: i64) -> anyhow::Result<bool> {
    let mut last_error = String::new();
    for _ in 0..FUNDING_ATTEMPTS_MAX {
        let (balance, version) = match client.balance(user).await {
            Ok(read) => read,
            Err(error) => {
                last_error = format!("{error:#}");
                tokio::time::sleep(FUNDING_RETRY_PAUSE).await;
                continue;
            }
        };
        if balance >= target_minor {
            return Ok(false);
        }
        let key = format!("fund-{prefix}-{index}-{version}");
        let body = json!({ "user_id": user, "amount": format_minor(target_minor - balance) });
        match client
            .send(reqwest::Method::POST, "/transactions/credit", Some(&body), Some(&key))
            .await
        {
            Ok(answer) if answer.status == 201 => return Ok(true),
            Ok(answer) if matches!(answer.status, 429 | 503) => last_error = answer.code_or_status(),
            Ok(answer) => bail!(
                "funding {prefix}{index} (user {user}) answered {}: {}",
                answer.status,
                answer.body()
            ),
            Err(error) => last_error = error.to_string(),
        }
        tokio::time::sleep(FUNDING_RETRY_PAUSE).await;
    }
    bail!("funding {prefix}{index} (user {user}) failed {FUNDING_ATTEMPTS_MAX} times; last: {last_error}")
}

/// Create and fund the users of `plan`.
pub async fn setup(store: &Store, client: Arc<ApiClient>, plan: &SetupPlan) -> anyhow::Result<SetupSummary> {
    let started = std::time::Instant::now();
    let ids = create_users(store, &plan.prefix, plan.users).await?;
    if let Some(owners) = client.owners() {
        owners.enroll(crate::database::users(store, &plan.prefix, plan.users).await?);
    }
    println!(
        "setup: {} users {}0..{}{} exist ({:.1} s); funding each to {}",
        ids.len(),
        plan.prefix,
        plan.prefix,
        plan.users.saturating_sub(1),
        started.elapsed().as_secs_f64(),
        format_minor(plan.initial_balance_minor)
    );
    let done = Arc::new(AtomicUsize::new(0));
    let reporter = {
        let done = done.clone();
        let total = ids.len();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(1));
            ticks.tick().await;
            loop {
                ticks.tick().await;
                println!("setup: {} / {total} accounts checked", done.load(Ordering::Relaxed));
            }
        })
    };
    let results: Vec<anyhow::Result<bool>> = futures_util::stream::iter(ids.iter().copied().enumerate())
        .map(|(index, user)| {
            let client = client.clone();
            let done = done.clone();
            let prefix = plan.prefix.clone();
            async move {
                let funded = fund(&client, &prefix, index, user, plan.initial_balance_minor).await;
                done.fetch_add(1, Ordering::Relaxed);
                funded
            }
        })
        .buffer_unordered(plan.concurrency.max(1))
        .collect()
        .await;
    reporter.abort();
    let mut summary = SetupSummary {
        ids,
        ..SetupSummary::default()
    };
    for result in results {
        if result? {
            summary.funded += 1;
        } else {
            summary.already_funded += 1;
        }
    }
    println!(
        "setup: done in {:.1} s: {} accounts funded, {} already at {} or more",
        started.elapsed().as_secs_f64(),
        summary.funded,
        summary.already_funded,
        format_minor(plan.initial_balance_minor)
    );
    Ok(summary)
}
