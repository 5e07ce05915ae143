//! Concurrency through HTTP: 50 users transferring at once, then the invariants of
//! design.md §11 in the database.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::task::JoinSet;

use crate::helpers::{Backend, assert_store_invariants, spawn_app};
use crate::on_both_stores;

const USERS: usize = 50;
const TRANSFERS_PER_USER: usize = 20;

async fn fifty_users_transferring_at_once_keep_every_invariant(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let mut users = Vec::new();
    for index in 0..USERS {
        let user = app.user(&format!("user{index}")).await;
        app.fund(&admin, &user, "100.00").await;
        users.push(user);
    }
    let ids: Vec<i64> = users.iter().map(|user| user.id).collect();
    let client = app.client.clone();
    let base = app.address.clone();
    let mut tasks = JoinSet::new();
    for (index, user) in users.iter().cloned().enumerate() {
        let (client, base, ids) = (client.clone(), base.clone(), ids.clone());
        tasks.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(index as u64);
            let mut completed = 0;
            for _ in 0..TRANSFERS_PER_USER {
                let to = loop {
                    let to = ids[rng.random_range(0..ids.len())];
                    if to != user.id {
                        break to;
                    }
                };
                let cents: u32 = rng.random_range(1..=3_000);
                let response = client
                    .post(format!("{base}/api/v1/transactions/transfer"))
                    .bearer_auth(&user.token)
                    .json(&json!({ "from_user_id": user.id, "to_user_id": to, "amount": format!("{}.{:02}", cents / 100, cents % 100) }))
                    .send()
                    .await
                    .unwrap();
                match response.status().as_u16() {
                    201 => completed += 1,
                    422 => {}
                    other => panic!("unexpected status {other}: {}", response.text().await.unwrap()),
                }
            }
            completed
        });
    }
    let mut completed = 0;
    while let Some(done) = tasks.join_next().await {
        completed += done.unwrap();
    }
    assert!(completed > 0);
    let mut total: i64 = 0;
    for user in &users {
        let balance = app.balance(user).await;
        let minor: i64 = balance.replace('.', "").parse().unwrap();
        assert!(minor >= 0, "no negative balance");
        total += minor;
    }
    assert_eq!(total, USERS as i64 * 100_00, "money moved between users only");
    let db = app.stop().await.expect("the app owns its database");
    assert_store_invariants(&tally_actors::Store::connect(&db.url, 1).await.unwrap()).await;
}

on_both_stores!(fifty_users_transferring_at_once_keep_every_invariant);
