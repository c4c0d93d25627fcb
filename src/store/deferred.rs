//! Write statements whose results a transaction never reads (the INSERTs of a
//! resource version, its index rows, the referral record, the outbox row, the
//! audit row), held as data: SQL text and its bound values.
//!
//! On SQLite a write transaction queues them and runs them all in one call on the
//! writer connection (`store::sqlite::direct`) at its next read or its commit,
//! where each statement sent through sqlx was a hand-off to sqlx's worker thread
//! and back while the single writer was held (about 20 per new referral, most of
//! the time a create held the writer). On PostgreSQL they are queued too and sent
//! before the transaction's next other statement or its commit, consecutive INSERTs
//! into different tables as one statement (`store::postgres::combine`), a round trip
//! each having been most of a new referral's cost there. Either way they run in order
//! before anything the transaction reads: it sees the same results on both.

use std::borrow::Cow;
use std::fmt::Write as _;

/// One value bound to a statement's `$n` placeholder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    /// A whole number (`BIGINT` on PostgreSQL).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes (`BYTEA` on PostgreSQL).
    Blob(Vec<u8>),
    /// A NULL of the type a [`Arg::Int`] would have: PostgreSQL types every parameter.
    NullInt,
    /// A NULL of the type a [`Arg::Text`] would have.
    NullText,
    /// A NULL of the type a [`Arg::Blob`] would have.
    NullBlob,
}

/// A Rust value as a statement's bound value.
pub(crate) trait IntoArg {
    /// The bound value.
    fn into_arg(self) -> Arg;
}

impl IntoArg for Arg {
    fn into_arg(self) -> Arg {
        self
    }
}

impl IntoArg for i64 {
    fn into_arg(self) -> Arg {
        Arg::Int(self)
    }
}

impl IntoArg for Option<i64> {
    fn into_arg(self) -> Arg {
        self.map_or(Arg::NullInt, Arg::Int)
    }
}

impl IntoArg for &str {
    fn into_arg(self) -> Arg {
        Arg::Text(self.to_owned())
    }
}

impl IntoArg for String {
    fn into_arg(self) -> Arg {
        Arg::Text(self)
    }
}

impl IntoArg for &String {
    fn into_arg(self) -> Arg {
        Arg::Text(self.clone())
    }
}

impl IntoArg for Option<&str> {
    fn into_arg(self) -> Arg {
        self.map_or(Arg::NullText, IntoArg::into_arg)
    }
}

impl IntoArg for Option<String> {
    fn into_arg(self) -> Arg {
        self.map_or(Arg::NullText, Arg::Text)
    }
}

impl IntoArg for &Option<String> {
    fn into_arg(self) -> Arg {
        self.as_deref().into_arg()
    }
}

impl IntoArg for &[u8] {
    fn into_arg(self) -> Arg {
        Arg::Blob(self.to_vec())
    }
}

impl IntoArg for Option<&[u8]> {
    fn into_arg(self) -> Arg {
        self.map_or(Arg::NullBlob, IntoArg::into_arg)
    }
}

/// A statement and the values of its `$1`, `$2`, … placeholders, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Statement {
    pub(crate) sql: Cow<'static, str>,
    pub(crate) args: Vec<Arg>,
}

impl Statement {
    /// A statement with no values bound yet.
    pub(crate) fn new(sql: impl Into<Cow<'static, str>>) -> Self {
        Self {
            sql: sql.into(),
            args: Vec::new(),
        }
    }

    /// About how many bytes it holds: its SQL text and its values.
    pub(crate) fn size(&self) -> usize {
        let values: usize = self
            .args
            .iter()
            .map(|arg| match arg {
                Arg::Text(text) => text.len(),
                Arg::Blob(bytes) => bytes.len(),
                Arg::Int(_) | Arg::NullInt | Arg::NullText | Arg::NullBlob => 8,
            })
            .sum();
        self.sql.len().saturating_add(values)
    }

    /// Binds the next placeholder.
    #[must_use]
    pub(crate) fn bind(mut self, value: impl IntoArg) -> Self {
        self.args.push(value.into_arg());
        self
    }

    /// A multi-row `INSERT`: `head` (`INSERT INTO t (a, b)`) then one `($n, …)` per
    /// row of `rows`, each row as many values as its columns. `None` for no rows.
    pub(crate) fn insert_rows<R>(head: &str, rows: impl IntoIterator<Item = R>) -> Option<Self>
    where
        R: IntoIterator<Item = Arg>,
    {
        let mut sql = String::with_capacity(head.len() + 64);
        sql.push_str(head);
        sql.push_str(" VALUES ");
        let mut args = Vec::new();
        for (index, row) in rows.into_iter().enumerate() {
            if index > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for (column, value) in row.into_iter().enumerate() {
                if column > 0 {
                    sql.push_str(", ");
                }
                args.push(value);
                // Writing to a String cannot fail.
                let _ = write!(sql, "${}", args.len());
            }
            sql.push(')');
        }
        (!args.is_empty()).then(|| Self {
            sql: sql.into(),
            args,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_numbered_in_order_across_rows() {
        let statement = Statement::insert_rows(
            "INSERT INTO t (a, b)",
            [
                [1_i64.into_arg(), "x".into_arg()],
                [2_i64.into_arg(), None::<&str>.into_arg()],
            ],
        );
        let Some(statement) = statement else {
            panic!("two rows make a statement");
        };
        assert_eq!(
            statement.sql,
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
        assert_eq!(
            statement.args,
            vec![
                Arg::Int(1),
                Arg::Text("x".into()),
                Arg::Int(2),
                Arg::NullText
            ]
        );
    }

    #[test]
    fn no_rows_make_no_statement() {
        let rows: [[Arg; 1]; 0] = [];
        assert_eq!(Statement::insert_rows("INSERT INTO t (a)", rows), None);
    }
}

/// What a guard read protects (`Tx::fail_if_found`), and so what a write fails with
/// when its guard finds a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guard {
    /// A business identifier the write claimed (`WriteTx::claim_identifier`): the row
    /// found names the referral holding it.
    Identifier,
    /// Conditions a reader matched before the write (`WriteTx::expect_matching`): a
    /// row found names a condition that now matches otherwise.
    Matches,
    /// A message's request id, unanswered when a reader looked
    /// (`WriteTx::claim_message_request`): the row found is its answer's.
    Request,
}

impl Guard {
    /// The error a write whose guard found `found` fails with.
    pub(crate) fn failure(self, found: String) -> crate::store::StoreError {
        match self {
            Guard::Identifier => crate::store::StoreError::IdentifierHeld(found),
            Guard::Matches => crate::store::StoreError::Overtaken(
                "a condition it expected to match as a reader saw matches otherwise",
            ),
            Guard::Request => crate::store::StoreError::Overtaken(
                "a copy of its message, with the same request id, was answered",
            ),
        }
    }
}
