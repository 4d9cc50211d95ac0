//! Steady-state allocation check for the Selector's request/response path.
//!
//! This file is its own test binary because it installs a counting `#[global_allocator]`. Only the
//! thread that runs a measurement is counted (a thread-local switch), and measurements hold a lock so
//! that two tests of this binary running in parallel never add to each other's counts.
//!
//! Set `MQNET_ALLOC_BACKTRACE=N` to print a backtrace (to stderr, uncaptured) for the first `N`
//! allocations made while a measurement is running; that is how to find out where a steady-state
//! allocation comes from.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use mqnet_test_support::echo::LoopbackEcho;

// ----- counting allocator ------------------------------------------------------------------------

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static REALLOCS: AtomicUsize = AtomicUsize::new(0);
/// Backtraces still to print; set from `MQNET_ALLOC_BACKTRACE` before a measurement.
static TRACES_LEFT: AtomicUsize = AtomicUsize::new(0);
static TRACING: AtomicBool = AtomicBool::new(false);
/// Held for the whole of a measurement: the counters are global.
static MEASURING: Mutex<()> = Mutex::new(());

thread_local! {
    /// Whether allocations on this thread are counted.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Set while the allocator itself allocates (to print a backtrace), so that is not counted.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

impl Counting {
    fn record(kind: &str, size: usize) {
        // `try_with`: the thread-locals may already be gone while a thread is being torn down.
        let counting = COUNTING.try_with(Cell::get).unwrap_or(false);
        let in_hook = IN_HOOK.try_with(Cell::get).unwrap_or(true);
        if !counting || in_hook {
            return;
        }
        if kind == "alloc" {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        } else {
            REALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        if TRACING.load(Ordering::Relaxed)
            && TRACES_LEFT
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        {
            IN_HOOK.with(|h| h.set(true));
            let bt = std::backtrace::Backtrace::force_capture();
            // Straight to stderr: the harness does not capture it, and it works inside the allocator.
            let _ = writeln!(
                std::io::stderr(),
                "---- counted {kind} of {size} bytes ----\n{bt}"
            );
            IN_HOOK.with(|h| h.set(false));
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counting is
// side bookkeeping that never touches the returned memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::record("alloc", layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::record("alloc", layout.size());
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::record("realloc", new_size);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and reallocations made by this thread while `f` runs.
fn count_allocs<R>(f: impl FnOnce() -> R) -> (usize, usize, R) {
    let traces: usize = std::env::var("MQNET_ALLOC_BACKTRACE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let _serial = MEASURING.lock().unwrap_or_else(PoisonError::into_inner);
    TRACES_LEFT.store(traces, Ordering::Relaxed);
    TRACING.store(traces > 0, Ordering::Relaxed);
    let a0 = ALLOCS.load(Ordering::Relaxed);
    let r0 = REALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    TRACING.store(false, Ordering::Relaxed);
    (
        ALLOCS.load(Ordering::Relaxed) - a0,
        REALLOCS.load(Ordering::Relaxed) - r0,
        out,
    )
}

const PAYLOAD_LEN: usize = 100;

// ----- tests -------------------------------------------------------------------------------------

/// The counter must see allocations, or a zero below would prove nothing.
#[test]
fn counter_detects_allocations() {
    let (allocs, _, v) = count_allocs(|| std::hint::black_box(vec![0u8; 100]));
    drop(v);
    assert_eq!(allocs, 1, "a Vec allocation was not counted");
    let (allocs, reallocs, v) = count_allocs(|| {
        let mut v = std::hint::black_box(Vec::<u8>::with_capacity(1));
        v.extend_from_slice(&[1; 4096]);
        v
    });
    drop(v);
    assert_eq!(allocs, 1);
    assert!(reallocs >= 1, "a Vec growth was not counted");
    let (allocs, reallocs, ()) = count_allocs(|| ());
    assert_eq!((allocs, reallocs), (0, 0));
}

/// Allocations and reallocations during 10,000 and then 20,000 echo round trips, after warm-up.
struct Measured {
    allocs_10k: usize,
    reallocs_10k: usize,
    allocs_20k: usize,
    reallocs_20k: usize,
}

fn measure() -> Measured {
    let mut echo = LoopbackEcho::new(PAYLOAD_LEN);
    let deadline = Instant::now() + Duration::from_secs(120);

    // Warm-up: lets every reused buffer (send queues, output vectors, read buffers, the payload's
    // shared refcount) reach its steady-state capacity.
    echo.run(2_000, 1, deadline);

    let (allocs_10k, reallocs_10k, _) = count_allocs(|| echo.run(10_000, 1, deadline));
    let (allocs_20k, reallocs_20k, _) = count_allocs(|| echo.run(20_000, 1, deadline));
    eprintln!(
        "allocations: 10,000 round trips: {allocs_10k} allocs + {reallocs_10k} reallocs; \
         20,000 round trips: {allocs_20k} allocs + {reallocs_20k} reallocs"
    );
    // Every round trip is one frame received by each end.
    assert_eq!(echo.selector().metrics().frames_in, 2 * 32_000);
    Measured {
        allocs_10k,
        reallocs_10k,
        allocs_20k,
        reallocs_20k,
    }
}

/// Once warm, a request/response round trip allocates nothing: the allocation count for 20,000
/// round trips equals the count for 10,000, and both are zero. The read path reclaims its buffer
/// (`BytesMut::try_reclaim`) once the previous poll's frames are dropped instead of allocating a new
/// one. On failure, rerun with `MQNET_ALLOC_BACKTRACE=5 cargo test --test zero_alloc -- --nocapture`
/// to see where the allocations come from.
#[test]
fn echo_round_trips_allocate_nothing_in_steady_state() {
    let m = measure();
    assert_eq!(
        m.allocs_10k + m.reallocs_10k,
        m.allocs_20k + m.reallocs_20k,
        "allocations grow with the number of round trips: {}+{} for 10,000, {}+{} for 20,000 \
         (rerun with MQNET_ALLOC_BACKTRACE=5 and --nocapture to see where)",
        m.allocs_10k,
        m.reallocs_10k,
        m.allocs_20k,
        m.reallocs_20k,
    );
    assert_eq!(
        (m.allocs_20k, m.reallocs_20k),
        (0, 0),
        "steady state should allocate nothing"
    );
}

/// What holds today, and must keep holding: at most two allocations per received frame (the read
/// buffer and its shared header, see above) and no reallocation. A regression that allocates more
/// per frame, or grows something without bound, fails here.
#[test]
fn echo_round_trip_allocations_are_bounded_per_frame() {
    let m = measure();
    // Two frames received per round trip, at most two allocations each.
    assert!(
        m.allocs_10k <= 4 * 10_000 && m.allocs_20k <= 4 * 20_000,
        "more than 2 allocations per received frame: {} for 10,000 round trips, {} for 20,000",
        m.allocs_10k,
        m.allocs_20k
    );
    assert_eq!(
        (m.reallocs_10k, m.reallocs_20k),
        (0, 0),
        "something grows in the steady state"
    );
}
