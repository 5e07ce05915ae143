//! The store's users and refresh tokens: creation with an account, case-insensitive
//! uniqueness as typed errors, partial updates with audit, soft deletion, pagination,
//! and refresh tokens that can be spent exactly once.

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use serde_json::json;
use tally_actors::{
    AccountStatus, AuditEntry, NewUser, RefreshToken, RefreshUse, Role, Store, UserChanges, UserRecord, UserWriteError,
};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::on_both_stores;
use crate::support::{Backend, TestDb, account, assert_store_invariants};

/// Enough connections for the concurrency tests to really overlap.
const CONNECTIONS: u32 = 8;

async fn connect(db: &TestDb) -> Store {
    Store::connect(&db.url, CONNECTIONS).await.unwrap()
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn new_user(username: &str, email: &str) -> NewUser {
    NewUser {
        username: username.into(),
        email: email.into(),
        password_hash: format!("$argon2id$hash-of-{username}"),
        role: Role::User,
    }
}

fn audit(action: &str, entity_id: &str) -> AuditEntry {
    AuditEntry {
        id: Uuid::now_v7(),
        entity_type: "user".into(),
        entity_id: entity_id.into(),
        action: action.into(),
        actor_user_id: Some(1),
        details: json!({ "action": action }),
        request_id: Some(format!("req-{action}")),
        created_at: now(),
    }
}

async fn create(store: &Store, username: &str) -> UserRecord {
    store
        .create_user(
            &new_user(username, &format!("{username}@example.com")),
            &audit("created", "pending"),
        )
        .await
        .unwrap()
}

async fn user_audit_actions(store: &Store, id: i64) -> Vec<String> {
    store
        .audit_entries("user", &id.to_string())
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.action)
        .collect()
}

async fn a_created_user_has_an_empty_account_and_is_found_by_username_in_any_case(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = connect(&db).await;

    let alice = store
        .create_user(
            &NewUser {
                role: Role::Admin,
                ..new_user("Alice", "alice@example.com")
            },
            &audit("created", "pending"),
        )
        .await
        .unwrap();
    assert_eq!(alice.id, 1, "user ids start at 1: 0 is the external account");
    assert_eq!(
        (
            alice.username.as_str(),
            alice.email.as_str(),
            alice.role,
            alice.deleted_at
        ),
        ("Alice", "alice@example.com", Role::Admin, None)
    );
    assert_eq!(alice.password_hash, "$argon2id$hash-of-Alice");
    assert_eq!(alice.created_at, alice.updated_at);

    let account = store
        .load_account(account(alice.id))
        .await
        .unwrap()
        .expect("the user's account was created with it");
    assert_eq!(
        (account.balance, account.held(), account.status, account.version),
        (0, 0, AccountStatus::Active, 0)
    );

    for spelling in ["Alice", "alice", "ALICE", "aLiCe"] {
        assert_eq!(
            store.user_by_username(spelling).await.unwrap().as_ref(),
            Some(&alice),
            "looking up {spelling:?}"
        );
    }
    assert_eq!(store.user_by_username("bob").await.unwrap(), None);
    assert_eq!(store.user(alice.id).await.unwrap(), Some(alice.clone()));
    assert_eq!(store.user(99).await.unwrap(), None);

    let audit = store.audit_entries("user", &alice.id.to_string()).await.unwrap();
    assert_eq!(audit.len(), 1, "the audit row names the new user's id");
    assert_eq!(audit[0].action, "created");
    assert_eq!(audit[0].request_id.as_deref(), Some("req-created"));
    assert!(store.audit_entries("user", "pending").await.unwrap().is_empty());

    let bob = create(&store, "bob").await;
    assert_eq!((bob.id, bob.role), (2, Role::User));
    assert_eq!(store.user_count().await.unwrap(), 2);
    assert_store_invariants(&store).await;
}

