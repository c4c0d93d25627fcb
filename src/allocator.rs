//! The memory allocator of the `sprig` binary and the benches: mimalloc.
//!
//! Parsing and validating FHIR JSON makes many small, short-lived allocations (a `String` per
//! key, a `Vec` per FHIRPath step); with glibc's malloc they were a fifth of a referral
//! Bundle's validation time, and mimalloc made that validation about a fifth faster
//! (BENCHMARKS.md, "Validator vs a peer"). The cost is memory held. mimalloc is built with
//! `no_thp` (Cargo.toml): otherwise it `madvise`s its arenas for transparent huge pages, and
//! on Linux every arena region it touched became a resident 2 MiB page (`sprig serve` ready:
//! 107 MiB, 72 MiB of it huge pages; without: 85 MiB, BENCHMARKS.md "The write path, next
//! step"). `MIMALLOC_ARENA_EAGER_COMMIT=0` in the environment avoided the same pages by
//! committing less, at some cost in speed (mimalloc reads it when the process starts, before
//! `main`, so it is the operator's choice, not set from here).
//!
//! Why not the `mimalloc` crate's `MiMalloc`: it sends every request through
//! `mi_malloc_aligned`. In mimalloc 3 that call takes its fast path only while the size
//! class's current page has a free block; otherwise it falls back to a generic path that
//! treats only power-of-two sizes as naturally aligned, so a 24-byte `String` or a 40-byte
//! FHIRPath value over-allocates (size + alignment − 1, from a larger size class) and marks
//! its page as holding interior pointers. Measured on the validator's FHIRPath evaluation,
//! the aligned calls were a fifth of its instructions (BENCHMARKS.md, "Fifth session").
//! mimalloc 3 places every block of 16 bytes or more on a 16-byte boundary (and smaller
//! ones on their size's), so a request whose alignment is at most 16 and at most its size,
//! which is nearly all of Rust's, is served by plain `mi_malloc`; only the rest pay for
//! the aligned call. The Rust standard library's `System` allocator draws the same line
//! over `malloc`.
//!
//! The library itself sets no allocator: `src/main.rs` and each bench declare
//! `#[global_allocator] static GLOBAL: Allocator`, so that bench figures are the binary's.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every block mimalloc hands out of at least this size already has
/// (`MI_MAX_ALIGN_SIZE`).
const NATURAL_ALIGNMENT: usize = 16;

/// mimalloc, as `#[global_allocator]`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Allocator {}

/// True when a plain (unaligned) mimalloc call returns memory aligned as `layout` needs.
#[inline]
fn naturally_aligned(size: usize, align: usize) -> bool {
    align <= NATURAL_ALIGNMENT && align <= size
}

/// A plain mimalloc call (`mi_malloc`, `mi_zalloc`) and its aligned twin.
type Plain = unsafe extern "C" fn(usize) -> *mut c_void;
type Aligned = unsafe extern "C" fn(usize, usize) -> *mut c_void;

/// A new block for `layout`, from `plain` where that is aligned enough, else `aligned`.
///
/// # Safety
/// As `GlobalAlloc::alloc`: `layout` has a non-zero size.
#[inline]
unsafe fn new_block(layout: Layout, plain: Plain, aligned: Aligned) -> *mut u8 {
    // SAFETY: mimalloc accepts any size; alignment is a power of two (Layout's rule).
    unsafe {
        if naturally_aligned(layout.size(), layout.align()) {
            plain(layout.size()).cast()
        } else {
            aligned(layout.size(), layout.align()).cast()
        }
    }
}

