//! P6: heap bytes a pool holds per idle connection, beyond the connection itself.
//!
//! A counting global allocator tracks the live heap. Each pool is built with room for `n`
//! connections and filled with `n` idle ones, for two sizes; the slope between them, less the
//! connection's own size, is what the pool spends on each idle connection (its queue slot, its
//! bookkeeping), and the intercept is its fixed cost (the actor's task, the shared state).
//! Written to `target/criterion/gracepool-extra/memory.json`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::Duration;

use gracepool_bench::manager::{Conn, Trivial};
use gracepool_bench::pools::{Bb8, BenchPool, ChannelFloor, Dead, Grace, Mobc, MutexFloor};
use gracepool_bench::{scenarios, write_extra, Args};
use serde_json::{json, Value};

/// The system allocator, counting the bytes live at any moment.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `System` upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SMALL: usize = 256;
const LARGE: usize = 2_048;

/// Live heap bytes held by a pool filled with `n` idle connections, measured on a
/// current_thread runtime made beforehand.
fn held<P: BenchPool>(n: usize) -> isize {
    let rt = scenarios::current_thread();
    let manager = Trivial::new();
    let stats = manager.stats().clone();
    let before = LIVE.load(Relaxed);
    let (pool, bytes) = rt.block_on(async {
        let pool = scenarios::filled::<P>(manager, n).await;
        // Let background tasks (returns, reapers) come to rest.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let bytes = LIVE.load(Relaxed) - before;
        (pool, bytes)
    });
    rt.block_on(async {
        pool.close().await;
        scenarios::settle(&stats, Duration::from_secs(10)).await;
    });
    bytes
}

fn held_r2d2(n: usize) -> isize {
    let manager = Trivial::new();
    let stats = manager.stats().clone();
    let before = LIVE.load(Relaxed);
    let pool = scenarios::r2d2_filled(manager, n);
    std::thread::sleep(Duration::from_millis(5));
    let bytes = LIVE.load(Relaxed) - before;
    drop(pool);
    while stats.open() > 0 {
        std::thread::yield_now();
    }
    bytes
}

fn row(name: &str, small: isize, large: isize) -> Value {
    let conn = std::mem::size_of::<Conn>() as f64;
    let slope = (large - small) as f64 / (LARGE - SMALL) as f64;
    let per_conn = slope - conn;
    let fixed = small as f64 - slope * SMALL as f64;
    println!(
        "{name:>16}: {per_conn:>7.1} B per idle connection beyond its {conn} B, {fixed:>8.0} B fixed"
    );
    json!({ "name": name, "per_conn_bytes": per_conn, "fixed_bytes": fixed,
            "held_small": small, "held_large": large, "small": SMALL, "large": LARGE,
            "conn_size": conn })
}

fn measure<P: BenchPool>() -> Value {
    // One round first, so that lazily made statics (thread-locals, runtime registries) are
    // not charged to the pool.
    held::<P>(SMALL);
    row(P::NAME, held::<P>(SMALL), held::<P>(LARGE))
}

fn main() {
    let args = Args::from_env();
    if !args.wants("P6") {
        return;
    }
    println!("P6: heap held per idle connection (pool filled to its max, {SMALL} and {LARGE})");
    held_r2d2(SMALL);
    let rows = vec![
        measure::<Grace>(),
        measure::<Dead>(),
        measure::<Bb8>(),
        measure::<Mobc>(),
        row("r2d2", held_r2d2(SMALL), held_r2d2(LARGE)),
        measure::<ChannelFloor>(),
        measure::<MutexFloor>(),
    ];
    if !args.test {
        write_extra("memory", &json!({ "P6": rows })).expect("the target directory is writable");
    }
}