async fn a_taken_username_or_email_is_refused_with_a_typed_error_and_writes_nothing(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = connect(&db).await;
    let alice = create(&store, "alice").await;
    let bob = create(&store, "bob").await;
    let (_, accounts_before) = store.balance_sum().await.unwrap();

    let cases = [
        ("alice", "new@example.com", "the same username"),
        ("ALICE", "new@example.com", "the username in another case"),
        ("carol", "alice@example.com", "the same email"),
        ("carol", "Alice@Example.COM", "the email in another case"),
    ];
    for (username, email, what) in cases {
        let outcome = store
            .create_user(&new_user(username, email), &audit("created", "pending"))
            .await;
        let expected_username = what.contains("username");
        assert!(
            match outcome {
                Err(UserWriteError::UsernameTaken) => expected_username,
                Err(UserWriteError::EmailTaken) => !expected_username,
                _ => false,
            },
            "creating a user with {what}: {outcome:?}"
        );
    }
    assert_eq!(store.user_count().await.unwrap(), 2);
    assert_eq!(
        store.balance_sum().await.unwrap().1,
        accounts_before,
        "no account was created for a refused user"
    );
    assert!(store.audit_entries("user", "pending").await.unwrap().is_empty());
    // The id a refused insert may have consumed is never a user; the next one works.
    let carol = create(&store, "carol").await;
    assert!(carol.id > bob.id);

    let renamed = store
        .update_user(
            bob.id,
            &UserChanges {
                username: Some("Alice".into()),
                ..UserChanges::default()
            },
            &[audit("username_changed", &bob.id.to_string())],
        )
        .await;
    assert!(matches!(renamed, Err(UserWriteError::UsernameTaken)), "{renamed:?}");
    let readdressed = store
        .update_user(
            bob.id,
            &UserChanges {
                email: Some("ALICE@example.com".into()),
                ..UserChanges::default()
            },
            &[audit("email_changed", &bob.id.to_string())],
        )
        .await;
    assert!(
        matches!(readdressed, Err(UserWriteError::EmailTaken)),
        "{readdressed:?}"
    );
    assert_eq!(
        user_audit_actions(&store, bob.id).await,
        ["created"],
        "a refused update writes no audit row"
    );
    assert_eq!(store.user(bob.id).await.unwrap().unwrap().username, "bob");
    assert_eq!(store.user(alice.id).await.unwrap(), Some(alice));
}

async fn updating_a_user_changes_only_the_given_fields_and_writes_its_audit_rows(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = connect(&db).await;
    let original = create(&store, "dave").await;
    let id = original.id;
    let entity = id.to_string();

    let mut expected = original.clone();
    let steps: [(&str, UserChanges); 4] = [
        (
            "username_changed",
            UserChanges {
                username: Some("David".into()),
                ..UserChanges::default()
            },
        ),
        (
            "email_changed",
            UserChanges {
                email: Some("david@example.org".into()),
                ..UserChanges::default()
            },
        ),
        (
            "password_changed",
            UserChanges {
                password_hash: Some("$argon2id$new-hash".into()),
                ..UserChanges::default()
            },
        ),
        (
            "role_changed",
            UserChanges {
                role: Some(Role::Admin),
                ..UserChanges::default()
            },
        ),
    ];
    for (action, changes) in &steps {
        let updated = store.update_user(id, changes, &[audit(action, &entity)]).await.unwrap();
        if let Some(username) = &changes.username {
            expected.username = username.clone();
        }
        if let Some(email) = &changes.email {
            expected.email = email.clone();
        }
        if let Some(password_hash) = &changes.password_hash {
            expected.password_hash = password_hash.clone();
        }
        if let Some(role) = changes.role {
            expected.role = role;
        }
        assert!(
            updated.updated_at >= expected.updated_at,
            "{action}: updated_at moves forward"
        );
        expected.updated_at = updated.updated_at;
        assert_eq!(updated, expected, "{action} changes only its field");
        assert_eq!(store.user(id).await.unwrap(), Some(expected.clone()));
    }
    assert_eq!(expected.created_at, original.created_at);
    assert_eq!(store.user_by_username("DAVID").await.unwrap(), Some(expected.clone()));
    assert_eq!(store.user_by_username("dave").await.unwrap(), None);

    // Several fields and several audit rows in one change.
    let both = store
        .update_user(
            id,
            &UserChanges {
                username: Some("dave".into()),
                role: Some(Role::User),
                ..UserChanges::default()
            },
            &[audit("username_changed", &entity), audit("role_changed", &entity)],
        )
        .await
        .unwrap();
    assert_eq!(
        (both.username.as_str(), both.role, both.email.as_str()),
        ("dave", Role::User, "david@example.org")
    );
    assert_eq!(
        user_audit_actions(&store, id).await,
        [
            "created",
            "username_changed",
            "email_changed",
            "password_changed",
            "role_changed",
            "username_changed",
            "role_changed"
        ]
    );

    // A user that does not exist, or no longer does, cannot be changed (nor audited).
    let missing = store
        .update_user(
            404,
            &UserChanges {
                role: Some(Role::Admin),
                ..UserChanges::default()
            },
            &[audit("role_changed", "404")],
        )
        .await;
    assert!(matches!(missing, Err(UserWriteError::NotFound)), "{missing:?}");
    assert!(store.audit_entries("user", "404").await.unwrap().is_empty());
    store.delete_user(id, &audit("deleted", &entity)).await.unwrap();
    let deleted = store
        .update_user(
            id,
            &UserChanges {
                role: Some(Role::Admin),
                ..UserChanges::default()
            },
            &[audit("role_changed", &entity)],
        )
        .await;
    assert!(matches!(deleted, Err(UserWriteError::NotFound)), "{deleted:?}");
    assert_eq!(user_audit_actions(&store, id).await.len(), 8);
}