// SAFETY: each method forwards to the mimalloc call with the same contract (a null pointer
// on failure; `free`/`realloc` accept any pointer mimalloc returned, whichever call made
// it), and returns memory aligned as the layout asks: plain calls only when
// `naturally_aligned` holds (see the module's documentation), aligned calls otherwise.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { new_block(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { new_block(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a pointer this allocator returned (GlobalAlloc's
        // contract); mimalloc frees aligned and unaligned blocks alike.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract);
        // the new block keeps `layout.align()`, checked against the new size.
        unsafe {
            if naturally_aligned(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// SQLite's own memory from mimalloc too, and without SQLite's memory statistics.
///
/// SQLite allocates through glibc's `malloc` unless told otherwise, and with its memory
/// statistics on (the default) every `sqlite3_malloc` and `sqlite3_free` also takes a
/// mutex global to the process, shared by the writer and every reader: under a load of
/// transaction Bundles glibc's allocator was 3.7 % of Sprig's CPU and that mutex about
/// 1.7 % more (BENCHMARKS.md, "SQLite's memory; a new referral's reads on the caller's
/// thread"). Sprig reads no SQLite memory statistic.
///
/// Must run before SQLite is first used (`sqlite3_config` refuses once it is initialised):
/// `src/main.rs` calls it first thing. Returns whether SQLite took both settings (false
/// if it was already initialised, when it keeps its defaults).
pub fn serve_sqlite() -> bool {
    static SERVED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SERVED.get_or_init(|| {
        let methods = sqlite::METHODS;
        // SAFETY: called once (the `OnceLock`); `sqlite3_config` takes these arguments
        // (an int; a pointer to a methods struct, which it copies) and answers
        // SQLITE_MISUSE, changing nothing, once SQLite is initialised.
        unsafe {
            libsqlite3_sys::sqlite3_config(
                libsqlite3_sys::SQLITE_CONFIG_MEMSTATUS,
                std::ffi::c_int::from(0u8),
            ) == libsqlite3_sys::SQLITE_OK
                && libsqlite3_sys::sqlite3_config(
                    libsqlite3_sys::SQLITE_CONFIG_MALLOC,
                    &raw const methods,
                ) == libsqlite3_sys::SQLITE_OK
        }
    })
}

/// SQLite's memory methods (`sqlite3_mem_methods`) on mimalloc. SQLite asks for blocks of
/// 8-byte alignment, which every mimalloc block has.
mod sqlite {
    use std::ffi::{c_int, c_void};

    use libmimalloc_sys as mi;
    use libsqlite3_sys as ffi;

    // In the mimalloc `libmimalloc-sys` builds and links; its bindings declare these only
    // under its `extended` feature, which would pull in a crate for C types we have.
    unsafe extern "C" {
        fn mi_usable_size(p: *const c_void) -> usize;
        fn mi_good_size(size: usize) -> usize;
    }

    pub(super) const METHODS: ffi::sqlite3_mem_methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(malloc),
        xFree: Some(free),
        xRealloc: Some(realloc),
        xSize: Some(size),
        xRoundup: Some(roundup),
        xInit: Some(init),
        xShutdown: Some(shutdown),
        pAppData: std::ptr::null_mut(),
    };

    /// SQLite's sizes are positive `int`s; anything else is treated as zero.
    fn bytes(n: c_int) -> usize {
        usize::try_from(n).unwrap_or(0)
    }

    unsafe extern "C" fn malloc(n: c_int) -> *mut c_void {
        // SAFETY: any size; a null pointer on failure, as SQLite expects.
        unsafe { mi::mi_malloc(bytes(n)) }
    }

    unsafe extern "C" fn free(p: *mut c_void) {
        // SAFETY: SQLite frees only what `malloc`/`realloc` above returned.
        unsafe { mi::mi_free(p) }
    }

    unsafe extern "C" fn realloc(p: *mut c_void, n: c_int) -> *mut c_void {
        // SAFETY: as in `free`; the block keeps its contents up to the smaller size.
        unsafe { mi::mi_realloc(p, bytes(n)) }
    }

    unsafe extern "C" fn size(p: *mut c_void) -> c_int {
        // SAFETY: as in `free` (and mimalloc answers 0 for null).
        let usable = unsafe { mi_usable_size(p) };
        c_int::try_from(usable).unwrap_or(c_int::MAX)
    }

    unsafe extern "C" fn roundup(n: c_int) -> c_int {
        // SAFETY: a pure function of the size.
        let good = unsafe { mi_good_size(bytes(n)) };
        c_int::try_from(good).unwrap_or(n)
    }

    unsafe extern "C" fn init(_: *mut c_void) -> c_int {
        ffi::SQLITE_OK
    }

    unsafe extern "C" fn shutdown(_: *mut c_void) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment Rust can ask for up to a few KiB comes back aligned as
    /// asked, through each entry point, with its contents kept by `realloc`.
    #[test]
    fn blocks_are_aligned_as_asked() {
        let allocator = Allocator {};
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in (align..=5000).step_by(align.max(8)) {
                let layout = Layout::from_size_align(size, align).expect("a valid layout");
                // SAFETY: a non-zero size; every pointer is checked, written within its
                // size and freed once, with the layout it was made with.
                unsafe {
                    let p = allocator.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc size {size} align {align}");
                    p.write_bytes(0xA5, size);
                    let grown = allocator.realloc(p, layout, size * 3);
                    assert!(!grown.is_null());
                    assert_eq!(grown as usize % align, 0, "realloc {size} align {align}");
                    assert_eq!(*grown.add(size - 1), 0xA5, "realloc keeps the contents");
                    let grown_layout =
                        Layout::from_size_align(size * 3, align).expect("a valid layout");
                    allocator.dealloc(grown, grown_layout);
                    let z = allocator.alloc_zeroed(layout);
                    assert!(!z.is_null());
                    assert_eq!(z as usize % align, 0, "alloc_zeroed {size} align {align}");
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    allocator.dealloc(z, layout);
                }
            }
        }
    }

    /// Run by `sqlite_allocates_from_mimalloc_once_served` in a process of its own, where
    /// nothing has used SQLite yet (in this test binary other tests may have, and SQLite
    /// takes its memory settings only before that).
    #[test]
    #[ignore = "run in a fresh process by sqlite_allocates_from_mimalloc_once_served"]
    fn sqlite_in_a_fresh_process() {
        unsafe extern "C" {
            fn mi_is_in_heap_region(p: *const c_void) -> bool;
        }
        assert!(serve_sqlite(), "SQLite took both settings");
        assert!(serve_sqlite(), "asking again answers as the first time");
        // SAFETY: SQLite's allocation functions on a block used only here, freed once; an
        // in-memory database opened, used through SQLite's API and closed.
        unsafe {
            let p = libsqlite3_sys::sqlite3_malloc(1000);
            assert!(!p.is_null());
            assert!(mi_is_in_heap_region(p), "the block is mimalloc's");
            assert!(libsqlite3_sys::sqlite3_msize(p) >= 1000);
            assert_eq!(
                libsqlite3_sys::sqlite3_memory_used(),
                0,
                "no memory statistics kept"
            );
            let grown = libsqlite3_sys::sqlite3_realloc(p, 100_000);
            assert!(mi_is_in_heap_region(grown));
            libsqlite3_sys::sqlite3_free(grown);

            let mut db = std::ptr::null_mut();
            let name = c":memory:";
            assert_eq!(
                libsqlite3_sys::sqlite3_open(name.as_ptr(), &raw mut db),
                libsqlite3_sys::SQLITE_OK
            );
            // Enough rows to allocate, grow and free page after page.
            let work = c"CREATE TABLE t (x TEXT); \
                WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) \
                INSERT INTO t SELECT hex(randomblob(500)) FROM n; \
                DELETE FROM t WHERE rowid % 2 = 0;";
            assert_eq!(
                libsqlite3_sys::sqlite3_exec(
                    db,
                    work.as_ptr(),
                    None,
                    std::ptr::null_mut(),
                    std::ptr::null_mut()
                ),
                libsqlite3_sys::SQLITE_OK
            );
            assert_eq!(libsqlite3_sys::sqlite3_close(db), libsqlite3_sys::SQLITE_OK);
        }
    }

    /// SQLite's memory comes from mimalloc once `serve_sqlite` has run, as `main` runs it.
    #[test]
    fn sqlite_allocates_from_mimalloc_once_served() {
        let exe = std::env::current_exe().expect("the test binary");
        let out = std::process::Command::new(exe)
            .args([
                "--ignored",
                "--exact",
                "allocator::tests::sqlite_in_a_fresh_process",
                "--test-threads=1",
            ])
            .output()
            .expect("the test binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
