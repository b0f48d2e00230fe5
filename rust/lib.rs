//! offtd's Rust core (`offtd._core`): the per-transition and per-sample kernels of `specs/MODEL.md`.
//!
//! The kernels follow MODEL.md to the letter, including its order of floating-point operations, so
//! they return the same bits as the pure-Python reference (`offtd.reference`) on identical inputs:
//!
//! - [`philox`]: Philox4x64-10 and the addressed random streams (section 1);
//! - [`problem`]: the LQG problem and its checks (section 2);
//! - [`features`]: the features phi(s) (section 2);
//! - [`density`]: the policies' log densities, the mixture's importance ratio, its clipping (section 2);
//! - [`lqg`]: one environment step, on slices and on fixed-size arrays (sections 2-3);
//! - [`linalg`]: dot products, matrix-vector products, quadratic forms; the block size (0.2);
//! - [`checks`]: argument checks (lengths, finiteness, domains);
//! - [`pool`]: the probes' state pool and its pick (section 4);
//! - [`rollout`]: trajectories with their TD, actor and Gram sums (section 3);
//! - [`transitions`]: probe transitions (4.2);
//! - [`policy_samples`]: the distribution probe's policy samples (4.1);
//! - [`ratios`]: importance-ratio statistics including PSIS `k_hat` (section 5);
//! - [`solver`]: restarted GMRES and a direct LU solve (section 6);
//! - [`power`]: power iteration (section 6);
//! - [`mmd`]: median-heuristic bandwidth and the paired unbiased MMD^2 (4.1);
//! - [`moments`]: exact time-averaged second and fourth moments of the rollout states (9.2), the
//!   one kernel that agrees with the reference to rounding rather than to the bit (its contractions
//!   associate differently from numpy's `einsum`);
//! - [`record`]: records whose field list is written once (the bindings' dicts read it);
//! - [`error`]: the one error type, [`error::CoreError`];
//! - [`par`]: the parallel driver (the calling thread works, rayon helpers join as they wake);
//! - [`mem`]: the memory a call may take (relative to what the machine and the process's limits
//!   leave) and fallible allocation, so an oversized request is an error, never an abort;
//! - [`interrupt`]: stopping a kernel when its caller asks (the bindings poll Python's signal
//!   handlers from the calling thread about every 10 ms of work).
//!
//! Parallel kernels combine per-trajectory or per-block partial sums sequentially in a fixed order,
//! so results are bit-identical for any thread count. Only [`bindings`] knows about Python.

// Index loops mirror MODEL.md's formulas (`sum_j K[i][j] * s[j]`) term by term, which is the point.
#![allow(clippy::needless_range_loop)]

pub mod bindings;
pub mod checks;
pub mod density;
pub mod error;
pub mod features;
pub mod interrupt;
pub mod linalg;
pub mod lqg;
pub mod mem;
pub mod mmd;
pub mod moments;
pub mod par;
pub mod philox;
pub mod policy_samples;
pub mod pool;
pub mod power;
pub mod problem;
pub mod ratios;
pub mod record;
pub mod rollout;
pub mod solver;
pub mod streams;
pub mod transitions;

pub use error::{CoreError, CoreResult};
