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
}
