//! A write transaction's queued INSERTs sent as few statements as their meaning
//! allows: consecutive INSERTs into different tables become one statement, each but
//! the last a data-modifying `WITH` member (`WITH w0 AS (INSERT …), w1 AS (INSERT …)
//! INSERT …`), their `$n` placeholders numbered on. A `SELECT` whose result is not
//! read (the commit's `pg_notify`) may end a group as its last statement.
//!
//! Every statement is a round trip to PostgreSQL, and a new referral wrote about
//! twenty INSERTs whose results it never reads, each with its parse, bind, execute and
//! two context switches on each side; on a machine that also runs PostgreSQL those
//! round trips were a third of the CPU (BENCHMARKS, "PostgreSQL: a write's INSERTs in
//! a few statements").
//!
//! What keeps one combined statement meaning what its INSERTs in turn meant:
//! - The members of a `WITH` run against one snapshot and none sees another's rows.
//!   So a statement joins a group only if no word of its text (outside string literals)
//!   names a table an earlier member of the group inserts into. Its own target counts:
//!   two INSERTs into one table never share a statement (a `MAX(seq) + 1` subquery
//!   must see the row before it; a unique conflict between them must stay a conflict).
//!   A word that is a column named like a table only splits a group needlessly.
//! - Foreign keys are checked when the whole statement ends, so a member may name a
//!   parent that a later member inserts; every key that held in turn holds together.
//! - Only INSERTs are combined. An UPDATE or a DELETE (an amendment's details replaced,
//!   a resource's index rows cleared) runs alone, in its place: a DELETE's key check
//!   against a child inserted in the same statement is not the check it had in turn.
//! - Text this module cannot read with certainty (a quoted identifier, a backslash, a
//!   comment, a `$` not followed by digits, an unclosed literal, a second statement, a
//!   schema-qualified target) runs alone.
//! - A group's placeholders stay within the protocol's 65,535.
//!
//! A failing combined statement fails the transaction, as its failing INSERT did: the
//! transaction is aborted either way, and the error names the constraint.
//!
//! Each combined text is prepared once per connection and kept in its statement cache,
//! as every statement is. A kind of write whose multi-row INSERTs vary in their row
//! counts (a referral's reasons, a resource's index rows) makes one text per combination
//! of counts, so varied traffic keeps more texts than the same writes sent one INSERT at
//! a time did. Sent unprepared instead, PostgreSQL parsing and planning each one cost
//! more than a quarter of the gain (creates 628–737/s against 923–994/s, two
//! instances), so they stay prepared; were the cache to churn, each miss costs a prepare,
//! which is about what the unprepared run measured.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::store::deferred::Statement;

/// Placeholders one statement may bind: the protocol counts them in 16 bits.
const MAX_PLACEHOLDERS: usize = u16::MAX as usize;

/// `statements`, in order, with consecutive INSERTs that may share a statement combined.
pub(super) fn combine(statements: Vec<Statement>) -> Vec<Statement> {
    let mut out = Vec::new();
    // The group being built: a few statements, so what it inserts into and how many
    // placeholders it binds are counted from it rather than kept beside it.
    let mut group: Vec<(Statement, Parsed)> = Vec::new();
    for statement in statements {
        let Some(parsed) = Parsed::of(&statement.sql) else {
            flush(&mut group, &mut out);
            out.push(statement);
            continue;
        };
        let names_an_inserted_table = group.iter().any(|(_, member)| {
            member
                .target
                .as_ref()
                .is_some_and(|target| parsed.words.contains(target))
        });
        let placeholders: usize = group.iter().map(|(member, _)| member.args.len()).sum();
        if names_an_inserted_table || placeholders + statement.args.len() > MAX_PLACEHOLDERS {
            flush(&mut group, &mut out);
        }
        // A SELECT is no `WITH` member (one no one reads is never run): it ends the group.
        let ends_the_group = parsed.target.is_none();
        group.push((statement, parsed));
        if ends_the_group {
            flush(&mut group, &mut out);
        }
    }
    flush(&mut group, &mut out);
    out
}

/// Ends `group`: one statement into `out` (its members `WITH` clauses, its last the
/// statement itself), or its one statement as it was.
fn flush(group: &mut Vec<(Statement, Parsed)>, out: &mut Vec<Statement>) {
    let members = std::mem::take(group);
    if members.len() <= 1 {
        out.extend(members.into_iter().map(|(statement, _)| statement));
        return;
    }
    let last = members.len() - 1;
    let size: usize = members.iter().map(|(s, _)| s.sql.len() + 16).sum();
    let mut sql = String::with_capacity(size);
    let mut args = Vec::new();
    for (index, (statement, parsed)) in members.into_iter().enumerate() {
        let offset = args.len();
        if index == 0 {
            sql.push_str("WITH ");
        }
        if index < last {
            // Writing to a String cannot fail.
            let _ = write!(sql, "w{index} AS (");
        }
        renumber_into(&mut sql, &statement.sql, &parsed.placeholders, offset);
        if index < last {
            sql.push_str(if index + 1 < last { "), " } else { ") " });
        }
        args.extend(statement.args);
    }
    out.push(Statement {
        sql: Cow::Owned(sql),
        args,
    });
}

