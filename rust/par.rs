//! A small parallel driver that keeps the calling thread busy.
//!
//! Handing work to rayon from a thread outside its pool (every call from Python) costs a wake-up of
//! a sleeping worker, tens to hundreds of microseconds on a virtual machine, while the calling
//! thread waits idle. [`for_each_item`] instead lets the calling thread start on the items at once
//! and has `threads - 1` helpers (a private rayon pool) join in as they wake, all taking items from
//! one shared counter; a helper that wakes after the work is done is not waited for. Small jobs run
//! on the calling thread alone. Every item is processed by exactly one thread, with the same
//! operations whichever thread it is, so results never depend on the number of threads.
//!
//! Interruption ([`crate::interrupt`]): helpers run with the caller's interrupt installed, so the
//! kernels' ticks see a stop on every thread, and no thread takes another item once a stop was
//! requested; the calling thread, which always works, is the one that polls. A stopped
//! [`for_each_item`] returns [`CoreError::Interrupted`]. Its bookkeeping (one slot per item) is
//! allocated fallibly.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{CoreError, CoreResult};
use crate::interrupt::{self, Helper};
use crate::mem;

/// The number of threads rayon's global pool would have: `RAYON_NUM_THREADS` if set to a positive
/// integer, else the available parallelism (rayon's own rule).
pub fn configured_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

