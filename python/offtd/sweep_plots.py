"""Pictures of a sweep: heatmaps over two swept keys, one panel per combination of the others.

- status: each cell coloured by the status most of its seeds share, paler the fewer seeds share it, and
  lettered with it (P, W, F, I, E) and, with several seeds, their count ("F 9/10") in panels of up to
  MAX_LABELLED cells (larger ones are colour only, as are the metric maps' numbers);
- mean_rho2, k_hat of pi/b, the stability probe's spectral radius: the mean over seeds;
- drawn over the status and radius maps, the exact stability boundary (the expected TD update at the
  initial gains, exact_radius = 1: `offtd theory`), and over (sigma_mu, sigma_pi) the line
  sigma_pi^2 = 2 sigma_mu^2, above which E_mu[(pi/mu)^2] is infinite.

:func:`heatmap_data` reads sweep.toml and sweep.csv and returns the arrays each picture shows (tests
compare them with the files); the drawing functions only draw them. Axes are the grid's values as
categories (equally spaced, in grid order); lines are placed between them by linear interpolation.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np

from .plots import PlotsUnavailable, _pyplot, _save  # noqa: F401  (PlotsUnavailable: re-exported)
from .summary import fmt
from .sweep import STATUSES, load_store

STATUS_COLOURS = {"PASS": "#2a9d8f", "WARN": "#e9c46a", "FAIL": "#e63946", "INTERRUPTED": "#adb5bd", "ERROR": "#6d597a"}
# (metric, colour bar label, scale): "log" (viridis on a log scale), or (low, centre, high): a diverging
# scale centred at the boundary (blue below, red above), whose ends are the data's range clipped to
# [low, high] (values beyond take the end colours; each cell's number is printed).
METRIC_PLOTS = (
    ("mean_rho2", "mean rho^2, last k iterations\n(dimensionless)", "log"),
    ("rho_khat_pi_b", "PSIS k_hat of pi/b, last probe\n(dimensionless; > 0.5 heavy tail)", (-0.5, 0.5, 1.5)),
    ("stability_radius", "radius of I - alpha_w A_hat, last probe\n(dimensionless; > 1 expands)", (0.5, 1.0, 1.5)),
)
MAX_PANELS = 16
# Axis labels: what the key is and its unit.
KEY_LABELS = {
    "policy.sigma_mu": "behaviour std sigma_mu (action units)",
    "policy.sigma_pi": "target std sigma_pi (action units)",
    "policy.p_mix": "defensive mixture weight p_mix (probability)",
    "policy.beta": "behaviour tracking rate beta (per iteration)",
    "critic.alpha_w": "critic step size alpha_w (per mean transition)",
    "critic.gamma": "discount gamma (per step)",
    "actor.alpha_pi": "actor step size alpha_pi (per mean transition)",
    "rho.clip": "ratio clip (dimensionless)",
    "rho.clip_enabled": "ratio clipping (off / on)",
    "run.horizon": "horizon (steps)",
    "run.batch": "batch (trajectories)",
    "env.sigma_eps": "environment noise sigma_eps (state units)",
    "env.reward_scale": "reward scale c_r (reward units)",
}


def _label(key: str) -> str:
    return KEY_LABELS.get(key, f"{key} (spec units)")


def _text(v: Any) -> str:
    from .sweep import _value_text

    if isinstance(v, float):
        return fmt(v)
    return _value_text(v)


def _numeric(values: list[Any]) -> np.ndarray | None:
    """The values as floats when they are numbers in increasing order (lines can be placed), else None."""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    arr = np.asarray(values, dtype=float)
    if arr.size > 1 and not np.all(np.diff(arr) > 0):
        return None
    return arr


def _position(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Category coordinate of value(s) x between the grid's values (NaN outside their range)."""
    if values.size == 1:
        return np.where(np.isclose(x, values[0]), 0.0, np.nan)
    pos = np.interp(x, values, np.arange(values.size, dtype=float), left=np.nan, right=np.nan)
    return pos


# ----------------------------------------------------------------------------------------------- data


