//! The `sprig` binary: all logic lives in the library (`sprig::cli`).

/// mimalloc rather than glibc's malloc: parsing and validating FHIR JSON
/// makes many small, short-lived allocations, where it is measurably faster
/// (BENCHMARKS.md, "Validator vs a peer").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sprig::cli::main()
}