async fn a_deleted_user_is_kept_by_id_hidden_by_name_and_loses_its_refresh_tokens(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = connect(&db).await;
    let erin = create(&store, "erin").await;
    let frank = create(&store, "frank").await;
    let issued = now();
    let erin_tokens = [Uuid::now_v7(), Uuid::now_v7()];
    for (id, family) in erin_tokens.iter().zip([Uuid::now_v7(), Uuid::now_v7()]) {
        store
            .insert_refresh_token(&token(*id, erin.id, family, issued))
            .await
            .unwrap();
    }
    let frank_token = Uuid::now_v7();
    store
        .insert_refresh_token(&token(frank_token, frank.id, Uuid::now_v7(), issued))
        .await
        .unwrap();

    let deleted = store
        .delete_user(erin.id, &audit("deleted", &erin.id.to_string()))
        .await
        .unwrap();
    let deleted_at = deleted.deleted_at.expect("deleted_at is set");
    assert!(deleted_at >= erin.created_at);
    assert_eq!(
        deleted.token_version,
        erin.token_version + 1,
        "deleting retires the user's tokens"
    );
    assert_eq!(
        UserRecord {
            deleted_at: None,
            updated_at: erin.updated_at,
            token_version: erin.token_version,
            ..deleted.clone()
        },
        erin,
        "deleting changes nothing else but the times"
    );

    assert_eq!(store.user_by_username("erin").await.unwrap(), None);
    assert_eq!(store.user(erin.id).await.unwrap(), Some(deleted));
    assert_eq!(store.user_count().await.unwrap(), 1);
    let listed: Vec<i64> = store
        .users(None, 10)
        .await
        .unwrap()
        .iter()
        .map(|user| user.id)
        .collect();
    assert_eq!(listed, [frank.id]);
    assert_eq!(user_audit_actions(&store, erin.id).await, ["created", "deleted"]);

    for id in erin_tokens {
        assert!(
            matches!(
                store.use_refresh_token(id, now()).await.unwrap(),
                RefreshUse::Reused { user_id, .. } if user_id == erin.id
            ),
            "a deleted user's tokens are revoked"
        );
    }
    assert!(matches!(
        store.use_refresh_token(frank_token, now()).await.unwrap(),
        RefreshUse::Fresh { user_id, .. } if user_id == frank.id
    ));

    let again = store
        .delete_user(erin.id, &audit("deleted", &erin.id.to_string()))
        .await;
    assert!(matches!(again, Err(UserWriteError::NotFound)), "{again:?}");
    assert_eq!(user_audit_actions(&store, erin.id).await.len(), 2);
    let reused_name = store
        .create_user(&new_user("Erin", "erin2@example.com"), &audit("created", "pending"))
        .await;
    assert!(
        matches!(reused_name, Err(UserWriteError::UsernameTaken)),
        "a deleted user's name stays taken: {reused_name:?}"
    );
    // The account outlives the user: its balance and journal belong to the ledger.
    assert!(store.load_account(account(erin.id)).await.unwrap().is_some());
}