def heatmap_data(root: str | Path, x: str | None = None, y: str | None = None) -> dict[str, Any]:
    """Everything the heatmaps show, from the sweep's files: the axes' keys and values and, per panel
    (a combination of the other keys' values, at most MAX_PANELS), 2-D arrays indexed [y, x] of the cell
    index, the status most seeds share, its count and the seeds run, each metric's mean over seeds, and
    the exact radius and min Re eig at the initial gains."""
    from .spec import SpecError

    root = Path(root)
    defn, store = load_store(root)
    summaries = store.cell_summaries()
    keys = defn.keys
    if summaries is None:
        raise SpecError(str(root), "too many runs to draw (the per-cell tables are kept up to 2e6 runs)")
    if not keys:
        raise SpecError(str(root), "nothing was swept: no heatmap to draw")
    for name, k in (("--x", x), ("--y", y)):
        if k is not None and k not in keys:
            raise SpecError(f"{name} {k}", f"not a swept key of this sweep ({', '.join(keys)})")
    if x is not None and x == y:
        raise SpecError(f"--y {y}", "the same key as --x")
    varying = [k for k in keys if len(defn.grid[k]) > 1] or keys
    x = x or next((k for k in varying if k != y), keys[0])
    y = y or next((k for k in varying if k != x), None)
    others = [k for k in keys if k not in (x, y)]
    xv, yv = defn.grid[x], (defn.grid[y] if y is not None else [None])
    combos = list(itertools.product(*(range(len(defn.grid[k])) for k in others)))
    if len(combos) > MAX_PANELS:  # evenly spaced panels
        pick = np.unique(np.linspace(0, len(combos) - 1, MAX_PANELS).round().astype(int))
        combos = [combos[i] for i in pick]
    index = {k: i for i, k in enumerate(keys)}
    sizes = [len(defn.grid[k]) for k in keys]
    panels = []
    for combo in combos:
        fixed = {k: defn.grid[k][j] for k, j in zip(others, combo)}
        shape = (len(yv), len(xv))
        cell = np.zeros(shape, dtype=int)
        status = np.full(shape, "", dtype=object)
        count = np.zeros(shape, dtype=int)
        ran = np.zeros(shape, dtype=int)
        metrics = {name: np.full(shape, np.nan) for name, _, _ in METRIC_PLOTS}
        exact = {name: np.full(shape, np.nan) for name in ("exact_radius", "exact_min_re_eig")}
        for iy in range(len(yv)):
            for ix in range(len(xv)):
                digits = [0] * len(keys)
                digits[index[x]] = ix
                if y is not None:
                    digits[index[y]] = iy
                for k, j in zip(others, combo):
                    digits[index[k]] = j
                c = 0
                for d, n in zip(digits, sizes):
                    c = c * n + d
                s = summaries[c]
                cell[iy, ix] = c
                status[iy, ix] = s["status"] or ""
                count[iy, ix] = s["counts"][s["status"]] if s["status"] else 0
                ran[iy, ix] = s["seeds_run"]
                for name in metrics:
                    metrics[name][iy, ix] = s["metrics"][name]["mean"] if s["metrics"][name]["n"] else np.nan
                for name in exact:
                    v = s["exact"][name]
                    exact[name][iy, ix] = np.nan if v is None else v
        panels.append({"fixed": fixed, "cell": cell, "status": status, "count": count, "seeds_run": ran,
                       "metrics": metrics, "exact": exact})  # fmt: skip
    sigma = None
    if y is not None and {x, y} == {"policy.sigma_mu", "policy.sigma_pi"}:
        sigma = _sigma_line(defn.grid[x], defn.grid[y], x == "policy.sigma_mu")
    return {
        "name": defn.base.name,
        "root": str(root),
        "x": x,
        "y": y,
        "x_values": list(xv),
        "y_values": list(yv),
        "seeds": defn.n_seeds,
        "panels": panels,
        "panels_total": math.prod(len(defn.grid[k]) for k in others),
        "sigma_line": sigma,
    }


def _sigma_line(xv: list[Any], yv: list[Any], x_is_mu: bool) -> dict[str, np.ndarray] | None:
    """sigma_pi = sqrt(2) sigma_mu in category coordinates (None when a key is not increasing numbers)."""
    xs, ys = _numeric(xv), _numeric(yv)
    if xs is None or ys is None:
        return None
    mu = np.linspace((xs if x_is_mu else ys).min(), (xs if x_is_mu else ys).max(), 400)
    pi = math.sqrt(2.0) * mu
    px, py = (mu, pi) if x_is_mu else (pi, mu)
    cx, cy = _position(xs, px), _position(ys, py)
    ok = np.isfinite(cx) & np.isfinite(cy)
    if not np.any(ok):
        return None
    return {"x": cx[ok], "y": cy[ok]}


# -------------------------------------------------------------------------------------------- drawing


def _panel_grid(n: int) -> tuple[int, int]:
    cols = min(n, 4)
    return math.ceil(n / cols), cols


