"""The pictures of a run (issue 10): what each figure draws, read back from the matplotlib Figure (Agg,
no display) and compared with the run's own files, read here with the csv module and numpy; axes
labelled with units, titles naming the run; the files, report.md's links and the CLI.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.colors import to_rgba

import offtd
from offtd import plots
from offtd.api import load_run
from offtd.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def _columns(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) if r[k] != "" else np.nan for r in rows]) for k in rows[0]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short runs written to disk: a heavy ratio tail (instab_sigma_mismatch, k_hat > 1, FAIL) and a
    milder one (p_mix = 0, sigma_pi^2 > 2 sigma_mu^2, so 0 < k < 1), each with two probe iterations (5 and 10)."""
    out = tmp_path_factory.mktemp("runs")
    heavy = offtd.run(ROOT / "specs" / "instab_sigma_mismatch.toml", out=out, run__outer_iters=11)
    mild = offtd.run(ROOT / "specs" / "sweep_sigma.toml", out=out / "m", run__outer_iters=11, policy__sigma_pi=0.6,
                     policy__p_mix=0.0, policy__sigma_mu=0.3)  # fmt: skip
    return {"heavy": load_run(heavy.run_dir), "mild": load_run(mild.run_dir)}


@pytest.fixture(params=["heavy", "mild"])
def run(request, runs):
    return runs[request.param]


def _title_names_the_run(fig, run) -> None:
    title = fig._suptitle.get_text().replace("\n", " ")
    info = run.report["run_info"]
    assert title.startswith(f"{info['name']} (seed {info['seed']}, {Path(run.run_dir).name}): "), title


def _xy(line) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)


# ---------------------------------------------------------------------------------------- core metrics


def test_core_metrics_draw_series_csv_on_log_axes(run):
    series = _columns(Path(run.run_dir) / "series.csv")
    probe_iters = _columns(Path(run.run_dir) / "exact_td.csv")["iter"]
    data = plots.core_metrics_data(run)
    fig = plots.draw_core_metrics(run, data)
    axes = fig.axes
    names = ["td_loss", "w_norm", "mean_rho2", "tracking_gap", "critic_teacher_error"]
    assert len(axes) == len(names)
    for ax, name in zip(axes, names):
        v = series[name]
        ok = np.isfinite(v) & (v > 0)  # a log axis shows the positive values
        x, y = _xy(ax.lines[0])
        np.testing.assert_array_equal(x, series["iter"][ok])
        np.testing.assert_array_equal(y, v[ok])
        assert ax.get_yscale() == "log"
        label = ax.get_ylabel()
        assert label.startswith(name) and "(" in label and ")" in label  # the metric and its unit
        # The probe iterations are marked on the line, each coloured by its status.
        marks = [(tuple(off), tuple(c.get_facecolor()[0])) for c in ax.collections if isinstance(c, PathCollection)
                 for off in c.get_offsets()]  # fmt: skip
        expected = [((t, v[int(t)]), to_rgba(plots.STATUS_COLOUR[s])) for t, s in zip(probe_iters, data["probe_status"])
                    if ok[int(t)]]  # fmt: skip
        assert sorted(marks) == sorted(expected)
    assert axes[-1].get_xlabel() == "outer iteration"
    _title_names_the_run(fig, run)


def test_the_heavy_tailed_run_colours_its_probe_iterations_fail(runs):
    """instab_sigma_mismatch's k_hat of pi/b is above 0.7 by more than its noise at every probe
    iteration here (its run FAILs on rho_sane): every mark is FAIL."""
    run = runs["heavy"]
    k = _columns(Path(run.run_dir) / "fixed_point_probe.csv")["rho_khat"]
    assert k.size == 2 and np.all(k > 0.9)
    assert plots.core_metrics_data(run)["probe_status"] == ["FAIL", "FAIL"]


def _spec():
    return load_spec(None)


EXACT_OK = {"exact_available": 1.0, "exact_min_re_eig": 0.1, "exact_radius": 0.9, "exact_tol": 1e-12,
            "exact_ratio_available": 1.0, "exact_e_rho_bar2": 2.0}  # fmt: skip
STAB_OK = {"a_min_real_eig_lo": 0.05, "a_min_real_eig_hi": 0.2, "stability_radius_lo": 0.8, "stability_radius_hi": 0.95}


