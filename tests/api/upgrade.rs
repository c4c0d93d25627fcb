//! Upgrading a database made by an earlier Sprig: the data it holds survives the
//! migrations after it, and the rules those migrations bring hold for it. On both
//! backends (the PostgreSQL run makes the database there).

use std::sync::Arc;

use sqlx::Connection;
use tempfile::TempDir;

use crate::helpers::{database_for, json_body, on_postgres, spawn_app_in};

/// The referrals an 0007 database holds: `(id, practice, identifier value)`; before
/// 0008 an identifier was unique across all practices.
const BEFORE: [(&str, Option<&str>, &str); 3] = [
    ("r-a81001", Some("A81001"), "REF-1"),
    ("r-b82002", Some("B82002"), "REF-2"),
    ("r-none", None, "REF-3"),
];
const SYSTEM: &str = "https://fhir.example-gp.nhs.uk/referral-id";

/// The rows of 0007's schema for one referral, with a GP note hanging off it (a
/// foreign key the SQLite rebuild of `referrals` must keep valid).
const INSERT_REFERRAL: &str = "INSERT INTO referrals (id, identifier_system, identifier_value, \
     stage, fhir_status, received_at, updated_at, received_as, practice_ods_code, task_id, \
     version, assigned_to) \
     VALUES ($1, $2, $3, 'received', 'active', '2026-11-20T10:00:00.000Z', \
     '2026-11-20T10:00:00.000Z', 'resource', $4, $5, 1, NULL)";
const INSERT_NOTE: &str = "INSERT INTO referral_notes (referral_id, seq, at, source, author, text) \
     VALUES ($1, 1, '2026-11-20T10:00:00.000Z', 'gp', NULL, 'note')";

#[tokio::test]
async fn a_database_at_migration_0007_upgrades_with_its_referrals_and_the_per_practice_rule() {
    let dir = Arc::new(TempDir::new().expect("temporary directory"));
    let database = database_for(dir.path()).await;
    // The database as Sprig left it at migration 0007, holding referrals.
    if on_postgres() {
        let mut conn = sqlx::PgConnection::connect(&database)
            .await
            .expect("connect");
        sqlx::migrate!("./migrations/postgres")
            .run_to(7, &mut conn)
            .await
            .expect("migrations up to 0007");
        for (id, practice, value) in BEFORE {
            for (sql, binds) in [
                (
                    INSERT_REFERRAL,
                    vec![Some(id), Some(SYSTEM), Some(value), practice, Some(id)],
                ),
                (INSERT_NOTE, vec![Some(id)]),
            ] {
                let mut query = sqlx::query(sql);
                for bind in binds {
                    query = query.bind(bind);
                }
                query.execute(&mut conn).await.expect("insert at 0007");
            }
        }
        conn.close().await.expect("close");
    } else {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&database)
            .create_if_missing(true)
            .foreign_keys(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("connect");
        sqlx::migrate!("./migrations/sqlite")
            .run_to(7, &mut conn)
            .await
            .expect("migrations up to 0007");
        for (id, practice, value) in BEFORE {
            for (sql, binds) in [
                (
                    INSERT_REFERRAL,
                    vec![Some(id), Some(SYSTEM), Some(value), practice, Some(id)],
                ),
                (INSERT_NOTE, vec![Some(id)]),
            ] {
                let mut query = sqlx::query(sql);
                for bind in binds {
                    query = query.bind(bind);
                }
                query.execute(&mut conn).await.expect("insert at 0007");
            }
        }
        conn.close().await.expect("close");
    }

    // The current Sprig starts on it, running 0008 and every migration after.
    let app = spawn_app_in(Arc::clone(&dir), |_| {}).await;
    let pool = app.db_pool().await;
    let rows: Vec<(String, Option<String>, String, String, i64)> = sqlx::query_as(
        "SELECT id, practice_ods_code, identifier_system, identifier_value, version \
         FROM referrals ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("referrals");
    let mut expected: Vec<(String, Option<String>, String, String, i64)> = BEFORE
        .iter()
        .map(|(id, practice, value)| {
            (
                (*id).to_owned(),
                practice.map(str::to_owned),
                SYSTEM.to_owned(),
                (*value).to_owned(),
                1,
            )
        })
        .collect();
    expected.sort();
    assert_eq!(rows, expected, "every referral kept as it was");
    let (notes,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM referral_notes")
        .fetch_one(&pool)
        .await
        .expect("notes");
    assert_eq!(notes, 3, "the rows that refer to the referrals kept too");
    let list = json_body(app.get("/api/referrals").await).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(3), "{list}");

    // The rule 0008 brings: another practice may use A81001's identifier ...
    let insert = |id: &'static str, practice: &'static str, value: &'static str| {
        sqlx::query(INSERT_REFERRAL)
            .bind(id)
            .bind(SYSTEM)
            .bind(value)
            .bind(practice)
            .bind(id)
            .execute(&pool)
    };
    insert("r-b82002-second", "B82002", "REF-1")
        .await
        .expect("the same identifier from another practice is another referral");
    // ... and no practice may use one of its own twice.
    assert!(
        insert("r-a81001-again", "A81001", "REF-1").await.is_err(),
        "one referral per identifier per practice"
    );
    assert!(
        insert("r-b82002-again", "B82002", "REF-2").await.is_err(),
        "one referral per identifier per practice"
    );
    app.stop().await;
}
