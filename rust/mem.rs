//! Memory: how much a call may allocate, and allocation that fails with [`CoreError::OutOfMemory`]
//! instead of aborting the process.
//!
//! Every kernel whose allocations grow with its arguments first adds up what it will hold at once
//! (outputs, scratch, per-thread buffers) and asks [`plan`] whether that fits: totals from
//! [`CHECK_FROM`] up are compared with the memory [`available`] now (the least of `MemAvailable`,
//! the headroom under the address-space limit `RLIMIT_AS`, and the headroom of the process's memory
//! cgroup), so the limit follows the machine and the process's limits instead of a fixed size. The
//! allocations themselves then go through [`zeroed`], [`with_capacity`] and [`collect`], which turn
//! an allocator failure (e.g. `mmap` refused under `ulimit -v`) into the same error: Rust's
//! infallible `Vec` allocation would abort the interpreter.

use std::alloc::{alloc_zeroed, Layout};

use crate::error::{CoreError, CoreResult};

/// Plans below this many bytes are not compared with the available memory (reading it costs tens of
/// microseconds; their allocations are still fallible).
pub const CHECK_FROM: u128 = 32 << 20;

/// Bytes of `len` values of `T` (exact, never overflows).
pub fn bytes_of<T>(len: usize) -> u128 {
    len as u128 * std::mem::size_of::<T>() as u128
}

/// Adds element counts and byte counts without overflow: `total(&[(count, size)])`.
pub fn total(parts: &[(u128, u128)]) -> u128 {
    parts.iter().fold(0u128, |acc, &(n, size)| {
        acc.saturating_add(n.saturating_mul(size))
    })
}

/// The soft limit of `Max address space` in a `/proc/self/limits` text (`None`: unlimited).
fn parse_as_limit(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    let soft = line["Max address space".len()..]
        .split_whitespace()
        .next()?;
    soft.parse().ok()
}

