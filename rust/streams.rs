//! The random-stream purposes (specs/MODEL.md section 1): one name per purpose, the Rust twin of
//! python/offtd/rng.py (tests/test_rng.py::test_stream_registries_agree reads both). A stream is
//! addressed by (seed, purpose, iteration, substream); purposes never overlap.

/// Rollout start state: normal #i, i < n; substream = trajectory j.
pub const ROLL_INIT: u64 = 1;
/// Rollout mixture choice: uniform #h; substream = trajectory j.
pub const ROLL_MIX: u64 = 2;
/// Rollout action noise: normal #(h*m + k); substream = trajectory j.
pub const ROLL_ACTION: u64 = 3;
/// Rollout environment noise: normal #(h*n + i); substream = trajectory j.
pub const ROLL_ENV: u64 = 4;
/// Distribution probe: state pick, uniform #k.
pub const DIST_STATE: u64 = 10;
/// Distribution probe: mu action, normal #(k*m + j).
pub const DIST_MU_ACTION: u64 = 11;
/// Distribution probe: pi action (MMD set), normal #(k*m + j).
pub const DIST_PI_ACTION: u64 = 12;
/// Fixed-point probe: state / mix / action / env = base + PROBE_*.
pub const FIXED_POINT_BASE: u64 = 20;
/// Stability probe: state / mix / action / env = base + PROBE_*.
pub const STABILITY_BASE: u64 = 30;
/// Power iteration start vector: normal #i, i < d; substream r (R = the full batch).
pub const POWER_INIT: u64 = 40;
/// Critic initial noise: normal #i, i < d; substream 0, iteration 0.
pub const CRITIC_INIT: u64 = 50;
/// Offsets from a probe's base: the state pick (uniform #k).
pub const PROBE_STATE: u64 = 0;
/// The mixture choice (uniform #k).
pub const PROBE_MIX: u64 = 1;
/// The action noise (normal #(k*m + j)).
pub const PROBE_ACTION: u64 = 2;
/// The environment noise (normal #(k*n + i)).
pub const PROBE_ENV: u64 = 3;