def _figure(data: dict[str, Any]):
    n = len(data["panels"])
    rows, cols = _panel_grid(n)
    nx, ny = len(data["x_values"]), len(data["y_values"])
    w = min(4.5, 1.2 + 0.55 * nx)
    h = min(4.0, 1.2 + 0.45 * ny)
    fig = _pyplot()(figsize=(max(5.0, cols * w + 1.0), rows * h + 0.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


MAX_TICKS = 10  # labelled values per axis (evenly spaced, the first and the last always)
MAX_LABELLED = 144  # cells a panel prints its numbers or letters in; larger panels are colour only


def _ticks(n: int) -> list[int]:
    if n <= MAX_TICKS:
        return list(range(n))
    step = math.ceil((n - 1) / (MAX_TICKS - 1))
    ticks = list(range(0, n, step))
    if ticks[-1] != n - 1:  # the last value always; it replaces a tick too close to it
        if n - 1 - ticks[-1] <= step / 2:
            ticks[-1] = n - 1
        else:
            ticks.append(n - 1)
    return ticks


def _axes(ax, data: dict[str, Any], panel: dict[str, Any]) -> None:
    nx, ny = len(data["x_values"]), len(data["y_values"])
    xt, yt = _ticks(nx), _ticks(ny)
    ax.set_xticks(xt, [_text(data["x_values"][i]) for i in xt], rotation=45 if len(xt) > 6 else 0, fontsize=7)
    ax.set_yticks(yt, [_text(data["y_values"][i]) for i in yt] if data["y"] else [""], fontsize=7)
    ax.set_xlabel(_label(data["x"]), fontsize=8)
    if data["y"]:
        ax.set_ylabel(_label(data["y"]), fontsize=8)
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    if panel["fixed"]:
        ax.set_title(", ".join(f"{k} = {_text(v)}" for k, v in panel["fixed"].items()), fontsize=8)


def _overlays(ax, data: dict[str, Any], panel: dict[str, Any], handles: dict[str, Any]) -> None:
    """The exact boundary (exact_radius = 1) and the sigma_pi^2 = 2 sigma_mu^2 line."""
    radius = panel["exact"]["exact_radius"]
    ny, nx = radius.shape
    if ny >= 2 and nx >= 2 and np.any(np.isfinite(radius)):
        finite = np.where(np.isfinite(radius), radius, np.nanmax(np.where(np.isfinite(radius), radius, -np.inf)) + 1.0)
        if finite.min() < 1.0 < finite.max():
            cs = ax.contour(np.arange(nx), np.arange(ny), finite, levels=[1.0], colors="black", linewidths=2.0)
            handles.setdefault("exact", cs.legend_elements()[0][0])
    elif np.any(np.isfinite(radius)):  # one row or column: mark the cells whose exact update expands
        for iy, ix in zip(*np.nonzero(radius > 1.0)):
            ax.plot([ix - 0.5, ix + 0.5, ix + 0.5, ix - 0.5, ix - 0.5], [iy - 0.5, iy - 0.5, iy + 0.5, iy + 0.5, iy - 0.5],
                    color="black", lw=2.0)  # fmt: skip
            handles.setdefault("exact", ax.lines[-1])
    line = data["sigma_line"]
    if line is not None:
        (h,) = ax.plot(line["x"], line["y"], "--", color="#1d3557", lw=1.5)
        handles.setdefault("sigma", h)


def _legend(fig, handles: dict[str, Any], extra: list[tuple[Any, str]] | None = None) -> None:
    labels = {"exact": "exact stability boundary at the initial gains (exact_radius = 1)",
              "sigma": "sigma_pi^2 = 2 sigma_mu^2 (E_mu[(pi/mu)^2] infinite above)"}  # fmt: skip
    items = list(extra or []) + [(h, labels[k]) for k, h in handles.items()]
    if items:
        fig.legend([h for h, _ in items], [t for _, t in items], loc="outside lower center", fontsize=7,
                   ncol=min(3, len(items)), frameon=False)  # fmt: skip


def _suptitle(fig: Any, text: str) -> None:
    from .plots import _suptitle as wrapped

    wrapped(fig, text, fontsize=10)


def _title(data: dict[str, Any], what: str) -> str:
    seeds = f", {data['seeds']} seeds a cell" if data["seeds"] > 1 else ""
    shown = "" if len(data["panels"]) == data["panels_total"] else f" ({len(data['panels'])} of {data['panels_total']} panels)"
    return f"{data['name']} sweep ({Path(data['root']).name}): {what}{seeds}{shown}"


def draw_status(data: dict[str, Any]):
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    fig, axes = _figure(data)
    handles: dict[str, Any] = {}
    for ax, panel in zip(axes, data["panels"]):
        status = panel["status"]
        ny, nx = status.shape
        img = np.ones((ny, nx, 3))
        for iy in range(ny):
            for ix in range(nx):
                s = status[iy, ix]
                if not s:
                    continue
                share = panel["count"][iy, ix] / max(panel["seeds_run"][iy, ix], 1)
                rgb = np.array(to_rgb(STATUS_COLOURS[s]))
                img[iy, ix] = 1.0 - (0.3 + 0.7 * share) * (1.0 - rgb)  # paler when fewer seeds agree
                if nx * ny <= MAX_LABELLED:
                    text = s[0] if data["seeds"] == 1 else f"{s[0]}\n{panel['count'][iy, ix]}/{panel['seeds_run'][iy, ix]}"
                    ax.text(ix, iy, text, ha="center", va="center", fontsize=7 if nx <= 12 else 5)
        ax.imshow(img, origin="lower", aspect="auto", interpolation="nearest")
        _overlays(ax, data, panel, handles)
        _axes(ax, data, panel)
    present = {s for p in data["panels"] for s in p["status"].ravel() if s}
    patches = [(Patch(color=STATUS_COLOURS[s]), f"{s[0]} = {s}") for s in STATUSES if s in present]
    _legend(fig, handles, patches)
    _suptitle(fig, _title(data, "status over seeds (paler: fewer seeds agree)"))
    return fig


def _norm(finite: np.ndarray, scale: Any):
    """The colour scale of a metric's finite values; the colour map; what the colour bar extends."""
    from matplotlib.colors import LogNorm, Normalize, TwoSlopeNorm

    if not finite.size:
        return Normalize(0.0, 1.0), "viridis", "neither"
    lo, hi = float(finite.min()), float(finite.max())
    if scale == "log":
        if lo > 0 and hi > lo:
            return LogNorm(lo, hi), "viridis", "neither"
        return Normalize(lo, hi if hi > lo else lo + 1.0), "viridis", "neither"
    low, c, high = (float(v) for v in scale)
    eps = 0.02 * (high - low)  # the centre strictly inside the range, even when no value is below or above it
    vmin = min(max(lo, low), c - eps)
    vmax = max(min(hi, high), c + eps)
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[(lo < vmin, hi > vmax)]
    return TwoSlopeNorm(vcenter=c, vmin=vmin, vmax=vmax), "RdBu_r", extend


def draw_metric(data: dict[str, Any], name: str, label: str, scale: Any = "log"):
    fig, axes = _figure(data)
    values = np.concatenate([p["metrics"][name].ravel() for p in data["panels"]])
    finite = values[np.isfinite(values)]
    norm, cmap_name, extend = _norm(finite, scale)
    handles: dict[str, Any] = {}
    image = None
    for ax, panel in zip(axes, data["panels"]):
        v = panel["metrics"][name]
        ny, nx = v.shape
        masked = np.ma.masked_invalid(v)
        image = ax.imshow(masked, origin="lower", aspect="auto", interpolation="nearest", cmap=cmap_name, norm=norm)
        ax.set_facecolor("#dddddd")  # not measured, or not finite
        if nx * ny <= MAX_LABELLED:
            cmap = image.get_cmap()
            for iy in range(ny):
                for ix in range(nx):
                    x = v[iy, ix]
                    dark = False
                    if np.isfinite(x):
                        r, g, b, _ = cmap(float(np.clip(norm(x), 0.0, 1.0)))
                        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                    ax.text(ix, iy, fmt(x) if not np.isnan(x) else "-", ha="center", va="center", fontsize=6,
                            color="white" if dark else "black")  # fmt: skip
        _overlays(ax, data, panel, handles)
        _axes(ax, data, panel)
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes), shrink=0.9, extend=extend)
        if scale == "log":
            from .plots import plain_log

            plain_log(bar.ax.yaxis)
        bar.set_label(label, fontsize=8)
    _legend(fig, handles)
    _suptitle(fig, _title(data, f"{name}, mean over seeds (grey: not measured or not finite)"))
    return fig


def _slug(key: str | None) -> str:
    return "" if key is None else key.split(".")[-1]


def write_sweep_plots(root: str | Path, x: str | None = None, y: str | None = None) -> list[Path]:
    """Draw the sweep's heatmaps into its directory: `sweep_<what>_<x>_<y>.png` for the status and each
    metric. Returns the files written (none when nothing was swept)."""
    from .spec import SpecError

    _pyplot()
    root = Path(root)
    try:
        data = heatmap_data(root, x, y)
    except SpecError as exc:
        if "nothing was swept" in str(exc) and x is None and y is None:
            return []
        raise
    tail = "_".join(s for s in (_slug(data["x"]), _slug(data["y"])) if s)
    written = []
    path = root / f"sweep_status_{tail}.png"
    _save(draw_status(data), path)
    written.append(path)
    for name, label, scale in METRIC_PLOTS:
        path = root / f"sweep_{name}_{tail}.png"
        _save(draw_metric(data, name, label, scale), path)
        written.append(path)
    return written