async fn users_are_listed_by_ascending_id_in_pages_without_the_deleted(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = connect(&db).await;
    for index in 1..=7 {
        create(&store, &format!("user{index}")).await;
    }
    store.delete_user(3, &audit("deleted", "3")).await.unwrap();

    for page_size in [1, 2, 3, 6, 100] {
        let mut listed = Vec::new();
        let mut after = None;
        loop {
            let page = store.users(after, page_size).await.unwrap();
            assert!(page.len() <= page_size as usize);
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            listed.extend(page.iter().map(|user| user.id));
        }
        assert_eq!(listed, [1, 2, 4, 5, 6, 7], "pages of {page_size}");
    }
    assert_eq!(store.users(Some(5), 10).await.unwrap().len(), 2);
    assert!(store.users(None, 0).await.unwrap().is_empty());
    assert_eq!(
        store.users(None, 1_000_000).await.unwrap().len(),
        6,
        "an oversized page is clamped, not refused"
    );
    assert_eq!(store.user_count().await.unwrap(), 6);
}

fn token(id: Uuid, user_id: i64, family: Uuid, issued: DateTime<Utc>) -> RefreshToken {
    RefreshToken {
        id,
        user_id,
        family,
        expires_at: issued + TimeDelta::days(30),
        created_at: issued,
    }
}

async fn a_refresh_token_is_fresh_once_then_reused_and_unknown_when_missing_or_expired(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = connect(&db).await;
    let grace = create(&store, "grace").await;
    let issued = now();
    let family = Uuid::now_v7();
    let first = Uuid::now_v7();
    store
        .insert_refresh_token(&token(first, grace.id, family, issued))
        .await
        .unwrap();

    assert_eq!(
        store.use_refresh_token(first, issued).await.unwrap(),
        RefreshUse::Fresh {
            user_id: grace.id,
            family
        }
    );
    assert_eq!(
        store.use_refresh_token(first, issued).await.unwrap(),
        RefreshUse::Reused {
            user_id: grace.id,
            family
        },
        "a spent token presented again is a reuse"
    );
    assert_eq!(
        store.use_refresh_token(Uuid::now_v7(), issued).await.unwrap(),
        RefreshUse::Unknown
    );

    let expired = Uuid::now_v7();
    let expired_family = Uuid::now_v7();
    store
        .insert_refresh_token(&token(expired, grace.id, expired_family, issued))
        .await
        .unwrap();
    let after_expiry = issued + TimeDelta::days(30);
    assert_eq!(
        store.use_refresh_token(expired, after_expiry).await.unwrap(),
        RefreshUse::Unknown,
        "a token is expired from its expiry time on"
    );
    assert_eq!(
        store
            .use_refresh_token(expired, after_expiry - TimeDelta::microseconds(1))
            .await
            .unwrap(),
        RefreshUse::Fresh {
            user_id: grace.id,
            family: expired_family
        },
        "an expired use spent nothing"
    );
    assert_eq!(
        store.use_refresh_token(expired, after_expiry).await.unwrap(),
        RefreshUse::Reused {
            user_id: grace.id,
            family: expired_family
        },
        "a spent token is reported as reused even once expired"
    );

    // Revoking a family revokes its unspent tokens and leaves other families alone.
    let second = Uuid::now_v7();
    let third = Uuid::now_v7();
    let other_family = Uuid::now_v7();
    let other = Uuid::now_v7();
    for (id, family) in [(second, family), (third, family), (other, other_family)] {
        store
            .insert_refresh_token(&token(id, grace.id, family, issued))
            .await
            .unwrap();
    }
    assert_eq!(store.revoke_refresh_family(family, now()).await.unwrap(), 3);
    assert_eq!(
        store.revoke_refresh_family(family, now()).await.unwrap(),
        0,
        "revoking twice changes nothing"
    );
    for id in [second, third] {
        assert_eq!(
            store.use_refresh_token(id, issued).await.unwrap(),
            RefreshUse::Reused {
                user_id: grace.id,
                family
            }
        );
    }
    assert_eq!(
        store.revoke_user_refresh_tokens(grace.id, now()).await.unwrap(),
        2,
        "the tokens not revoked yet: the other family's and the spent one of the expiry check"
    );
    assert_eq!(
        store.use_refresh_token(other, issued).await.unwrap(),
        RefreshUse::Reused {
            user_id: grace.id,
            family: other_family
        }
    );
}

