"""The pictures of a sweep (issue 10): heatmaps over two swept keys, one panel per value of the others,
read back from the matplotlib Figure and compared with sweep.csv, aggregated here over the seeds; the
sigma_pi^2 = 2 sigma_mu^2 line and the exact stability boundary placed where they belong."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb

import offtd
from offtd import sweep_plots as sp
from offtd.spec import SpecError

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"
MU, PI, PMIX = [0.3, 0.5, 0.7], [0.3, 0.6], [0.0, 0.2]
ORDER = ("PASS", "WARN", "FAIL", "INTERRUPTED", "ERROR")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """sigma_mu x sigma_pi x p_mix over specs/sweep_sigma.toml (6 iterations a run), two seeds: the
    exact update expands at sigma_mu = 0.7 and not at 0.3, so the exact boundary crosses the map."""
    out = tmp_path_factory.mktemp("sweep")
    res = offtd.sweep(ROOT / "specs" / "sweep_sigma.toml", {"policy.sigma_mu": MU, "policy.sigma_pi": PI, "policy.p_mix": PMIX},
                      seeds="0..1", keep="summary", workers=1, out=out, plots=True, run__outer_iters=6)  # fmt: skip
    return res


def _by_cell(root: Path) -> dict[tuple[float, float, float], list[dict[str, str]]]:
    """(sigma_mu, sigma_pi, p_mix) -> its rows in sweep.csv."""
    out: dict[tuple[float, float, float], list[dict[str, str]]] = {}
    with (root / "sweep.csv").open(newline="") as fh:
        for r in csv.DictReader(fh):
            key = (float(r["policy.sigma_mu"]), float(r["policy.sigma_pi"]), float(r["policy.p_mix"]))
            out.setdefault(key, []).append(r)
    return out


def _modal(statuses: list[str]) -> tuple[str, int]:
    """The status most seeds share (a tie: the worse one) and how many share it."""
    counts = Counter(statuses)
    best = max(counts.items(), key=lambda kv: (kv[1], ORDER.index(kv[0])))
    return best


def _mean(rows: list[dict[str, str]], name: str) -> float:
    """The mean over the seeds that measured the metric ("" and nan are not measurements; inf is)."""
    xs = [float(r[name]) for r in rows if r[name] != ""]
    xs = [x for x in xs if not math.isnan(x)]
    with np.errstate(all="ignore"):
        return float(np.mean(xs)) if xs else math.nan


def test_heatmap_data_is_the_rows_aggregated_over_seeds(swept):
    data = sp.heatmap_data(swept.root)
    cells = _by_cell(swept.root)
    assert (data["x"], data["y"]) == ("policy.sigma_mu", "policy.sigma_pi")
    assert data["x_values"] == MU and data["y_values"] == PI
    assert [p["fixed"] for p in data["panels"]] == [{"policy.p_mix": v} for v in PMIX]
    for panel in data["panels"]:
        p = panel["fixed"]["policy.p_mix"]
        for iy, pi in enumerate(PI):
            for ix, mu in enumerate(MU):
                rows = cells[(mu, pi, p)]
                assert len(rows) == 2
                assert panel["cell"][iy, ix] == int(rows[0]["cell"])
                status, count = _modal([r["status"] for r in rows])
                assert (panel["status"][iy, ix], panel["count"][iy, ix], panel["seeds_run"][iy, ix]) == (status, count, 2)
                for name in ("mean_rho2", "rho_khat_pi_b", "stability_radius"):
                    expected = _mean(rows, name)
                    got = panel["metrics"][name][iy, ix]
                    # Rounding: two numbers summed in either order.
                    assert (math.isnan(expected) and math.isnan(got)) or got == pytest.approx(expected, rel=1e-12)
                assert panel["exact"]["exact_radius"][iy, ix] == float(rows[0]["exact_radius"])


def test_status_map_letters_colours_and_labels(swept):
    data = sp.heatmap_data(swept.root)
    fig = sp.draw_status(data)
    cells = _by_cell(swept.root)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == len(PMIX)
    for ax, p in zip(axes, PMIX):
        assert ax.get_title() == f"policy.p_mix = {p:g}"
        assert ax.get_xlabel() == "behaviour std sigma_mu (action units)"
        assert ax.get_ylabel() == "target std sigma_pi (action units)"
        texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in ax.texts}
        img = np.asarray(ax.images[0].get_array())
        for iy, pi in enumerate(PI):
            for ix, mu in enumerate(MU):
                status, count = _modal([r["status"] for r in cells[(mu, pi, p)]])
                assert texts[(ix, iy)] == f"{status[0]}\n{count}/2"
                # The status's colour, paler the fewer seeds share it: 1 - pixel = (0.3 + 0.7 share)(1 - colour).
                share = count / 2
                np.testing.assert_allclose(1 - img[iy, ix], (0.3 + 0.7 * share) * (1 - np.array(to_rgb(sp.STATUS_COLOURS[status]))), atol=1e-12)
    title = fig._suptitle.get_text().replace("\n", " ")
    assert title.startswith(f"sweep_sigma sweep ({swept.root.name}): status over seeds") and "2 seeds a cell" in title


@pytest.mark.parametrize("name", ["mean_rho2", "rho_khat_pi_b", "stability_radius"])
def test_metric_maps_show_the_mean_over_seeds(swept, name):
    data = sp.heatmap_data(swept.root)
    label = dict((n, lab) for n, lab, _ in sp.METRIC_PLOTS)[name]
    fig = sp.draw_metric(data, name, label, dict((n, s) for n, _, s in sp.METRIC_PLOTS)[name])
    cells = _by_cell(swept.root)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == len(PMIX)
    for ax, p in zip(panels, PMIX):
        shown = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
        for iy, pi in enumerate(PI):
            for ix, mu in enumerate(MU):
                expected = _mean(cells[(mu, pi, p)], name)
                got = shown[iy, ix]
                if math.isfinite(expected):
                    assert got == pytest.approx(expected, rel=1e-12)  # rounding: the order of a 2-term sum
                else:
                    assert math.isnan(got)  # grey: not measured or not finite
    bar = [ax for ax in fig.axes if not ax.images and ax.get_ylabel()]
    assert bar and bar[0].get_ylabel() == label and "(dimensionless" in label
    assert name in fig._suptitle.get_text()


def test_the_ratio_line_lies_on_sigma_pi_squared_equal_twice_sigma_mu_squared(swept):
    data = sp.heatmap_data(swept.root)
    fig = sp.draw_status(data)
    ax = fig.axes[0]
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1
    cx, cy = (np.asarray(v, dtype=float) for v in dashed[0].get_data())
    # Category coordinates back to values: the axes are the grid's values, equally spaced.
    mu = np.interp(cx, np.arange(len(MU)), MU)
    pi = np.interp(cy, np.arange(len(PI)), PI)
    assert cx.size > 10
    np.testing.assert_allclose(pi**2, 2 * mu**2, rtol=1e-12)
    assert pi.min() >= PI[0] and pi.max() <= PI[-1] and mu.min() >= MU[0] and mu.max() <= MU[-1]


def test_the_exact_boundary_is_where_the_exact_radius_is_one(swept):
    data = sp.heatmap_data(swept.root)
    fig = sp.draw_status(data)
    cells = _by_cell(swept.root)
    drawn = 0
    for ax, p in zip(fig.axes, PMIX):
        radius = np.array([[float(cells[(mu, pi, p)][0]["exact_radius"]) for mu in MU] for pi in PI])
        contours = [c for c in ax.collections if hasattr(c, "levels")]
        if not radius.min() < 1 < radius.max():
            assert not contours
            continue
        (cs,) = contours
        assert list(cs.levels) == [1.0]
        vertices = np.concatenate([path.vertices for path in cs.get_paths() if len(path.vertices)])
        assert len(vertices) >= 2
        for x, y in vertices:
            # Linear interpolation between the grid's cells (marching squares puts each vertex on an edge).
            ix, iy = min(int(x), len(MU) - 2), min(int(y), len(PI) - 2)
            fx, fy = x - ix, y - iy
            r = ((1 - fx) * (1 - fy) * radius[iy, ix] + fx * (1 - fy) * radius[iy, ix + 1]
                 + (1 - fx) * fy * radius[iy + 1, ix] + fx * fy * radius[iy + 1, ix + 1])  # fmt: skip
            assert r == pytest.approx(1.0, abs=1e-9)  # rounding of the interpolation
        drawn += 1
    assert drawn >= 1


def test_the_sweep_writes_its_pictures_and_plot_redraws_them(swept, offtd_cmd):
    names = ["sweep_status_sigma_mu_sigma_pi.png", "sweep_mean_rho2_sigma_mu_sigma_pi.png",
             "sweep_rho_khat_pi_b_sigma_mu_sigma_pi.png", "sweep_stability_radius_sigma_mu_sigma_pi.png"]  # fmt: skip
    assert [p.name for p in swept.plots] == names
    for p in swept.plots:
        assert p.read_bytes()[:8] == PNG
    proc = offtd_cmd("plot", str(swept.root), "--x", "policy.p_mix", "--y", "policy.sigma_mu")
    assert proc.returncode == 0, proc.stderr
    assert [Path(p).name for p in proc.stdout.splitlines()] == [n.replace("sigma_mu_sigma_pi", "p_mix_sigma_mu") for n in names]
    bad = offtd_cmd("plot", str(swept.root), "--x", "critic.gamma")
    assert bad.returncode == 2
    assert bad.stderr == "offtd: error: --x critic.gamma: not a swept key of this sweep (policy.sigma_mu, policy.sigma_pi, policy.p_mix)\n"
    with pytest.raises(SpecError, match="the same key as --x"):
        sp.heatmap_data(swept.root, x="policy.p_mix", y="policy.p_mix")


def test_one_swept_key_is_one_row_and_none_draws_nothing(tmp_path, monkeypatch):
    sweep_module = __import__("importlib").import_module("offtd.sweep")
    monkeypatch.setattr(sweep_module, "summary_values", lambda spec, backend: ("PASS", "", [spec.policy.p_mix + 1.0] * 9))
    one = offtd.sweep(None, {"policy.p_mix": [0.0, 0.1, 0.2]}, keep="summary", workers=1, out=tmp_path)
    data = sp.heatmap_data(one.root)
    assert data["y"] is None and data["panels"][0]["metrics"]["mean_rho2"].shape == (1, 3)
    np.testing.assert_array_equal(data["panels"][0]["metrics"]["mean_rho2"][0], [1.0, 1.1, 1.2])
    assert len(sp.write_sweep_plots(one.root)) == 4
    none = offtd.sweep(None, {}, keep="summary", workers=1, out=tmp_path / "none")
    assert sp.write_sweep_plots(none.root) == []


def test_a_large_panel_is_colour_only_with_thinned_ticks(tmp_path, monkeypatch):
    """13 x 12 = 156 cells (over MAX_LABELLED = 144): no letters or numbers, at most MAX_TICKS labelled
    values per axis, the first and the last among them, each at its value's cell."""
    sweep_module = __import__("importlib").import_module("offtd.sweep")
    monkeypatch.setattr(sweep_module, "summary_values", lambda spec, backend: ("PASS", "", [1.0] * 9))
    mu = [round(0.2 + 0.05 * i, 4) for i in range(13)]
    pi = [round(0.3 + 0.05 * i, 4) for i in range(12)]
    res = offtd.sweep(None, {"policy.sigma_mu": mu, "policy.sigma_pi": pi}, keep="summary", workers=1, out=tmp_path)
    data = sp.heatmap_data(res.root)
    for fig in (sp.draw_status(data), sp.draw_metric(data, "mean_rho2", "mean rho^2 (dimensionless)", "log")):
        ax = fig.axes[0]
        assert len(ax.texts) == 0
        for ticks, labels, values in ((ax.get_xticks(), ax.get_xticklabels(), mu), (ax.get_yticks(), ax.get_yticklabels(), pi)):
            assert len(ticks) <= sp.MAX_TICKS and ticks[0] == 0 and ticks[-1] == len(values) - 1
            assert [float(t.get_text()) for t in labels] == [values[int(i)] for i in ticks]
