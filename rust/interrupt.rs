//! Stopping a kernel early when its caller asks (Python's signal handlers, via the bindings).
//!
//! The bindings run each kernel inside [`scope`] with an [`Interrupt`] whose `poll` callback
//! re-attaches to the interpreter and runs `check_signals` (only the thread that called the kernel,
//! the one that can be Python's main thread, ever calls it). Kernels report their progress with
//! [`tick`]`(work)`, `work` roughly in floating-point operations; every [`TICK_UNITS`] units of work
//! the calling thread reads the clock, and every [`POLL_PERIOD`] it calls `poll`. When `poll` says
//! stop, a shared flag is set; every thread (the parallel driver's helpers see the flag through
//! [`crate::par`]) stops at its next tick or item, and the kernel returns
//! [`CoreError::Interrupted`] from [`check`]. Outside a scope (Rust callers, tests) `tick` is a
//! thread-local read and nothing ever stops.
//!
//! Ticks never change what a kernel computes: they only decide whether it goes on.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{CoreError, CoreResult};

/// How often the calling thread calls `poll` while a kernel works.
pub const POLL_PERIOD: Duration = Duration::from_millis(10);

/// Units of work (about one floating-point operation each) between two reads of the clock on the
/// calling thread, and between two looks at the stop flag on helper threads: ~10-30 us of work, so a
/// clock read (~40 ns) costs well under 1%.
pub const TICK_UNITS: u64 = 1 << 15;

/// Nanoseconds since the first interrupt of the process (a shared origin: creating an [`Interrupt`]
/// reads no clock, so a short kernel call pays for none).
fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A request to stop that a kernel's threads share.
pub struct Interrupt<'a> {
    poll: Option<&'a (dyn Fn() -> bool + Sync)>,
    stopped: AtomicBool,
    /// [`now_ns`] of the next poll; 0 before the first look at the clock
    next_poll: AtomicU64,
}

impl<'a> Interrupt<'a> {
    /// `poll()` returns true when the computation must stop; it is called on the thread that
    /// entered [`scope`], every [`POLL_PERIOD`] from the kernel's first [`TICK_UNITS`] of work on
    /// (never for a call shorter than that).
    pub fn new(poll: &'a (dyn Fn() -> bool + Sync)) -> Self {
        Interrupt {
            poll: Some(poll),
            stopped: AtomicBool::new(false),
            next_poll: AtomicU64::new(0),
        }
    }

    /// Stop now: every thread of the kernel stops at its next tick.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was requested.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// The calling thread's periodic look: the clock, and `poll` when it is due.
    fn owner_poll(&self) -> bool {
        if self.is_stopped() {
            return true;
        }
        let now = now_ns();
        let next = self.next_poll.load(Ordering::Relaxed);
        if next == 0 {
            // the first look: the first poll is one period from now
            self.next_poll
                .store(now + POLL_PERIOD.as_nanos() as u64, Ordering::Relaxed);
            return false;
        }
        if now < next {
            return false;
        }
        self.next_poll
            .store(now + POLL_PERIOD.as_nanos() as u64, Ordering::Relaxed);
        if let Some(poll) = self.poll {
            if poll() {
                self.stop();
                return true;
            }
        }
        false
    }
}

/// The kernel's interrupt as this thread sees it.
struct Local {
    intr: Cell<*const Interrupt<'static>>,
    owner: Cell<bool>,
    work: Cell<u64>,
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            intr: Cell::new(std::ptr::null()),
            owner: Cell::new(false),
            work: Cell::new(0),
        }
    };
}

/// Restores the thread's previous interrupt when a scope ends (or unwinds).
struct Restore {
    intr: *const Interrupt<'static>,
    owner: bool,
    work: u64,
}

impl Drop for Restore {
    fn drop(&mut self) {
        LOCAL.with(|l| {
            l.intr.set(self.intr);
            l.owner.set(self.owner);
            l.work.set(self.work);
        });
    }
}

fn enter(intr: *const Interrupt<'static>, owner: bool) -> Restore {
    LOCAL.with(|l| Restore {
        intr: l.intr.replace(intr),
        owner: l.owner.replace(owner),
        work: l.work.replace(0),
    })
}

/// Runs `f` with `intr` as this thread's interrupt, this thread polling (scopes nest: the previous
/// interrupt is restored at the end).
pub fn scope<R>(intr: &Interrupt<'_>, f: impl FnOnce() -> R) -> R {
    // SAFETY (of the erased lifetime): the pointer is only dereferenced while it is installed, and
    // it is uninstalled (by `Restore`) before `scope` returns, while `intr` is still borrowed.
    let ptr: *const Interrupt<'static> = (intr as *const Interrupt<'_>).cast();
    let _restore = enter(ptr, true);
    f()
}

