//! Where `sprig serve`'s heap goes before any request (issue 20 §3: resident memory under
//! 100 MiB): the bytes each start-up step leaves allocated, counted by a global allocator
//! that wraps Sprig's own (mimalloc) and adds up what is live, step by step as
//! `app::Application::build` takes them; then what validating the example referral and
//! the example transaction Bundle adds, the first time (definitions compiled on first use)
//! and the second.
//!
//! `cargo bench --bench startup_heap` (or build it with `--release` and run the binary).
//! Live bytes, not resident memory: mimalloc's pages and the binary's file-backed pages
//! come on top (`/proc/PID/smaps` of a running Sprig shows those).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use sprig::validation::profile::{ProfileOptions, ProfilePass};
use sprig::validation::schema::SchemaPass;
use sprig::validation::{Target, Validator};

/// Sprig's allocator, counting the bytes live and the most ever live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
static INNER: sprig::allocator::Allocator = sprig::allocator::Allocator {};

fn grew(by: isize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: each method forwards to Sprig's allocator with the caller's arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        // SAFETY: as the caller's.
        unsafe { INNER.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        // SAFETY: as the caller's.
        unsafe { INNER.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        grew(-(layout.size() as isize));
        // SAFETY: as the caller's.
        unsafe { INNER.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size as isize - layout.size() as isize);
        // SAFETY: as the caller's.
        unsafe { INNER.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn mib(bytes: isize) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// Prints what `step` added to the live bytes.
fn step<T>(name: &str, step: impl FnOnce() -> T) -> T {
    let before = LIVE.load(Relaxed);
    let started = std::time::Instant::now();
    let kept = step();
    let after = LIVE.load(Relaxed);
    println!(
        "{name:<44} {:>7.2} MiB kept  ({:>7.2} MiB live, {:>7.2} MiB peak so far, {:>6.1} ms)",
        mib(after - before),
        mib(after),
        mib(PEAK.load(Relaxed)),
        started.elapsed().as_secs_f64() * 1000.0
    );
    kept
}

fn main() {
    let mut eager: Vec<sprig::fhir::ResourceType> = sprig::api::capability::SUPPORTED
        .iter()
        .map(|c| c.resource_type)
        .collect();
    eager.push(sprig::fhir::ResourceType::BUNDLE);
    eager.push(sprig::fhir::ResourceType::named("MessageHeader"));
    let schema = step("schema: registry and the eager types", || {
        SchemaPass::load(&eager).unwrap()
    });
    let profiles = step("profiles: definitions, invariants, value sets", || {
        ProfilePass::load_with(ProfileOptions::default()).unwrap()
    });
    let validator = step("validator", || {
        Validator::new(vec![Box::new(schema), Box::new(profiles)])
    });
    let fhirpath = step("FHIRPath engine", || {
        sprig::fhirpath::FhirPath::new().unwrap()
    });
    let mappings = step("mappings", || {
        sprig::mapping::Mappings::shipped(&fhirpath).unwrap()
    });
    let outcomes = step("outcomes", || sprig::outcomes::Outcomes::shipped().unwrap());
    println!(
        "{:<44} {:>7.2} MiB live",
        "after start-up",
        mib(LIVE.load(Relaxed))
    );
    for (name, text) in [
        (
            "ServiceRequest",
            include_str!("../examples/referral-servicerequest.json"),
        ),
        (
            "Bundle",
            include_str!("../examples/referral-transaction-bundle.json"),
        ),
    ] {
        let resource: serde_json::Value = serde_json::from_str(text).unwrap();
        let target = Target {
            resource_type: sprig::fhir::ResourceType::parse(name).unwrap(),
            profiles: &[],
        };
        step(&format!("first validation of the example {name}"), || {
            std::hint::black_box(validator.validate(&target, &resource));
        });
        step(&format!("second validation of the example {name}"), || {
            std::hint::black_box(validator.validate(&target, &resource));
        });
    }
    std::hint::black_box((&mappings, &outcomes));
}