/// The value of a `Key:   1234 kB` line, in bytes.
fn parse_kb(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

/// The value of a `key 1234` line (memory.stat).
fn parse_stat(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Headroom of the memory cgroup holding this process (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), counting its inactive file cache as free; `None` without a limit.
fn cgroup_headroom() -> Option<u64> {
    let groups = read("/proc/self/cgroup")?;
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (limit, usage, stat, inactive) = if ctrl.is_empty() {
            let dir = format!("/sys/fs/cgroup{path}");
            (
                read(&format!("{dir}/memory.max")),
                read(&format!("{dir}/memory.current")),
                read(&format!("{dir}/memory.stat")),
                "inactive_file",
            )
        } else if ctrl.split(',').any(|c| c == "memory") {
            let dir = format!("/sys/fs/cgroup/memory{path}");
            (
                read(&format!("{dir}/memory.limit_in_bytes")),
                read(&format!("{dir}/memory.usage_in_bytes")),
                read(&format!("{dir}/memory.stat")),
                "total_inactive_file",
            )
        } else {
            continue;
        };
        let Some(limit) = limit.and_then(|s| s.trim().parse::<u64>().ok()) else {
            continue; // "max" or no such file
        };
        if limit >= 1 << 62 {
            continue; // v1's "unlimited"
        }
        let usage = usage
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let cache = stat.and_then(|s| parse_stat(&s, inactive)).unwrap_or(0);
        return Some(limit.saturating_sub(usage.saturating_sub(cache)));
    }
    None
}

/// The bytes this process can still allocate: the least of `MemAvailable` (/proc/meminfo), the
/// headroom under the address-space limit (`RLIMIT_AS` minus `VmSize`) and the memory cgroup's
/// headroom. `None` when none of them can be read (not Linux).
pub fn available() -> Option<u64> {
    let mut least: Option<u64> = None;
    let mut take = |v: Option<u64>| {
        if let Some(v) = v {
            least = Some(least.map_or(v, |l| l.min(v)));
        }
    };
    take(read("/proc/meminfo").and_then(|s| parse_kb(&s, "MemAvailable")));
    if let Some(limit) = read("/proc/self/limits").and_then(|s| parse_as_limit(&s)) {
        let used = read("/proc/self/status")
            .and_then(|s| parse_kb(&s, "VmSize"))
            .unwrap_or(0);
        take(Some(limit.saturating_sub(used)));
    }
    take(cgroup_headroom());
    least
}

/// Refuses a call that would hold `bytes` at once when they cannot fit: more than the address space
/// can hold (`isize::MAX`), or (from [`CHECK_FROM`] bytes) more than [`available`]. `arg` is the
/// argument that sets the size.
pub fn plan(arg: &'static str, bytes: u128) -> CoreResult<()> {
    if bytes > isize::MAX as u128 {
        return Err(CoreError::OutOfMemory {
            arg,
            bytes,
            available: available(),
        });
    }
    if bytes >= CHECK_FROM {
        if let Some(avail) = available() {
            if bytes > avail as u128 {
                return Err(CoreError::OutOfMemory {
                    arg,
                    bytes,
                    available: Some(avail),
                });
            }
        }
    }
    Ok(())
}

/// Types whose all-zero bit pattern is a valid value (zero).
///
/// # Safety
/// Implement only for types where every field is an integer or float.
pub unsafe trait Zeroed: Copy {}
// SAFETY: plain numbers.
unsafe impl Zeroed for f64 {}
// SAFETY: plain numbers.
unsafe impl Zeroed for u64 {}
// SAFETY: plain numbers.
unsafe impl Zeroed for i64 {}
// SAFETY: plain numbers.
unsafe impl Zeroed for usize {}
// SAFETY: plain numbers.
unsafe impl Zeroed for (f64, f64) {}

fn failed(arg: &'static str, bytes: u128) -> CoreError {
    CoreError::OutOfMemory {
        arg,
        bytes,
        available: None,
    }
}

/// `vec![0; len]`, or [`CoreError::OutOfMemory`] naming `arg` when the allocation fails. Like
/// `vec!`, it asks the allocator for zeroed memory (fresh pages from the system are not written).
pub fn zeroed<T: Zeroed>(arg: &'static str, len: usize) -> CoreResult<Vec<T>> {
    if len == 0 || std::mem::size_of::<T>() == 0 {
        return Ok(Vec::new());
    }
    let layout = Layout::array::<T>(len).map_err(|_| failed(arg, bytes_of::<T>(len)))?;
    // SAFETY: `layout` has a non-zero size; a null pointer is handled; the memory is zeroed, which is
    // a valid `T` (`Zeroed`), and it came from the global allocator with `T`'s layout, as
    // `Vec::from_raw_parts` requires for length and capacity `len`.
    unsafe {
        let ptr = alloc_zeroed(layout) as *mut T;
        if ptr.is_null() {
            return Err(failed(arg, layout.size() as u128));
        }
        Ok(Vec::from_raw_parts(ptr, len, len))
    }
}

/// `Vec::with_capacity(len)`, or [`CoreError::OutOfMemory`] naming `arg`.
pub fn with_capacity<T>(arg: &'static str, len: usize) -> CoreResult<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| failed(arg, bytes_of::<T>(len)))?;
    Ok(v)
}

/// `iter.collect::<Vec<_>>()` into one fallible allocation of the iterator's exact length.
pub fn collect<T, I>(arg: &'static str, iter: I) -> CoreResult<Vec<T>>
where
    I: IntoIterator<Item = T>,
    I::IntoIter: ExactSizeIterator,
{
    let iter = iter.into_iter();
    let mut v = with_capacity(arg, iter.len())?;
    v.extend(iter);
    Ok(v)
}

/// `slices.concat()` into one fallible allocation.
pub fn concat<T: Copy>(arg: &'static str, parts: &[Vec<T>]) -> CoreResult<Vec<T>> {
    let len = parts.iter().map(Vec::len).sum();
    let mut v = with_capacity(arg, len)?;
    for p in parts {
        v.extend_from_slice(p);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_proc_files() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max address space         3221225472           unlimited            bytes     \n";
        assert_eq!(parse_as_limit(limits), Some(3 << 30));
        let unlimited =
            "Max address space         unlimited            unlimited            bytes\n";
        assert_eq!(parse_as_limit(unlimited), None);
        let meminfo =
            "MemTotal:       24684032 kB\nMemFree:        1000 kB\nMemAvailable:   23097312 kB\n";
        assert_eq!(parse_kb(meminfo, "MemAvailable"), Some(23097312 * 1024));
        assert_eq!(
            parse_kb("VmSize:\t    3896 kB\n", "VmSize"),
            Some(3896 * 1024)
        );
        assert_eq!(parse_kb(meminfo, "Missing"), None);
        let stat = "anon 100\ninactive_file 4096\nactive_file 7\n";
        assert_eq!(parse_stat(stat, "inactive_file"), Some(4096));
        assert_eq!(parse_stat(stat, "file"), None);
    }

    #[test]
    fn available_is_known_on_linux() {
        let a = available();
        if cfg!(target_os = "linux") {
            assert!(a.is_some_and(|a| a > 0));
        }
    }

    #[test]
    fn plans_and_allocations_fail_as_errors() {
        assert!(plan("count", 1024).is_ok());
        let e = plan("count", u128::MAX).unwrap_err();
        assert!(matches!(e, CoreError::OutOfMemory { arg: "count", .. }));
        let e = plan("count", 1 << 62).unwrap_err();
        assert_eq!(e.arg(), "count");
        // a request the allocator refuses (larger than any address space) is an error, not an abort
        let e = zeroed::<f64>("count", usize::MAX / 16).unwrap_err();
        assert!(matches!(e, CoreError::OutOfMemory { arg: "count", .. }));
        let e = with_capacity::<u64>("rows", usize::MAX / 16).unwrap_err();
        assert_eq!(e.arg(), "rows");
        let v: Vec<f64> = zeroed("count", 1000).unwrap();
        assert!(v.len() == 1000 && v.iter().all(|&x| x == 0.0));
        assert!(zeroed::<f64>("count", 0).unwrap().is_empty());
        assert_eq!(collect("x", 0..5usize).unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(
            concat("x", &[vec![1, 2], vec![], vec![3]]).unwrap(),
            vec![1, 2, 3]
        );
        assert_eq!(total(&[(3, 8), (u128::MAX, 2)]), u128::MAX);
        assert_eq!(bytes_of::<f64>(3), 24);
    }
}

/// The tests' counting global allocator: the peak of the bytes live on the calling thread while a
/// closure runs on a one-thread rayon pool, the oracle of the `*_bytes` estimates (what a kernel
/// really holds at once, measured, not recomputed from the estimate's own formula).
#[cfg(test)]
pub(crate) mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static LIVE: Cell<i128> = const { Cell::new(0) };
        static PEAK: Cell<i128> = const { Cell::new(0) };
    }

    fn add(delta: i128) {
        let _ = LIVE.try_with(|live| {
            let v = live.get() + delta;
            live.set(v);
            let _ = PEAK.try_with(|peak| {
                if v > peak.get() {
                    peak.set(v)
                }
            });
        });
    }

    // SAFETY: every call is forwarded to the system allocator unchanged; the counters are
    // const-initialized thread-locals whose access never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = System.alloc(layout);
            if !p.is_null() {
                add(layout.size() as i128);
            }
            p
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let p = System.alloc_zeroed(layout);
            if !p.is_null() {
                add(layout.size() as i128);
            }
            p
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout);
            add(-(layout.size() as i128));
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let p = System.realloc(ptr, layout, new_size);
            if !p.is_null() {
                add(new_size as i128 - layout.size() as i128);
            }
            p
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// `(estimate(), f(), peak)`, both run on one rayon pool of one thread (so `par` runs every item
    /// there and the estimate counts one thread's scratch): `peak` is the most bytes live at once on
    /// that thread while `f` ran, above what was live when it started (its result included).
    pub fn measure<R: Send>(
        estimate: impl FnOnce() -> u128 + Send,
        f: impl FnOnce() -> R + Send,
    ) -> (u128, R, u128) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        pool.install(|| {
            let est = estimate();
            let base = LIVE.with(|l| l.get());
            PEAK.with(|p| p.set(base));
            let r = f();
            let peak = PEAK.with(|p| p.get()) - base;
            (est, r, peak.max(0) as u128)
        })
    }

    /// An estimate of the bytes a call holds at once against the measured peak: never below it
    /// (but for 256 bytes: the estimates count array elements, not the headers of the structs that
    /// own them, e.g. 104 bytes per state-moment component), and not above 1.25 times it plus
    /// 48 KiB (the fixed-size scratch the estimates reserve for the largest fixed kernel, n = m = 4,
    /// is up to ~40 KiB more than a smaller problem's).
    pub fn check_estimate(what: &str, est: u128, peak: u128) {
        assert!(
            peak <= est + 256,
            "{what}: holds {peak} bytes, more than the estimate {est}"
        );
        assert!(
            est <= peak + peak / 4 + (48 << 10),
            "{what}: estimate {est} bytes, far above the {peak} held"
        );
    }
}
