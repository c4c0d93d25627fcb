//! The search index's version. The SQL itself is in `store/sql/search.rs`,
//! shared by both backends.

/// The version of the parameter table the index is built for. Change it
/// whenever `search::params` changes what is indexed: the store then
/// rebuilds the index at start-up (`rebuild_index_if_stale`).
pub(crate) const INDEX_VERSION: i64 = 2;

/// A value bound to a search statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundValue {
    /// Text.
    Text(String),
    /// A whole number.
    Int(i64),
}

/// One statement a search runs, as the backend receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchStatement {
    /// The SQL text, with `$n` placeholders.
    pub sql: String,
    /// The values of the placeholders, in order.
    pub binds: Vec<BoundValue>,
}
