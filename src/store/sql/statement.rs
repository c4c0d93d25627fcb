//! A queued statement ([`Statement`]) run at once through sqlx, shared by both
//! backends (compiled into `store::sqlite` and `store::postgres` with that
//! backend's `Conn`): PostgreSQL's write transactions run theirs this way (combined
//! first: `postgres::combine`), and both run this way the index rows written outside a
//! write transaction.

use std::borrow::Cow;

use super::Conn;
use crate::store::StoreError;
use crate::store::deferred::{Arg, Statement};

/// Runs `statement` on `conn` now.
pub(crate) async fn run_now(conn: &mut Conn, statement: Statement) -> Result<(), StoreError> {
    bound(statement).execute(conn).await?;
    Ok(())
}

/// Runs the query `statement` on `conn` now: its first row's first column, as text
/// (`None`: no row, or a NULL). SQLite's write transactions read theirs on the
/// writer's handle instead (`sqlite::direct::Locked::first_text`).
pub(crate) async fn first_text(
    conn: &mut Conn,
    statement: Statement,
) -> Result<Option<String>, StoreError> {
    use sqlx::Row as _;
    let row = bound(statement).fetch_optional(conn).await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<String>, _>(0)?,
        None => None,
    })
}

/// `statement` as a sqlx query with its values bound.
fn bound(
    statement: Statement,
) -> sqlx::query::Query<'static, super::Db, <super::Db as sqlx::Database>::Arguments> {
    let Statement { sql, args } = statement;
    let mut query = match sql {
        Cow::Borrowed(sql) => sqlx::query(sql),
        Cow::Owned(sql) => sqlx::query(sqlx::AssertSqlSafe(sql)),
    };
    for arg in args {
        query = match arg {
            Arg::Int(n) => query.bind(n),
            Arg::Text(text) => query.bind(text),
            Arg::Blob(bytes) => query.bind(bytes),
            Arg::NullInt => query.bind(None::<i64>),
            Arg::NullText => query.bind(None::<String>),
            Arg::NullBlob => query.bind(None::<Vec<u8>>),
        };
    }
    query
}