@pytest.mark.parametrize(
    "exact, stab, khats, rho2, clip, expected",
    [
        (EXACT_OK, None, [(0.2, 0.1)], (1.0, 0.0), False, "PASS"),
        ({**EXACT_OK, "exact_radius": 1.01}, None, [], (1.0, 0.0), False, "FAIL"),  # the exact update expands
        ({**EXACT_OK, "exact_radius": 1.0 + 1e-13}, None, [], (1.0, 0.0), False, "PASS"),  # within rounding
        ({**EXACT_OK, "exact_min_re_eig": -0.01}, None, [], (1.0, 0.0), False, "FAIL"),
        ({**EXACT_OK, "exact_e_rho_bar2": 11.0}, None, [], (1.0, 0.0), False, "FAIL"),  # exact E[rho^2] > 10
        # No exact values: the probe's intervals, and this iteration's mean rho^2 with z = 1.96 SE.
        ({"exact_available": 0.0}, {**STAB_OK, "stability_radius_hi": 1.01}, [], (1.0, 0.1), False, "WARN"),
        ({"exact_available": 0.0}, {**STAB_OK, "stability_radius_lo": 1.01, "stability_radius_hi": 1.1}, [], (1.0, 0.1), False, "FAIL"),
        ({"exact_available": 0.0}, STAB_OK, [], (9.0, 1.0), False, "WARN"),  # 9 + 1.96 > 10
        ({"exact_available": 0.0}, STAB_OK, [], (12.5, 1.0), False, "FAIL"),  # 12.5 - 1.96 > 10
        ({"exact_available": 0.0}, STAB_OK, [], (11.5, 1.0), False, "WARN"),  # above, within 1.96 SE
        # The tail: the larger k_hat of the two pi/b probes, against 0.5 and 0.7 + z SE.
        (EXACT_OK, None, [(0.6, 0.05), (0.1, 0.05)], (1.0, 0.0), False, "WARN"),
        (EXACT_OK, None, [(0.95, 0.1), (0.1, 0.05)], (1.0, 0.0), False, "FAIL"),  # 0.95 - 0.196 > 0.7
        (EXACT_OK, None, [(0.85, 0.1)], (1.0, 0.0), False, "WARN"),  # 0.85 - 0.196 < 0.7
        (EXACT_OK, None, [(0.95, 0.1)], (1.0, 0.0), True, "PASS"),  # with clipping the tail is not judged
        (EXACT_OK, None, [(math.nan, math.nan)], (1.0, 0.0), False, "PASS"),  # too light a tail to fit
    ],
)
def test_probe_iteration_status_follows_the_checks_rules(exact, stab, khats, rho2, clip, expected):
    spec = load_spec(None, {"rho.clip_enabled": clip})
    assert spec.health.rho2_max == 10.0 and spec.health.khat_warn == 0.5 and spec.health.khat_fail == 0.7
    assert plots.probe_iteration_status(spec, exact, stab, khats, rho2) == expected


# ---------------------------------------------------------------------------------- stability, k_hat


