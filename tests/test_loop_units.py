"""Unit tests of the outer loop's helpers (python/offtd/loop.py) on hand-built inputs: the probe schedule,
the per-iteration ratio means and their standard errors, the first non-finite value, the critic's
initialisation, and the guard that discards an interrupted iteration. Whole runs are tested in
test_loop_oracle.py (three iterations against an independent numpy implementation)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from offtd import loop, rng
from offtd.loop import Interrupted, _first_nonfinite, _Iterations, _ratio_means, initial_weights, is_probe_iteration
from offtd.model import problem_from_spec, teacher
from offtd.probes import ProbeState
from offtd.reference import ReferenceBackend
from offtd.spec import load_spec

# ----------------------------------------------------------------------------------------- probe schedule


@pytest.mark.parametrize(
    "outer_iters,probe_every,expected",
    [
        (12, 5, {5, 10, 11}),  # every probe_every-th iteration after the first, and the last
        (10, 5, {5, 9}),
        (11, 5, {5, 10}),  # the last is also a multiple: once
        (4, 1, {1, 2, 3}),  # iteration 0 is never probed ...
        (1, 3, {0}),  # ... unless it is the last
        (3, 100, {2}),  # probe_every beyond the run: the last only
    ],
)
def test_probe_iterations(outer_iters, probe_every, expected):
    spec = load_spec(None, {"run.outer_iters": outer_iters, "run.probe_every": probe_every, "run.last_k": 1})
    assert {t for t in range(outer_iters) if is_probe_iteration(t, spec)} == expected


# ---------------------------------------------------------------------------------------- ratio means


def _mean_se(x) -> tuple[float, float]:
    """The sample mean and its standard error, two-pass: sd with n - 1, over sqrt(n)."""
    x = np.asarray(x, dtype=float)
    return float(np.mean(x)), float(np.std(x, ddof=1) / math.sqrt(x.size))


def test_ratio_means_with_clipping():
    rho = np.array([0.5, 1.0, 2.0, 4.0, 0.25])
    out = _ratio_means(rho, clip=2.0)  # 2.0 is at the clip and stays; 4.0 becomes 2.0
    rho_bar = [0.5, 1.0, 2.0, 2.0, 0.25]
    m, se = _mean_se(rho_bar)
    m2, se2 = _mean_se(np.square(rho_bar))
    _, se_r2 = _mean_se(np.square(rho))
    # rel 1e-12: the one-pass sums (sum, sum of squares) and numpy's two-pass std differ only by rounding
    assert out["mean_rho_bar"] == pytest.approx(m, rel=1e-12) and m == 5.75 / 5
    assert out["mean_rho_bar_se"] == pytest.approx(se, rel=1e-12)
    assert out["mean_rho_bar2"] == pytest.approx(m2, rel=1e-12)
    assert out["mean_rho_bar2_se"] == pytest.approx(se2, rel=1e-12)
    assert out["mean_rho2_se"] == pytest.approx(se_r2, rel=1e-12)


def test_ratio_means_without_clipping_are_those_of_rho():
    rho = np.array([[0.5, 1.5], [3.0, 0.125]])  # any shape: the rollout's (batch, horizon) ratios
    out = _ratio_means(rho, clip=math.inf)
    m, se = _mean_se(rho.ravel())
    m2, se2 = _mean_se(rho.ravel() ** 2)
    assert out["mean_rho_bar"] == pytest.approx(m, rel=1e-12)
    assert out["mean_rho_bar_se"] == pytest.approx(se, rel=1e-12)
    assert out["mean_rho_bar2"] == pytest.approx(m2, rel=1e-12)
    assert out["mean_rho_bar2_se"] == out["mean_rho2_se"] == pytest.approx(se2, rel=1e-12)


def test_ratio_means_of_constant_and_single_ratios():
    out = _ratio_means(np.full(6, 1.5), clip=math.inf)
    assert out["mean_rho_bar"] == 1.5 and out["mean_rho_bar2"] == 2.25
    assert out["mean_rho_bar_se"] == 0.0 and out["mean_rho_bar2_se"] == 0.0  # never a negative variance's sqrt
    one = _ratio_means(np.array([3.0]), clip=2.0)
    assert one["mean_rho_bar"] == 2.0 and one["mean_rho_bar2"] == 4.0
    assert math.isnan(one["mean_rho_bar_se"]) and math.isnan(one["mean_rho2_se"])  # no spread from one value


def test_ratio_means_clip_an_infinite_ratio():
    out = _ratio_means(np.array([1.0, math.inf, 0.5]), clip=2.0)
    assert out["mean_rho_bar"] == pytest.approx(3.5 / 3, rel=1e-15)  # inf is clipped to 2
    assert out["mean_rho_bar2"] == pytest.approx(5.25 / 3, rel=1e-15)
    assert not math.isfinite(out["mean_rho2_se"])  # the unclipped second moment is not finite


# ------------------------------------------------------------------------------------ first non-finite


ROW = {"td_loss": 1.0, "mean_rho2": 1.0, "w_norm": 1.0, "tracking_gap": 0.0, "critic_teacher_error": 0.1}
OK = (np.zeros(3), np.zeros((1, 2)), np.zeros((1, 2)))


def test_first_nonfinite_none_when_all_finite():
    assert _first_nonfinite(ROW, *OK, teacher_scaled=True) is None


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_first_nonfinite_names_metrics_in_order(bad):
    row = dict(ROW, w_norm=bad, tracking_gap=bad)
    assert _first_nonfinite(row, *OK, teacher_scaled=True) == "w_norm"  # w_norm comes before tracking_gap
    row = dict(ROW, td_loss=bad, mean_rho2=bad)
    assert _first_nonfinite(row, *OK, teacher_scaled=True) == "td_loss"


def test_critic_teacher_error_counts_only_with_a_teacher_scale():
    row = dict(ROW, critic_teacher_error=math.nan)
    assert _first_nonfinite(row, *OK, teacher_scaled=True) == "critic_teacher_error"
    assert _first_nonfinite(row, *OK, teacher_scaled=False) is None  # 0/0 against a zero teacher


def test_first_nonfinite_then_the_parameters():
    w, k_pi, k_mu = OK
    assert _first_nonfinite(ROW, np.array([0.0, math.nan, 0.0]), k_pi, k_mu, teacher_scaled=True) == "w"
    assert _first_nonfinite(ROW, w, np.array([[0.0, math.inf]]), k_mu, teacher_scaled=True) == "K_pi"
    assert _first_nonfinite(ROW, w, k_pi, np.array([[-math.inf, 0.0]]), teacher_scaled=True) == "K_mu"
    assert _first_nonfinite(dict(ROW, td_loss=math.nan), np.array([math.nan]), k_pi, k_mu, teacher_scaled=True) == "td_loss"


# --------------------------------------------------------------------------------------- initial weights


def _init(**over):
    spec = load_spec(None, over)
    problem = problem_from_spec(spec)
    k_pi = np.array(spec.policy.k_init, dtype=float)
    return spec, problem, k_pi, initial_weights(spec, problem, k_pi, ReferenceBackend())


def test_zeros_and_teacher_initialisations():
    _, problem, _, w = _init(**{"critic.init": "zeros"})
    assert w.shape == (problem.d,) and not w.any()
    _, problem, k_pi, w = _init(**{"critic.init": "teacher"})
    tch = teacher(problem, k_pi)
    assert tch.defined and np.array_equal(w, tch.w) and w is not tch.w  # a copy: the loop updates w in place


def test_teacher_noise_is_scaled_by_init_noise_and_the_teacher():
    _, problem, k_pi, w0 = _init(**{"critic.init": "teacher_noise", "critic.init_noise": 0.0})
    _, _, _, w1 = _init(**{"critic.init": "teacher_noise", "critic.init_noise": 0.25})
    _, _, _, w2 = _init(**{"critic.init": "teacher_noise", "critic.init_noise": 0.5})
    tch = teacher(problem, k_pi).w
    assert np.array_equal(w0, tch)
    # the same normal draws, scaled linearly (rel 1e-12: rounding of the products)
    np.testing.assert_allclose(w2 - tch, 2.0 * (w1 - tch), rtol=1e-12, atol=0)
    z = ReferenceBackend().normals(problem.seed, rng.CRITIC_INIT, 0, 0, problem.d)
    scale = 0.25 * np.linalg.norm(tch) / math.sqrt(problem.d)  # MODEL.md 3.8: noise * ||w_teacher|| / sqrt(d)
    np.testing.assert_allclose(w1 - tch, scale * z, rtol=1e-12, atol=1e-15 * np.linalg.norm(tch))


def test_teacher_initialisation_without_a_teacher_starts_at_zero():
    spec, problem, k_pi, w = _init(**{"critic.init": "teacher", "policy.k_init": [[3.0, 0.0], [0.0, 3.0]]})
    assert not teacher(problem, k_pi).defined  # sqrt(gamma) rho(A + B K) >= 1
    assert w.shape == (problem.d,) and not w.any()


# ------------------------------------------------------------------------------------ interruption guard


def _guard():
    probe_series = {"a": [{"iter": 0.0}], "b": []}
    exact_series = [{"iter": 0.0}]
    state = ProbeState(w_sharp_prev=np.zeros(2), ratios={"a": np.ones(1)})
    return probe_series, exact_series, state, _Iterations(probe_series, exact_series, state)


def test_interrupted_probe_iteration_is_rolled_back():
    probe_series, exact_series, state, guard = _guard()
    old_w = state.w_sharp_prev
    with guard:
        guard.begin(probes=True)
        assert loop.computing()
        probe_series["a"].append({"iter": 1.0})
        probe_series["b"].append({"iter": 1.0})
        exact_series.append({"iter": 1.0})
        state.w_sharp_prev = np.ones(2)
        state.ratios["a"] = np.zeros(3)  # changed in place: the snapshot must be a copy
        raise Interrupted(2)
    assert guard.interrupted and not loop.computing()
    assert probe_series == {"a": [{"iter": 0.0}], "b": []}
    assert exact_series == [{"iter": 0.0}]
    assert state.w_sharp_prev is old_w
    assert state.ratios.keys() == {"a"} and np.array_equal(state.ratios["a"], np.ones(1))


def test_completed_iterations_are_kept():
    probe_series, exact_series, state, guard = _guard()
    with guard:
        guard.begin(probes=True)
        probe_series["a"].append({"iter": 1.0})
        guard.end()  # iteration 1 recorded
        assert not loop.computing()
        guard.begin(probes=False)  # iteration 2 has no probes: nothing to snapshot
        raise Interrupted(15)
    assert guard.interrupted
    assert probe_series["a"] == [{"iter": 0.0}, {"iter": 1.0}]


def test_other_exceptions_pass_through_the_guard():
    _, _, _, guard = _guard()
    with pytest.raises(ZeroDivisionError), guard:
        guard.begin(probes=True)
        raise ZeroDivisionError
    assert not guard.interrupted and not loop.computing()


def test_computing_is_per_thread():
    _, _, _, guard = _guard()
    seen = []
    with guard:
        guard.begin(probes=False)
        worker = threading.Thread(target=lambda: seen.append(loop.computing()))
        worker.start()
        worker.join()
        assert loop.computing()
        guard.end()
    assert seen == [False]


def test_should_stop_ends_the_run_between_iterations_with_the_completed_ones_kept():
    """should_stop is asked before each iteration: asked True before iteration 2, the run ends
    interrupted with iterations 0 and 1 recorded, the same numbers and final parameters as a 2-iteration
    run (iteration t's streams do not depend on the run length), and nothing recorded after."""
    from offtd.backend import get_backend
    from offtd.loop import run_loop

    over = {"run.outer_iters": 5, "run.batch": 8, "run.horizon": 5, "run.probe_every": 100, "run.last_k": 1}
    be = get_backend("rust")
    asked = []

    def stop() -> bool:
        asked.append(len(asked))
        return len(asked) > 2

    res = run_loop(load_spec(None, over), be, should_stop=stop)
    short = run_loop(load_spec(None, {**over, "run.outer_iters": 2}), be)
    assert res.interrupted and not short.interrupted
    assert res.completed == 2 and len(asked) == 3
    assert np.array_equal(res.final_w, short.final_w) and np.array_equal(res.final_k_pi, short.final_k_pi)
    for name, values in res.series.items():
        assert np.array_equal(values[:2], short.series[name][:2], equal_nan=True), name
        assert np.all(np.isnan(values[2:])), name
