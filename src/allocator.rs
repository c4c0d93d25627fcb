//! The memory allocator of the `sprig` binary and the benches: mimalloc.
//!
//! Parsing and validating FHIR JSON makes many small, short-lived allocations (a `String` per
//! key, a `Vec` per FHIRPath step); with glibc's malloc they were a fifth of a referral
//! Bundle's validation time, and mimalloc made that validation about a fifth faster
//! (BENCHMARKS.md, "Validator vs a peer"). The cost is memory held: `sprig serve` is resident
//! at about 96 MiB when ready rather than about 60; `MIMALLOC_ARENA_EAGER_COMMIT=0` in its
//! environment brings that to about 75 MiB at some cost in speed (mimalloc reads it when the
//! process starts, before `main`, so it is the operator's choice, not set from here).
//!
//! The library itself sets no allocator: `src/main.rs` and each bench declare
//! `#[global_allocator] static GLOBAL: Allocator`, so that bench figures are the binary's.

/// The allocator type to declare as `#[global_allocator]`.
pub type Allocator = mimalloc::MiMalloc;