/// `text` into `sql`, each placeholder (its byte range in `text`, `$` to the last
/// digit) numbered `offset` higher.
fn renumber_into(
    sql: &mut String,
    text: &str,
    placeholders: &[(usize, usize, usize)],
    offset: usize,
) {
    let mut from = 0;
    for &(start, end, number) in placeholders {
        sql.push_str(&text[from..start]);
        let _ = write!(sql, "${}", number + offset);
        from = end;
    }
    sql.push_str(&text[from..]);
}

/// What [`combine`] needs to know of a statement's text.
#[derive(Debug)]
struct Parsed {
    /// The table it inserts into, lower-cased; `None` for a `SELECT`.
    target: Option<String>,
    /// Every word outside string literals, lower-cased: the tables it may read.
    words: BTreeSet<String>,
    /// Each `$n`: its byte range in the text and `n`.
    placeholders: Vec<(usize, usize, usize)>,
}

impl Parsed {
    /// `sql` read as an `INSERT INTO table …` or a `SELECT …`; `None` for any other
    /// statement and for text it cannot read with certainty.
    fn of(sql: &str) -> Option<Self> {
        let bytes = sql.as_bytes();
        let mut words = Vec::new();
        let mut placeholders = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let byte = bytes[i];
            match byte {
                b'\'' => {
                    // A literal: '' inside it is a quote; it must close.
                    i += 1;
                    loop {
                        match bytes.get(i) {
                            // An escape string (`E'\''`) reads otherwise: not read here.
                            None | Some(b'\\') => return None,
                            Some(b'\'') if bytes.get(i + 1) == Some(&b'\'') => i += 2,
                            Some(b'\'') => break,
                            Some(_) => i += 1,
                        }
                    }
                    i += 1;
                }
                b'$' => {
                    let start = i;
                    i += 1;
                    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                        i += 1;
                    }
                    let number: usize = sql.get(start + 1..i)?.parse().ok()?;
                    placeholders.push((start, i, number));
                }
                b'"' | b'\\' | b';' => return None,
                b'-' if bytes.get(i + 1) == Some(&b'-') => return None,
                b'/' if bytes.get(i + 1) == Some(&b'*') => return None,
                _ if byte.is_ascii_alphanumeric() || byte == b'_' => {
                    let start = i;
                    while bytes
                        .get(i)
                        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
                    {
                        i += 1;
                    }
                    // The target written `schema.table` would read as the schema.
                    if words.len() == 2 && bytes.get(i) == Some(&b'.') {
                        return None;
                    }
                    words.push(sql[start..i].to_ascii_lowercase());
                }
                _ if byte.is_ascii() => i += 1,
                // Anything else outside a literal is not SQL this module reads.
                _ => return None,
            }
        }
        let target = match words.as_slice() {
            [first, ..] if first == "select" => None,
            [first, second, target, ..]
                if first == "insert"
                    && second == "into"
                    && !target.starts_with(|c: char| c.is_ascii_digit()) =>
            {
                Some(target.clone())
            }
            _ => return None,
        };
        Some(Self {
            target,
            words: words.into_iter().collect(),
            placeholders,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::deferred::Arg;

    fn statement(sql: &'static str, args: usize) -> Statement {
        let mut statement = Statement::new(sql);
        for n in 0..args {
            statement = statement.bind(i64::try_from(n).unwrap_or_default());
        }
        statement
    }

    fn sqls(statements: &[Statement]) -> Vec<&str> {
        statements.iter().map(|s| s.sql.as_ref()).collect()
    }

    #[test]
    fn inserts_into_different_tables_share_one_statement_numbered_on() {
        let combined = combine(vec![
            statement("INSERT INTO a (x, y) VALUES ($1, $2)", 2),
            statement("INSERT INTO b (x) VALUES ($1), ($2)", 2),
            statement("INSERT INTO c (x, s) VALUES ($1, 'it''s $3')", 1),
        ]);
        assert_eq!(
            sqls(&combined),
            ["WITH w0 AS (INSERT INTO a (x, y) VALUES ($1, $2)), \
                 w1 AS (INSERT INTO b (x) VALUES ($3), ($4)) \
                 INSERT INTO c (x, s) VALUES ($5, 'it''s $3')"]
        );
        let values: Vec<&Arg> = combined.iter().flat_map(|s| &s.args).collect();
        assert_eq!(values.len(), 5);
        assert_eq!(values[2], &Arg::Int(0));
    }

    #[test]
    fn a_statement_naming_a_table_the_group_inserts_into_starts_a_new_group() {
        let combined = combine(vec![
            statement("INSERT INTO notes (n, seq) VALUES ($1, 1)", 1),
            statement("INSERT INTO other (n) VALUES ($1)", 1),
            // Reads `notes`: it must see the first row, so it cannot share its statement.
            statement(
                "INSERT INTO history (n, seq) VALUES ($1, (SELECT COUNT(*) FROM notes))",
                1,
            ),
            statement("INSERT INTO other (n) VALUES ($1)", 1),
        ]);
        assert_eq!(
            sqls(&combined),
            [
                "WITH w0 AS (INSERT INTO notes (n, seq) VALUES ($1, 1)) \
                 INSERT INTO other (n) VALUES ($2)",
                "WITH w0 AS (INSERT INTO history (n, seq) VALUES ($1, (SELECT COUNT(*) FROM notes))) \
                 INSERT INTO other (n) VALUES ($2)",
            ]
        );
    }

    #[test]
    fn anything_but_an_insert_runs_alone_in_its_place() {
        let combined = combine(vec![
            statement("INSERT INTO a (x) VALUES ($1)", 1),
            statement("DELETE FROM b WHERE x = $1", 1),
            statement("INSERT INTO b (x) VALUES ($1)", 1),
            statement("UPDATE c SET x = $1", 1),
            statement("INSERT INTO d (x) VALUES ($1)", 1),
        ]);
        assert_eq!(
            sqls(&combined),
            [
                "INSERT INTO a (x) VALUES ($1)",
                "DELETE FROM b WHERE x = $1",
                "INSERT INTO b (x) VALUES ($1)",
                "UPDATE c SET x = $1",
                "INSERT INTO d (x) VALUES ($1)",
            ]
        );
    }

    #[test]
    fn a_select_ends_its_group_unless_it_names_a_table_the_group_inserts_into() {
        let combined = combine(vec![
            statement("INSERT INTO a (x) VALUES ($1)", 1),
            statement("SELECT pg_notify($1, '')", 1),
            statement("INSERT INTO b (x) VALUES ($1)", 1),
            statement("SELECT x FROM b WHERE x = $1 FOR UPDATE", 1),
            statement("INSERT INTO c (x) VALUES ($1)", 1),
        ]);
        assert_eq!(
            sqls(&combined),
            [
                "WITH w0 AS (INSERT INTO a (x) VALUES ($1)) SELECT pg_notify($2, '')",
                "INSERT INTO b (x) VALUES ($1)",
                "SELECT x FROM b WHERE x = $1 FOR UPDATE",
                "INSERT INTO c (x) VALUES ($1)",
            ]
        );
    }

    #[test]
    fn text_it_cannot_read_with_certainty_runs_alone() {
        for unread in [
            "INSERT INTO \"a\" (x) VALUES ($1)",
            "INSERT INTO a (x) VALUES (E'\\x')",
            "INSERT INTO a (x) VALUES ($1) -- b",
            "INSERT INTO a (x) VALUES ($1) /* b */",
            "INSERT INTO a (x) VALUES ($tag$b$tag$)",
            "INSERT INTO a (x) VALUES ('open)",
            "INSERT INTO a (x) VALUES ($1); DELETE FROM b",
            "INSERT INTO public.z (x) VALUES ($1)",
            "WITH b AS (SELECT 1) INSERT INTO a (x) SELECT 1 FROM b",
        ] {
            let combined = combine(vec![
                statement("INSERT INTO z (x) VALUES ($1)", 1),
                Statement::new(unread),
                statement("INSERT INTO y (x) VALUES ($1)", 1),
            ]);
            assert_eq!(
                sqls(&combined),
                [
                    "INSERT INTO z (x) VALUES ($1)",
                    unread,
                    "INSERT INTO y (x) VALUES ($1)"
                ],
                "{unread}"
            );
        }
    }

    #[test]
    fn a_group_stays_within_the_protocols_placeholders() {
        let many = MAX_PLACEHOLDERS / 2 + 1;
        let combined = combine(vec![
            statement("INSERT INTO a (x) VALUES ($1)", many),
            statement("INSERT INTO b (x) VALUES ($1)", many),
            statement("INSERT INTO c (x) VALUES ($1)", 1),
        ]);
        assert_eq!(combined.len(), 2);
        assert_eq!(combined[0].args.len(), many);
        assert_eq!(combined[1].args.len(), many + 1);
    }
}