async fn sixteen_concurrent_uses_of_one_token_give_exactly_one_fresh(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = connect(&db).await;
    let heidi = create(&store, "heidi").await;
    for round in 0..4 {
        let id = Uuid::now_v7();
        let family = Uuid::now_v7();
        store
            .insert_refresh_token(&token(id, heidi.id, family, now()))
            .await
            .unwrap();
        let mut uses = JoinSet::new();
        for _ in 0..16 {
            let store = store.clone();
            uses.spawn(async move { store.use_refresh_token(id, now()).await.unwrap() });
        }
        let outcomes = uses.join_all().await;
        let fresh = outcomes
            .iter()
            .filter(|outcome| matches!(outcome, RefreshUse::Fresh { .. }))
            .count();
        assert_eq!(fresh, 1, "round {round}: {outcomes:?}");
        assert!(
            outcomes.iter().all(|outcome| matches!(
                outcome,
                RefreshUse::Fresh { user_id, family: f } | RefreshUse::Reused { user_id, family: f }
                    if *user_id == heidi.id && *f == family
            )),
            "round {round}: {outcomes:?}"
        );
    }
}

async fn an_injected_store_failure_is_a_store_error_that_names_no_sql(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = connect(&db).await;
    let ivan = create(&store, "ivan").await;

    store.faults().fail_writes(true);
    let created = store
        .create_user(&new_user("judy", "judy@example.com"), &audit("created", "pending"))
        .await;
    let Err(error @ UserWriteError::Store(_)) = created else {
        panic!("expected a store error, got {created:?}");
    };
    assert_eq!(error.to_string(), "store error");
    assert!(matches!(
        store.update_user(ivan.id, &UserChanges::default(), &[]).await,
        Err(UserWriteError::Store(_))
    ));
    assert!(
        store
            .insert_refresh_token(&token(Uuid::now_v7(), ivan.id, Uuid::now_v7(), now()))
            .await
            .is_err()
    );
    store.faults().fail_writes(false);

    store.faults().fail_reads(true);
    assert!(store.user(ivan.id).await.is_err());
    assert!(store.users(None, 10).await.is_err());
    store.faults().fail_reads(false);
    assert_eq!(store.user_count().await.unwrap(), 1);

    // A database error is a store error too, whose message names no SQL: here the
    // next user's account exists already (made without a user), and a new user never
    // takes over an existing account.
    store.create_account(account(ivan.id + 1)).await.unwrap();
    let created = store
        .create_user(&new_user("judy", "judy@example.com"), &audit("created", "pending"))
        .await;
    let Err(error @ UserWriteError::Store(_)) = created else {
        panic!("expected a store error, got {created:?}");
    };
    assert_eq!(error.to_string(), "store error");
    assert_eq!(store.user_count().await.unwrap(), 1);
    assert!(store.audit_entries("user", "pending").await.unwrap().is_empty());
}

async fn many_users_are_created_at_once_idempotently_each_with_an_account(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = connect(&db).await;
    let existing = create(&store, "carol").await;
    let batch = vec![
        new_user("amy", "amy@example.com"),
        new_user("carol", "carol@example.com"),
        new_user("dan", "dan@example.com"),
    ];
    let created = store.create_users(&batch, Some(42)).await.unwrap();
    let names: Vec<&str> = created.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["amy", "carol", "dan"]);
    assert_eq!(created[1].1, existing.id, "an existing user is left alone");
    for (name, id) in &created {
        assert!(
            store.load_account(account(*id)).await.unwrap().is_some(),
            "{name} has an account"
        );
    }
    assert_eq!(user_audit_actions(&store, created[0].1).await, ["registered"]);
    assert_eq!(
        user_audit_actions(&store, existing.id).await,
        ["created"],
        "not registered twice"
    );
    let again = store.create_users(&batch, Some(42)).await.unwrap();
    assert_eq!(again, created, "idempotent");
    assert_eq!(store.user_count().await.unwrap(), 3);
    assert_store_invariants(&store).await;
}

on_both_stores!(
    many_users_are_created_at_once_idempotently_each_with_an_account,
    a_created_user_has_an_empty_account_and_is_found_by_username_in_any_case,
    a_taken_username_or_email_is_refused_with_a_typed_error_and_writes_nothing,
    updating_a_user_changes_only_the_given_fields_and_writes_its_audit_rows,
    a_deleted_user_is_kept_by_id_hidden_by_name_and_loses_its_refresh_tokens,
    users_are_listed_by_ascending_id_in_pages_without_the_deleted,
    a_refresh_token_is_fresh_once_then_reused_and_unknown_when_missing_or_expired,
    sixteen_concurrent_uses_of_one_token_give_exactly_one_fresh,
    an_injected_store_failure_is_a_store_error_that_names_no_sql,
);
