//! Engine test helpers on top of `tally_actors::testing`.

use std::time::Duration;

pub use tally_actors::testing::{Backend, Proxy, TestDb, assert_store_invariants, eventually, init_logging};
use tally_actors::{AccountId, Amount, Engine, EngineConfig, MoveRequest, Placement, TransactionStatus};

/// A configuration for tests: two arbiters, small pools, short outage timers.
pub fn config(url: &str) -> EngineConfig {
    EngineConfig {
        database_url: url.to_string(),
        placement: Placement::Arbiters(2),
        read_connections_max: 4,
        durable_wait_max: Duration::from_secs(30),
        ..EngineConfig::default()
    }
}

pub fn account(id: i64) -> AccountId {
    AccountId::new(id).unwrap()
}

pub fn amount(minor: i64) -> Amount {
    Amount::from_minor(minor).unwrap()
}

/// Create accounts `1..=count` and credit each with `funding` minor units.
pub async fn open_accounts(engine: &Engine, count: i64, funding: i64) {
    for id in 1..=count {
        engine.create_account(account(id)).await.unwrap();
        if funding > 0 {
            let record = engine
                .execute(MoveRequest::credit(account(id), amount(funding)))
                .await
                .unwrap();
            assert_eq!(record.status, TransactionStatus::Completed);
        }
    }
}

/// Run an async test function against both stores.
#[macro_export]
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[actix_rt::test]
                async fn on_postgres() {
                    $crate::support::init_logging();
                    super::$test($crate::support::Backend::Postgres).await
                }

                #[actix_rt::test]
                async fn on_sqlite() {
                    $crate::support::init_logging();
                    super::$test($crate::support::Backend::Sqlite).await
                }
            }
        )*
    };
}
