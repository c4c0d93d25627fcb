//! The `sprig` binary: all logic lives in the library (`sprig::cli`).

/// mimalloc, not glibc's malloc: see `sprig::allocator`.
#[global_allocator]
static GLOBAL: sprig::allocator::Allocator = sprig::allocator::Allocator {};

fn main() -> std::process::ExitCode {
    sprig::cli::main()
}