/// This thread's interrupt, to hand to helper threads ([`Helper::enter`]).
#[derive(Clone, Copy)]
pub struct Helper(*const Interrupt<'static>);

// SAFETY: the pointee is `Sync` (atomics and a `Sync` callback that only the owner calls), and the
// parallel driver uses a `Helper` only while the kernel that installed the interrupt is running.
unsafe impl Send for Helper {}
// SAFETY: as above.
unsafe impl Sync for Helper {}

impl Helper {
    /// The current thread's interrupt (none outside a scope).
    pub fn current() -> Self {
        Helper(LOCAL.with(|l| l.intr.get()))
    }

    /// Runs `f` on a helper thread with the caller's interrupt installed (not polling), unless this
    /// thread already has it (the caller itself, or a pool worker running the caller's own job).
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        if self.0.is_null() || LOCAL.with(|l| l.intr.get()) == self.0 {
            return f();
        }
        let _restore = enter(self.0, false);
        f()
    }

    /// Whether the caller's kernel was asked to stop.
    #[inline]
    pub fn is_stopped(self) -> bool {
        // SAFETY: see `unsafe impl Send for Helper`.
        !self.0.is_null() && unsafe { (*self.0).is_stopped() }
    }
}

/// Reports `work` units of progress; true when the kernel must stop (a stop was requested). Cheap:
/// a thread-local add, and every [`TICK_UNITS`] a look at the stop flag (and, on the calling thread,
/// the clock).
#[inline]
pub fn tick(work: u64) -> bool {
    #[cfg(test)]
    tally::add(work);
    LOCAL.with(|l| {
        let acc = l.work.get().saturating_add(work);
        if acc < TICK_UNITS {
            l.work.set(acc);
            return false;
        }
        l.work.set(0);
        let p = l.intr.get();
        if p.is_null() {
            return false;
        }
        // SAFETY: installed by `scope` / `Helper::run`, which outlive this call.
        let intr = unsafe { &*p };
        if l.owner.get() {
            intr.owner_poll()
        } else {
            intr.is_stopped()
        }
    })
}

/// `Err(Interrupted)` when the current kernel was asked to stop: kernels call it after work that
/// [`tick`] may have cut short, so a stopped kernel never returns a partial result.
pub fn check() -> CoreResult<()> {
    let stopped = LOCAL.with(|l| {
        let p = l.intr.get();
        // SAFETY: as in `tick`.
        !p.is_null() && unsafe { (*p).is_stopped() }
    });
    if stopped {
        Err(CoreError::Interrupted)
    } else {
        Ok(())
    }
}

/// [`tick`] as a result: `Err(Interrupted)` when the kernel must stop.
#[inline]
pub fn tick_check(work: u64) -> CoreResult<()> {
    if tick(work) {
        Err(CoreError::Interrupted)
    } else {
        Ok(())
    }
}

/// The tests' tally of the work the kernels tick: the oracle of their work estimates (test builds
/// only; `tick` pays nothing for it elsewhere). The latency contract is that `work` counts roughly
/// floating-point operations, so that [`POLL_PERIOD`] holds whatever the kernel; a test runs a kernel
/// of known size with [`tally::measure`] and compares the total with a flop count it writes out.
#[cfg(test)]
pub(crate) mod tally {
    use std::cell::Cell;

    thread_local! {
        /// (work ticked, calls of `tick`) on this thread
        static TALLY: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }

    pub(super) fn add(work: u64) {
        let _ = TALLY.try_with(|t| {
            let (w, c) = t.get();
            t.set((w.saturating_add(work), c + 1));
        });
    }

    /// What `f` ticked, on one rayon pool of one thread (so [`crate::par`] runs every item on that
    /// thread and every tick lands in its tally).
    #[derive(Debug, Clone, Copy)]
    pub struct Tally {
        /// the sum of the `work` passed to `tick`
        pub work: u64,
        /// how many times `tick` was called
        pub ticks: u64,
    }