/// The helpers of calls from outside any pool: `configured_threads() - 1` rayon workers, so that
/// with the calling thread exactly `configured_threads()` threads compute (a pool of as many
/// workers as cores would leave one of them spinning idle against the others for a core).
fn helper_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let helpers = configured_threads().saturating_sub(1);
        if helpers == 0 {
            return None;
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(helpers)
            .thread_name(|i| format!("offtd-helper-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// The threads [`for_each_item`] would use for `items` items: for the memory plans of per-thread
/// scratch.
pub fn threads_for(items: usize, parallel: bool) -> usize {
    if !(parallel && items > 1) {
        return 1;
    }
    let t = if rayon::current_thread_index().is_some() {
        rayon::current_num_threads()
    } else {
        configured_threads()
    };
    t.min(items).max(1)
}

/// Bytes [`for_each_item`] allocates for its bookkeeping of `items` items of type `T`.
pub fn overhead_bytes<T>(items: usize) -> u128 {
    mem::bytes_of::<Mutex<Option<T>>>(items)
}

/// Runs `work(scratch, i, item)` for every `(i, item)` of `items`, with one `scratch = init()` per
/// participating thread. Parallel only when `parallel` is true, there is more than one item and
/// more than one thread is allowed: the current rayon pool's size when called from one of its
/// workers (tests pin thread counts with `ThreadPool::install`), else [`configured_threads`].
///
/// Stops taking items once the caller's kernel was asked to stop, and then returns
/// [`CoreError::Interrupted`]; [`CoreError::OutOfMemory`] (argument `items`) when its bookkeeping
/// cannot be allocated.
pub fn for_each_item<T, S, I, W>(items: Vec<T>, parallel: bool, init: I, work: W) -> CoreResult<()>
where
    T: Send,
    I: Fn() -> S + Sync,
    W: Fn(&mut S, usize, T) + Sync,
{
    let helper = Helper::current();
    let in_pool = rayon::current_thread_index().is_some();
    let threads = if parallel && items.len() > 1 {
        let t = if in_pool {
            rayon::current_num_threads()
        } else {
            configured_threads()
        };
        t.min(items.len())
    } else {
        1
    };
    if threads <= 1 {
        let mut scratch = init();
        for (i, item) in items.into_iter().enumerate() {
            if helper.is_stopped() {
                break;
            }
            work(&mut scratch, i, item);
        }
        return interrupt::check();
    }
    let slots: Vec<Mutex<Option<T>>> =
        mem::collect("items", items.into_iter().map(|t| Mutex::new(Some(t))))?;
    let next = AtomicUsize::new(0);
    let run = || {
        let mut scratch: Option<S> = None;
        loop {
            if helper.is_stopped() {
                break;
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= slots.len() {
                break;
            }
            // each index is claimed once, so the slot still holds its item
            let item = slots[i]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            if let Some(item) = item {
                work(scratch.get_or_insert_with(&init), i, item);
            }
        }
    };
    // helpers see the caller's interrupt (the caller keeps polling it)
    let inner = run;
    let run = || helper.run(inner);
    let run = &run;
    match (in_pool, helper_pool()) {
        (false, Some(pool)) => run_with_helpers(pool, threads - 1, run),
        // called from a pool's worker (e.g. inside `ThreadPool::install`): that pool helps, and
        // its worker runs any helper job still queued at the end itself
        _ => rayon::in_place_scope(|scope| {
            for _ in 1..threads {
                scope.spawn(move |_| run());
            }
            run();
        }),
    }
    interrupt::check()
}

/// Helpers registered with [`run_with_helpers`]: whether the caller still accepts helpers, and how
/// many are inside the work.
struct Gate {
    closed: AtomicBool,
    active: AtomicUsize,
}

/// Leaves the gate (on return or unwind).
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The caller's `run` with its lifetime erased, for the helper jobs.
struct RunPtr(*const (dyn Fn() + Sync + 'static));

// SAFETY: the pointee is `Sync`, and it is only dereferenced under the protocol of
// `run_with_helpers`, while the caller keeps it alive.
unsafe impl Send for RunPtr {}

impl RunPtr {
    /// # Safety
    /// The pointee must still be alive: see `run_with_helpers`.
    unsafe fn call(&self) {
        (*self.0)()
    }
}

/// Runs `run` on the calling thread and on up to `helpers` jobs of `pool`, returning once `run` has
/// returned here and in every helper that started it; never waits for a helper that has not started
/// (waking a sleeping worker can take far longer than the work itself on a virtual machine).
///
/// Protocol: a helper registers (`active += 1`) and then runs `run` only if the gate is still open;
/// the caller closes the gate after its own `run` and waits until `active` is zero. With sequentially
/// consistent operations, a helper either is counted before the gate closes (and waited for) or sees
/// it closed (and touches nothing but the shared `Gate`, which it co-owns).
fn run_with_helpers(pool: &rayon::ThreadPool, helpers: usize, run: &(dyn Fn() + Sync)) {
    let gate = Arc::new(Gate {
        closed: AtomicBool::new(false),
        active: AtomicUsize::new(0),
    });
    let ptr: *const (dyn Fn() + Sync + '_) = run;
    // SAFETY: only the lifetime changes; `run` outlives every call through the pointer (protocol
    // above: this function returns only after closing the gate and seeing `active == 0`).
    let ptr: *const (dyn Fn() + Sync + 'static) = unsafe { std::mem::transmute(ptr) };
    // closes the gate and waits for registered helpers when this function returns or unwinds
    let _close = CloseAndWait(&gate);
    for _ in 0..helpers {
        let gate = Arc::clone(&gate);
        let job = RunPtr(ptr);
        pool.spawn(move || {
            gate.active.fetch_add(1, Ordering::SeqCst);
            let _leave = Leave(&gate.active);
            if !gate.closed.load(Ordering::SeqCst) {
                // SAFETY: registered while the gate was open, so the caller is waiting for us.
                unsafe { job.call() };
            }
        });
    }
    run();
}

/// Closes a [`Gate`] and waits until no helper is inside (on drop, so also during unwinding).
struct CloseAndWait<'a>(&'a Gate);

impl Drop for CloseAndWait<'_> {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
        let mut spins = 0u32;
        while self.0.active.load(Ordering::SeqCst) != 0 {
            // a helper is finishing its last item
            if spins < 1000 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// `[f(c) for c in xs.chunks(chunk)]`, in chunk order, the chunks shared among threads when
/// `parallel` (see [`for_each_item`]; `f` should [`interrupt::tick`] its work).
pub fn map_chunks<T, R, F>(xs: &[T], chunk: usize, parallel: bool, f: F) -> CoreResult<Vec<R>>
where
    T: Sync,
    R: Send,
    F: Fn(&[T]) -> R + Sync,
{
    let chunk = chunk.max(1);
    map_ranges(xs.len(), chunk, parallel, |lo, hi| f(&xs[lo..hi]))
}

/// `[f(lo, hi) for each range [lo, hi) of `chunk` consecutive indices below `len`]`, in order, the
/// ranges shared among threads when `parallel`.
pub fn map_ranges<R, F>(len: usize, chunk: usize, parallel: bool, f: F) -> CoreResult<Vec<R>>
where
    R: Send,
    F: Fn(usize, usize) -> R + Sync,
{
    let chunk = chunk.max(1);
    let count = len.div_ceil(chunk);
    let mut out: Vec<Option<R>> = mem::collect("items", (0..count).map(|_| None))?;
    let items: Vec<(usize, &mut Option<R>)> =
        mem::collect("items", (0..count).map(|c| c * chunk).zip(out.iter_mut()))?;
    for_each_item(
        items,
        parallel,
        || (),
        |_, _, (lo, slot)| *slot = Some(f(lo, (lo + chunk).min(len))),
    )?;
    let mut res = mem::with_capacity("items", count)?;
    for r in out {
        res.push(r.ok_or(CoreError::Interrupted)?);
    }
    Ok(res)
}

/// Splits `v` into consecutive mutable pieces of the given lengths.
pub fn split_lengths<T>(
    mut v: &mut [T],
    lens: impl ExactSizeIterator<Item = usize>,
) -> CoreResult<Vec<&mut [T]>> {
    let mut out = mem::with_capacity("count", lens.len())?;
    for len in lens {
        let (head, tail) = v.split_at_mut(len);
        out.push(head);
        v = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_helper_is_not_waited_for_and_does_nothing() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let (block_tx, block_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        // occupy the only worker until released
        pool.spawn(move || {
            started_tx.send(()).unwrap();
            block_rx.recv().unwrap();
        });
        started_rx.recv().unwrap();
        let calls = AtomicUsize::new(0);
        run_with_helpers(&pool, 1, &|| {
            calls.fetch_add(1, Ordering::SeqCst);
        });
        // returned although the helper job is still queued behind the blocker
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        block_tx.send(()).unwrap();
        // the helper then runs, finds the gate closed and leaves `calls` (long gone) alone
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        pool.spawn(move || done_tx.send(()).unwrap());
        done_rx.recv().unwrap();
    }

    #[test]
    fn helpers_share_the_items() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let next = AtomicUsize::new(0);
        let seen: Vec<AtomicUsize> = (0..200).map(|_| AtomicUsize::new(0)).collect();
        let run = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= seen.len() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
            seen[i].fetch_add(1, Ordering::SeqCst);
        };
        run_with_helpers(&pool, 3, &run);
        assert!(seen.iter().all(|s| s.load(Ordering::SeqCst) == 1));
    }

    #[test]
    fn a_stop_ends_the_items_on_every_thread() {
        use crate::interrupt::{scope, tick, Interrupt, TICK_UNITS};
        let poll = || true; // stop at the first poll (after POLL_PERIOD)
        let intr = Interrupt::new(&poll);
        let done = AtomicUsize::new(0);
        let items: Vec<usize> = (0..100_000).collect();
        let t = std::time::Instant::now();
        let res = scope(&intr, || {
            for_each_item(
                items,
                true,
                || (),
                |_, _, _| {
                    let start = std::time::Instant::now();
                    while start.elapsed() < std::time::Duration::from_micros(200) {
                        if tick(TICK_UNITS) {
                            return;
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                },
            )
        });
        assert_eq!(res, Err(CoreError::Interrupted));
        assert!(done.load(Ordering::SeqCst) < 100_000);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
        let res = scope(&intr, || map_ranges(10, 3, false, |lo, hi| hi - lo));
        assert_eq!(res, Err(CoreError::Interrupted));
        assert_eq!(
            map_ranges(10, 3, true, |lo, hi| (lo, hi)).unwrap(),
            vec![(0, 3), (3, 6), (6, 9), (9, 10)]
        );
    }

    #[test]
    fn every_item_once_any_thread_count() {
        for threads in [1, 2, 3, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![0u64; 1000];
            pool.install(|| {
                let items: Vec<&mut u64> = out.iter_mut().collect();
                for_each_item(items, true, || 7u64, |s, i, slot| *slot = i as u64 * *s).unwrap();
            });
            assert!(out.iter().enumerate().all(|(i, &v)| v == 7 * i as u64));
        }
        // outside any pool, and sequentially
        let mut out = [0u64; 10];
        let items: Vec<&mut u64> = out.iter_mut().collect();
        for_each_item(items, false, || (), |_, i, slot| *slot = i as u64).unwrap();
        assert_eq!(out[9], 9);
        let mut out = [0u64; 10];
        let items: Vec<&mut u64> = out.iter_mut().collect();
        for_each_item(items, true, || (), |_, i, slot| *slot = i as u64 + 1).unwrap();
        assert_eq!(out[9], 10);
        let xs: Vec<u64> = (0..1000).collect();
        for par in [false, true] {
            let sums = map_chunks(&xs, 64, par, |c| c.iter().sum::<u64>()).unwrap();
            assert_eq!(sums.len(), 16);
            assert_eq!(sums[0], (0..64).sum::<u64>());
            assert_eq!(sums.iter().sum::<u64>(), 999 * 1000 / 2);
        }
    }
}
