//! The search index's version. The SQL itself is in `store/sql/search.rs`,
//! shared by both backends.

/// The version of the parameter table the index is built for. Change it
/// whenever `search::params` changes what is indexed: the store then
/// rebuilds the index at start-up (`rebuild_index_if_stale`).
pub(crate) const INDEX_VERSION: i64 = 2;