    /// `(f(), what f ticked)`, `f` run on a one-thread rayon pool.
    pub fn measure<R: Send>(f: impl FnOnce() -> R + Send) -> (R, Tally) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        pool.install(|| {
            TALLY.with(|t| t.set((0, 0)));
            let r = f();
            let (work, ticks) = TALLY.with(|t| t.get());
            (r, Tally { work, ticks })
        })
    }

    /// The work a kernel ticked against the floating-point operations it does (`flops`, counted in
    /// the test from the kernel's sizes): within a factor 1.5 either way. With work in flops, the
    /// calling thread reads the clock every `TICK_UNITS` of work (~10-30 us at 1-3 Gflop/s), so its
    /// polls come every [`super::POLL_PERIOD`]; 1.5x keeps them within 7-15 ms. The kernels count a
    /// multiply-add as 2 like the tests, so they differ from the tests' counts only in lower-order
    /// terms (index arithmetic, a square root), which the tests' sizes keep well inside the factor;
    /// a term left out, or counted in the wrong unit (a product read as a sum: `2 n^2` as
    /// `2 + n^2`), is off by 2x or more at the sizes where that term dominates, which the tests
    /// choose.
    pub fn check_work(what: &str, tally: Tally, flops: f64) {
        check_work_within(what, tally, flops, 1.5);
    }

    /// [`check_work`] with another factor, for work that is not floating-point arithmetic (the
    /// tests say why).
    pub fn check_work_within(what: &str, tally: Tally, ops: f64, factor: f64) {
        let w = tally.work as f64;
        assert!(
            w >= ops / factor && w <= factor * ops,
            "{what}: ticked {w} units of work for about {ops} operations (ratio {:.3}, allowed \
             1/{factor} to {factor})",
            w / ops
        );
    }

    /// Kernels that accumulate small steps' work before ticking (so that a small problem's step
    /// pays no tick): at most one tick per `TICK_UNITS` of work, plus one.
    pub fn check_batched(what: &str, tally: Tally) {
        let most = tally.work / super::TICK_UNITS + 1;
        assert!(
            tally.ticks <= most,
            "{what}: {} ticks for {} units of work (at most {most} expected)",
            tally.ticks,
            tally.work
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn nothing_stops_outside_a_scope() {
        for _ in 0..10 {
            assert!(!tick(TICK_UNITS));
        }
        assert!(check().is_ok());
    }

    #[test]
    fn a_poll_that_says_stop_stops_the_kernel() {
        let calls = AtomicUsize::new(0);
        let poll = || calls.fetch_add(1, Ordering::SeqCst) >= 1;
        let intr = Interrupt::new(&poll);
        let start = Instant::now();
        let ticks = scope(&intr, || {
            let mut n = 0u64;
            while !tick(TICK_UNITS) {
                n += 1;
                assert!(start.elapsed() < Duration::from_secs(10));
            }
            assert_eq!(check(), Err(CoreError::Interrupted));
            n
        });
        // the first poll came after POLL_PERIOD, the second (which stops) one period later
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(start.elapsed() >= 2 * POLL_PERIOD);
        assert!(ticks > 0);
        // the scope is over
        assert!(check().is_ok());
    }

    #[test]
    fn helpers_see_the_stop_and_never_poll() {
        let calls = AtomicUsize::new(0);
        let poll = || {
            calls.fetch_add(1, Ordering::SeqCst);
            false
        };
        let intr = Interrupt::new(&poll);
        scope(&intr, || {
            let h = Helper::current();
            std::thread::scope(|s| {
                s.spawn(move || {
                    h.run(|| {
                        let t = Instant::now();
                        while t.elapsed() < 3 * POLL_PERIOD {
                            assert!(!tick(TICK_UNITS));
                        }
                    })
                });
            });
            assert_eq!(calls.load(Ordering::SeqCst), 0);
            intr.stop();
            std::thread::scope(|s| {
                s.spawn(move || h.run(|| assert!(tick(TICK_UNITS))));
            });
            assert!(h.is_stopped());
        });
    }

    #[test]
    fn scopes_nest() {
        let never = || false;
        let outer = Interrupt::new(&never);
        let inner = Interrupt::new(&never);
        scope(&outer, || {
            scope(&inner, || {
                inner.stop();
                assert!(check().is_err());
            });
            assert!(check().is_ok());
        });
    }

    #[test]
    fn the_tally_counts_the_work_of_its_own_thread_only() {
        let ((), t) = tally::measure(|| {
            for w in [1, 2, 3, TICK_UNITS] {
                tick(w);
            }
            // another thread's ticks are not this thread's
            std::thread::scope(|s| {
                s.spawn(|| tick(1000)).join().unwrap();
            });
        });
        assert_eq!((t.work, t.ticks), (6 + TICK_UNITS, 4));
        // a new measurement starts from zero
        let (_, t) = tally::measure(|| tick(5));
        assert_eq!((t.work, t.ticks), (5, 1));
        tally::check_work("exact", t, 5.0);
        tally::check_work("a third less", t, 7.5);
        tally::check_work("a third more", t, 5.0 / 1.5);
        assert!(std::panic::catch_unwind(|| tally::check_work("under", t, 7.6)).is_err());
        assert!(std::panic::catch_unwind(|| tally::check_work("over", t, 3.3)).is_err());
        tally::check_work_within("4x", t, 20.0, 4.0);
        assert!(std::panic::catch_unwind(|| tally::check_work_within("4x", t, 20.1, 4.0)).is_err());
    }
}