def test_stability_draws_the_probe_intervals_and_the_exact_values(run):
    stab = _columns(Path(run.run_dir) / "stability_probe.csv")
    exact = _columns(Path(run.run_dir) / "exact_td.csv")
    fig = plots.draw_stability(run, plots.stability_data(run))
    for ax, q, ex, bound in ((fig.axes[0], "stability_radius", "exact_radius", 1.0),
                             (fig.axes[1], "a_min_real_eig", "exact_min_re_eig", 0.0)):  # fmt: skip
        probe, population, pool, line = ax.lines[:4]
        np.testing.assert_array_equal(_xy(probe)[0], stab["iter"])
        np.testing.assert_array_equal(_xy(probe)[1], stab[q])
        np.testing.assert_array_equal(_xy(population)[0], exact["iter"])
        np.testing.assert_array_equal(_xy(population)[1], exact[ex])
        np.testing.assert_array_equal(_xy(pool)[1], exact[ex + "_pool"])
        np.testing.assert_array_equal(_xy(line)[1], [bound, bound])  # the stability boundary
        # The shaded band runs along the interval's bounds.
        (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
        ys = band.get_paths()[0].vertices[:, 1]
        assert set(np.round(ys, 12)) <= set(np.round(np.concatenate([stab[q + "_lo"], stab[q + "_hi"]]), 12))
        assert set(np.round(stab[q + "_lo"], 12)) | set(np.round(stab[q + "_hi"], 12)) <= set(np.round(ys, 12))
        assert "(" in ax.get_ylabel() and ")" in ax.get_ylabel()
    assert fig.axes[-1].get_xlabel() == "outer iteration"
    _title_names_the_run(fig, run)


def test_khat_draws_every_probe_with_lines_at_half_and_seven_tenths(run):
    fig = plots.draw_khat(run, plots.khat_data(run))
    (ax,) = fig.axes
    lines = {tuple(_xy(line)[1]) for line in ax.lines}
    for probe in ("distribution_probe", "fixed_point_probe", "stability_probe"):
        cols = _columns(Path(run.run_dir) / f"{probe}.csv")
        assert tuple(cols["rho_khat"]) in lines, probe
    assert (0.5, 0.5) in lines and (0.7, 0.7) in lines
    assert ax.get_xlabel() == "outer iteration" and ax.get_ylabel() == "PSIS k_hat (dimensionless)"
    _title_names_the_run(fig, run)


# ----------------------------------------------------------------------------------------- ratio tail


def test_ratio_tail_draws_the_survival_of_the_saved_ratios_and_a_pareto_tail(run):
    from scipy.stats import genpareto

    with np.load(Path(run.run_dir) / "ratios_last.npz") as saved:
        rho = np.sort(saved["fixed_point_probe"])
    n = rho.size
    fig = plots.draw_ratio_tail(run, plots.ratio_tail_data(run))
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    points, fit = ax.lines[0], ax.lines[1]
    x, y = _xy(points)
    assert np.all(np.isin(x, rho))  # every point is a saved ratio
    np.testing.assert_array_equal(y, (n - np.searchsorted(rho, x, side="left")) / n)  # P(rho >= x)
    assert x[-1] == rho[-1]  # the largest ratio is drawn
    # The generalized Pareto tail, by scipy: shape k_hat (fixed_point_probe.csv, last row), threshold u
    # the (T+1)-th largest ratio (MODEL.md 5), scale such that the median excess over u is the median of
    # the T largest ratios' excesses, and mass T/n above u.
    k = _columns(Path(run.run_dir) / "fixed_point_probe.csv")["rho_khat"][-1]
    t = math.ceil(min(0.2 * n, 3 * math.sqrt(n)))
    u = rho[n - t - 1]
    med = np.median(rho[n - t :] - u)
    scale = med * k / (2**k - 1)
    assert genpareto.median(k, scale=scale) == pytest.approx(med, rel=1e-12)
    fx, fy = _xy(fit)
    assert fx[0] == u and fx[-1] == rho[-1]
    np.testing.assert_allclose(fy, t / n * genpareto.sf(fx - u, k, scale=scale), rtol=1e-10)  # rounding only
    bound = [line for line in ax.lines if line.get_linestyle() == "--"]
    p_mix = run.spec.policy.p_mix
    if p_mix > 0:
        assert _xy(bound[0])[0][0] == 1 / p_mix
    else:
        assert not bound
    assert "(dimensionless)" in ax.get_xlabel() and "(probability)" in ax.get_ylabel()
    _title_names_the_run(fig, run)


def test_ratio_tail_keeps_every_point_of_the_tail_when_thinned(monkeypatch, runs):
    """A probe with more ratios than SURVIVAL_POINTS is thinned, but the largest ones are all drawn."""
    monkeypatch.setattr(plots, "SURVIVAL_POINTS", 400)
    run = runs["mild"]
    with np.load(Path(run.run_dir) / "ratios_last.npz") as saved:
        rho = np.sort(saved["fixed_point_probe"])
    data = plots.ratio_tail_data(run)
    assert data["rho"].size <= 400 < rho.size
    np.testing.assert_array_equal(data["rho"][-100:], rho[-100:])
    assert data["rho"][0] == rho[0]


# ---------------------------------------------------------------------------------------- eigenvalues


def test_eigenvalues_are_one_minus_alpha_w_times_the_saved_eigenvalues_of_a(run):
    cols = _columns(Path(run.run_dir) / "eigenvalues.csv")
    alpha = run.spec.critic.alpha_w
    fig = plots.draw_eigenvalues(run, plots.eigenvalues_data(run))
    for ax in fig.axes:
        circle, est, ex = ax.lines[:3]
        cx, cy = _xy(circle)
        np.testing.assert_allclose(np.hypot(cx, cy), 1.0, rtol=1e-14)  # the unit circle
        for line, source in ((est, 0.0), (ex, 1.0)):
            sel = cols["source"] == source
            lam = cols["re"][sel] + 1j * cols["im"][sel]
            assert lam.size > 0
            x, y = _xy(line)
            np.testing.assert_allclose(x + 1j * y, 1 - alpha * lam, rtol=0, atol=1e-15)  # one multiply-add
        assert ax.get_xlabel() == "Re (dimensionless)" and ax.get_ylabel() == "Im (dimensionless)"
    zoom = fig.axes[1]
    lo, hi = zoom.get_xlim()
    assert lo < 1 < hi and hi - lo < 2  # zoomed to the arc near 1
    _title_names_the_run(fig, run)


# --------------------------------------------------------------------------------- files and the CLI


def test_plot_run_writes_pngs_and_links_them_once_from_report_md(runs):
    run = runs["heavy"]
    written = plots.plot_run(Path(run.run_dir))  # from the directory (offtd.load_run reads it)
    assert [p.name for p in written] == list(plots.PLOT_FILES)
    for p in written:
        assert p.read_bytes()[:8] == PNG
    plots.link_in_report(Path(run.run_dir), written)  # drawn again: the section is replaced, not repeated
    text = (Path(run.run_dir) / "report.md").read_text()
    assert text.count("\n## Plots\n") == 1
    for name in plots.PLOT_FILES:
        assert text.count(f"]({name})") == 1


def test_plots_unavailable_without_matplotlib(runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(plots.PlotsUnavailable, match=r"pip install 'offtd\[plot\]'"):
        plots.plot_run(runs["heavy"])


FAST = ["--set", "run.outer_iters=3", "--set", "run.probe_every=1"]


def test_cli_run_draws_unless_no_plots_and_plot_draws_later(tmp_path, offtd_cmd):
    plain = offtd_cmd("run", *FAST, "--out", str(tmp_path / "a"), "--no-plots")
    assert plain.returncode == 0, plain.stderr
    run_dir = Path(plain.stdout.splitlines()[0])
    assert not list(run_dir.glob("*.png")) and "## Plots" not in (run_dir / "report.md").read_text()
    drawn = offtd_cmd("plot", str(run_dir))
    assert drawn.returncode == 0, drawn.stderr
    assert [Path(p).name for p in drawn.stdout.splitlines()] == list(plots.PLOT_FILES)
    assert "## Plots" in (run_dir / "report.md").read_text()
    with_plots = offtd_cmd("run", *FAST, "--out", str(tmp_path / "b"))
    assert with_plots.returncode == 0, with_plots.stderr
    assert sorted(p.name for p in Path(with_plots.stdout.splitlines()[0]).glob("*.png")) == sorted(plots.PLOT_FILES)
    bad = offtd_cmd("plot", str(tmp_path))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "neither a run directory (report.json) nor a sweep directory (sweep.toml)" in bad.stderr


def test_cli_without_matplotlib_warns_on_run_and_refuses_plot(tmp_path, offtd_cmd):
    """matplotlib hidden (a package of that name that fails to import): `offtd run` still completes,
    with a one-line warning; `offtd plot` is bad input naming the extra."""
    shim = tmp_path / "shim" / "matplotlib"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    import os

    from conftest import _subprocess_env

    env = {"PYTHONPATH": os.pathsep.join([str(shim.parent), _subprocess_env()["PYTHONPATH"]])}
    proc = offtd_cmd("run", *FAST, "--out", str(tmp_path / "o"), env_extra=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "offtd: warning: no plots: plots need matplotlib: pip install 'offtd[plot]' (or --no-plots)\n"
    run_dir = Path(proc.stdout.splitlines()[0])
    assert (run_dir / "report.json").is_file() and not list(run_dir.glob("*.png"))
    again = offtd_cmd("plot", str(run_dir), env_extra=env)
    assert again.returncode == 2 and again.stderr == "offtd: error: plots need matplotlib: pip install 'offtd[plot]'\n"


def test_a_metric_that_is_zero_throughout_says_so_on_its_log_axis(tmp_path):
    """With beta = 1 the behaviour policy tracks the target exactly: tracking_gap is 0 at every
    iteration, which a log axis cannot show; the panel says so instead of staying blank."""
    run = offtd.run(None, out=tmp_path, run__outer_iters=3, run__probe_every=1, policy__beta=1.0)
    series = _columns(Path(run.run_dir) / "series.csv")
    assert np.all(series["tracking_gap"] == 0)
    fig = plots.draw_core_metrics(run, plots.core_metrics_data(run))
    ax = fig.axes[3]
    assert ax.get_ylabel().startswith("tracking_gap")
    assert _xy(ax.lines[0])[0].size == 0
    assert [t.get_text() for t in ax.texts] == ["0 at every iteration: nothing to draw on a log axis"]
    assert len(fig.axes[2].texts) == 0  # mean_rho2 is drawn
