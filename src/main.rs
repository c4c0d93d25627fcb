//! The `sprig` binary: all logic lives in the library (`sprig::cli`).

/// mimalloc, not glibc's malloc: see `sprig::allocator`.
#[global_allocator]
static GLOBAL: sprig::allocator::Allocator = sprig::allocator::Allocator {};

fn main() -> std::process::ExitCode {
    // Before anything opens a database: SQLite's memory from mimalloc as well.
    sprig::allocator::serve_sqlite();
    sprig::cli::main()
}
