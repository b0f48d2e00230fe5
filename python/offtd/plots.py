"""Pictures of a run (and, in sweep_plots.py, of a sweep): PNG files drawn with matplotlib's Agg backend.

Each picture has a data function that reads what it plots from the run's files (report.json through
`load_run`, plus `ratios_last.npz` and `eigenvalues.csv`), and a drawing function. Tests call the data
functions and compare them with the files, so what is drawn is what was measured. matplotlib is the
optional extra `offtd[plot]`; without it `offtd plot` says how to install it.
"""

from __future__ import annotations

import csv
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .summary import fmt

CORE_UNITS = {
    "td_loss": "(mean TD error^2, reward^2)",
    "w_norm": "(||w||, dimensionless)",
    "mean_rho2": "(mean rho^2, dimensionless)",
    "tracking_gap": "(||K_pi - K_mu||, action/state)",
    "critic_teacher_error": "(relative RMS, dimensionless)",
}
PLOT_FILES = ("core_metrics.png", "stability.png", "khat.png", "ratio_tail.png", "eigenvalues.png")
STATUS_COLOUR = {"PASS": "#2a9d8f", "WARN": "#e9c46a", "FAIL": "#e63946"}


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pyplot():
    """matplotlib's Figure class (Agg, no pyplot: no global state, and a second faster to import)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailable("plots need matplotlib: pip install 'offtd[plot]'") from None
    return Figure


def _subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (8, 5), **kw: Any):
    fig = _pyplot()(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=True, **kw)


def _title(run: Any, what: str) -> str:
    """What the picture shows, naming the run: its spec name, seed and directory."""
    info = run.report["run_info"]
    where = f", {Path(run.run_dir).name}" if run.run_dir is not None else ""
    return f"{info['name']} (seed {info['seed']}{where}): {what}"


def _suptitle(fig: Any, text: str, fontsize: float = 11) -> None:
    """The figure's title, wrapped to its width (about 12 characters an inch at 11 pt)."""
    import textwrap

    width = max(30, int(fig.get_figwidth() * 12 * 11 / fontsize))
    fig.suptitle(textwrap.fill(text, width=width), fontsize=fontsize)


def plain_log(axis: Any) -> None:
    """Tick labels of a log axis as plain text ("3e-07"): matplotlib's default typesets each one with
    mathtext, which made drawing the core metrics take ~1 s of a run's time."""
    from matplotlib.ticker import LogFormatter

    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def _read_csv(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) if r[k] not in ("", None) else math.nan for r in rows]) for k in rows[0]}


# ----------------------------------------------------------------------------------------------- data


def probe_iteration_status(
    spec: Any,
    exact: dict[str, float],
    stab: dict[str, float] | None,
    khats: list[tuple[float, float]],
    rho2: tuple[float, float],
) -> str:
    """A verdict of one probe iteration, for colouring. The run's checks `stable` and `rho_sane` judge the
    last probe iteration (and rho^2 over the last k iterations); this applies their rules (MODEL.md 7)
    to each probe iteration alone, with z at health.level:

    - stable: the exact update, where there is one (FAIL: min Re eig(A) < 0 or radius > 1, beyond the
      rounding tolerance exact_tol), else the probe's intervals (FAIL: wholly past the boundary, WARN:
      straddling it);
    - second moment: the exact E_b[rho_bar^2] where there is one (FAIL above health.rho2_max), else this
      iteration's mean of rho_bar^2 and its standard error (FAIL beyond z SE above, WARN within z SE);
    - tail: the larger PSIS k_hat of pi/b of the fixed-point and stability probes, with its standard error
      (FAIL: k - z SE > khat_fail, WARN: k > khat_warn; not judged with clipping, as in the run).

    `khats` holds (k_hat, standard error) per pi/b probe, `rho2` (mean rho_bar^2, its SE)."""
    from statistics import NormalDist

    h = spec.health
    z = NormalDist().inv_cdf(0.5 * (1.0 + h.level))
    found = {"PASS"}
    if exact.get("exact_available") == 1.0:
        tol = exact.get("exact_tol", 0.0)
        if spec.critic.alpha_w > 0 and (exact["exact_min_re_eig"] < -tol or exact["exact_radius"] > 1.0 + tol):
            found.add("FAIL")
    elif stab is not None:
        if stab["a_min_real_eig_hi"] < 0 or stab["stability_radius_lo"] > 1:
            found.add("FAIL")
        elif stab["a_min_real_eig_lo"] < 0 or stab["stability_radius_hi"] > 1:
            found.add("WARN")
    if exact.get("exact_ratio_available") == 1.0:
        if exact["exact_e_rho_bar2"] > h.rho2_max:
            found.add("FAIL")
    else:
        est, se = rho2
        if not math.isfinite(est) or est + z * se > h.rho2_max:
            found.add("FAIL" if math.isfinite(est) and est - z * se > h.rho2_max else "WARN")
    if not spec.rho.clip_enabled:
        judged = [(k, se) for k, se in khats if math.isfinite(k)]
        if judged:
            k, se = max(judged)
            if k - z * se > h.khat_fail:
                found.add("FAIL")
            elif k > h.khat_warn:
                found.add("WARN")
    return max(found, key=("PASS", "WARN", "FAIL").index)


def core_metrics_data(run: Any) -> dict[str, Any]:
    """The core metrics per iteration, and the probe iterations with their statuses
    (:func:`probe_iteration_status`)."""
    from .health import khat_se

    series = run.series
    exact = run.probe_series.get("exact_td", {})
    stab = run.probe_series.get("stability_probe", {})

    def row(cols: dict[str, Any], t: float) -> dict[str, float] | None:
        if not cols:
            return None
        where = np.flatnonzero(np.asarray(cols["iter"], dtype=float) == t)
        return {k: float(v[where[0]]) for k, v in cols.items()} if where.size else None

    iters = list(exact.get("iter", []))
    statuses = []
    for t in iters:
        khats = []
        for probe in ("fixed_point_probe", "stability_probe"):
            r = row(run.probe_series.get(probe, {}), t)
            if r is not None:
                khats.append((r["rho_khat"], khat_se(r["rho_khat"], r["batch_size"] - r.get("rho_nonfinite", 0.0))))
        i = int(t)
        rho2 = (float(series["mean_rho_bar2"][i]), float(series["mean_rho_bar2_se"][i])) if "mean_rho_bar2" in series else (math.nan, 0.0)
        statuses.append(probe_iteration_status(run.spec, row(exact, t) or {}, row(stab, t), khats, rho2))
    metrics = ("td_loss", "w_norm", "mean_rho2", "tracking_gap", "critic_teacher_error")
    return {
        "iter": np.asarray(series["iter"], dtype=float),
        "metrics": {m: np.asarray(series[m], dtype=float) for m in metrics},
        "probe_iters": np.asarray(iters, dtype=float),
        "probe_status": statuses,
    }


def stability_data(run: Any) -> dict[str, Any]:
    """Radius of I - alpha_w A and min Re eig(A) per probe iteration: the probe's estimate with its 95%
    interval, the exact population value and the exact value given the iteration's states."""
    stab = run.probe_series.get("stability_probe", {})
    exact = run.probe_series.get("exact_td", {})
    out: dict[str, Any] = {"stab_iter": np.asarray(stab.get("iter", []), dtype=float), "exact_iter": np.asarray(exact.get("iter", []), dtype=float)}
    for q, ex in (("stability_radius", "exact_radius"), ("a_min_real_eig", "exact_min_re_eig")):
        for suffix in ("", "_lo", "_hi"):
            out[q + suffix] = np.asarray(stab.get(q + suffix, []), dtype=float)
        out[ex] = np.asarray(exact.get(ex, []), dtype=float)
        out[ex + "_pool"] = np.asarray(exact.get(ex + "_pool", []), dtype=float)
    return out


def khat_data(run: Any) -> dict[str, Any]:
    """PSIS k_hat per probe iteration for each probe (pi/mu for the distribution probe, pi/b for the
    others) and its standard error (1 + k)/sqrt(T) (MODEL.md 7)."""
    from .health import khat_se

    out = {}
    for probe in ("distribution_probe", "fixed_point_probe", "stability_probe"):
        rows = run.probe_series.get(probe)
        if not rows:
            continue
        n = rows.get("num_samples", rows.get("batch_size"))
        k = np.asarray(rows["rho_khat"], dtype=float)
        se = np.array([khat_se(float(kk), float(nn)) for kk, nn in zip(k, n)])
        out[probe] = {"iter": np.asarray(rows["iter"], dtype=float), "khat": k, "se": se}
    return out


SURVIVAL_POINTS = 2000


def _survival_points(n: int) -> np.ndarray:
    """Indices into the n sorted ratios for the survival curve: all of them up to SURVIVAL_POINTS,
    otherwise the first, the last SURVIVAL_POINTS // 4 and a log-spaced set of ranks from the top."""
    if n <= SURVIVAL_POINTS:
        return np.arange(n)
    top = SURVIVAL_POINTS // 4
    ranks = np.unique(np.geomspace(1, n, SURVIVAL_POINTS - top).astype(np.int64))  # rank from the top, 1..n
    idx = np.concatenate([[0], n - ranks, np.arange(n - top, n)])
    return np.unique(np.clip(idx, 0, n - 1))


def ratio_tail_data(run: Any) -> dict[str, Any] | None:
    """The empirical survival function of the last probe iteration's pi/b ratios (fixed-point probe),
    the generalized Pareto tail with shape k_hat fitted to the largest T ratios (scale from the median
    excess over the threshold u), and the asymptotic slope -1/k of pi/mu's tail."""
    if run.run_dir is None:
        return None
    path = Path(run.run_dir) / "ratios_last.npz"
    if not path.exists():
        return None
    with np.load(path) as saved:
        if "fixed_point_probe" not in saved.files:
            return None
        rho = saved["fixed_point_probe"]
    rho = np.sort(rho[np.isfinite(rho)])
    n = rho.size
    if n < 10:
        return None
    surv = 1.0 - np.arange(n) / n
    # The curve keeps at most SURVIVAL_POINTS of the n steps, log-spaced in the survival (so the tail,
    # where the picture matters, keeps every point of its last few hundred): a 10^6-ratio probe would
    # otherwise cost seconds and ~100 MiB to draw. The fit below uses every ratio.
    keep = _survival_points(n)
    fp = run.probe_series["fixed_point_probe"]
    k = float(fp["rho_khat"][-1])
    t = math.ceil(min(0.2 * n, 3 * math.sqrt(n)))
    u = rho[n - t - 1]
    excess = rho[n - t :] - u
    fit = None
    med = float(np.median(excess)) if excess.size else math.nan
    if math.isfinite(k) and med > 0:
        # The scale from the median excess, which a generalized Pareto tail has for every shape k
        # (the mean excess is infinite from k = 1 on): median = sigma (2^k - 1) / k, sigma ln 2 at k = 0.
        sigma = med * k / (2.0**k - 1.0) if k != 0 else med / math.log(2.0)
        x = np.linspace(u, rho[-1], 200)
        z = (x - u) / sigma
        with np.errstate(all="ignore"):  # k < 0: the tail ends at u - sigma / k (survival 0 beyond)
            tail = (t / n) * (np.maximum(1 + k * z, 0.0) ** (-1 / k) if k != 0 else np.exp(-z))
        fit = {"x": x, "survival": tail, "k": k, "sigma": sigma, "threshold": u}
    p = run.spec.policy
    k_theory = 1 - p.sigma_mu**2 / p.sigma_pi**2 if p.sigma_mu < p.sigma_pi else math.nan
    return {"rho": rho[keep], "survival": surv[keep], "n": n, "fit": fit, "k_theory": k_theory, "bound": 1 / p.p_mix if p.p_mix > 0 else math.inf}


def eigenvalues_data(run: Any) -> dict[str, Any] | None:
    """Eigenvalues of I - alpha_w A_hat (the last stability probe) and of the exact I - alpha_w A."""
    if run.run_dir is None:
        return None
    cols = _read_csv(Path(run.run_dir) / "eigenvalues.csv")
    if not cols:
        return None
    alpha = run.spec.critic.alpha_w
    out = {}
    for source in ("estimate", "exact"):
        sel = cols["source"] == (0.0 if source == "estimate" else 1.0)
        lam = cols["re"][sel] + 1j * cols["im"][sel]
        out[source] = 1.0 - alpha * lam
    return out


# -------------------------------------------------------------------------------------------- drawing


def _save(fig, path: Path) -> None:
    import io

    from .report import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes_atomic(path, buf.getvalue())


def draw_core_metrics(run: Any, data: dict[str, Any]):
    fig, axes = _subplots(len(data["metrics"]), 1, figsize=(8, 10), sharex=True)
    for ax, (name, values) in zip(axes, data["metrics"].items()):
        ok = np.isfinite(values) & (values > 0)
        ax.plot(data["iter"][ok], values[ok], color="#264653", lw=1.2)
        ax.set_yscale("log")
        if not ok.any():  # an empty log axis would look like a bug: say why
            zero = values.size and np.all(values[np.isfinite(values)] == 0)
            ax.text(0.5, 0.5, "0 at every iteration: nothing to draw on a log axis" if zero else "no positive finite value to draw",
                    transform=ax.transAxes, ha="center", va="center", fontsize=8, color="#555555")  # fmt: skip
        plain_log(ax.yaxis)
        ax.set_ylabel(f"{name}\n{CORE_UNITS.get(name, '')}", fontsize=8)
        for status, colour in STATUS_COLOUR.items():
            ts = [int(t) for t, s in zip(data["probe_iters"], data["probe_status"]) if s == status and t < values.size and ok[int(t)]]
            if ts:
                ax.scatter(ts, values[ts], color=colour, zorder=3, s=22, label=f"probe iteration: {status}")
    axes[-1].set_xlabel("outer iteration")
    shown = [s for s in STATUS_COLOUR if s in data["probe_status"]]
    if shown:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], ls="", marker="o", color=STATUS_COLOUR[s]) for s in shown]
        fig.legend(handles, [f"probe iteration {s} (stable and rho_sane at that iteration)" for s in shown],
                   loc="outside lower center", ncol=len(shown), fontsize=7, frameon=False)  # fmt: skip
    _suptitle(fig, _title(run, "core metrics per iteration, log scale"))
    return fig


def draw_stability(run: Any, data: dict[str, Any]):
    fig, axes = _subplots(2, 1, figsize=(8, 7), sharex=True)
    for ax, q, ex, label, bound in (
        (axes[0], "stability_radius", "exact_radius", "spectral radius of I - alpha_w A\n(dimensionless; > 1 expands)", 1.0),
        (axes[1], "a_min_real_eig", "exact_min_re_eig", "min Re eig(A)\n(per transition; < 0 diverges)", 0.0),
    ):
        if data[q].size:
            ax.fill_between(data["stab_iter"], data[q + "_lo"], data[q + "_hi"], color="#a8dadc", label="probe 95% interval")
            ax.plot(data["stab_iter"], data[q], "o-", color="#457b9d", ms=3, label="probe estimate")
        if data[ex].size:
            ax.plot(data["exact_iter"], data[ex], "-", color="#e63946", lw=2, label="exact (population)")
            ax.plot(data["exact_iter"], data[ex + "_pool"], "--", color="#f4a261", lw=1, label="exact given the states")
        ax.axhline(bound, color="black", lw=0.8, ls=":")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("outer iteration")
    _suptitle(fig, _title(run, "stability of the expected TD update"))
    return fig


def draw_khat(run: Any, data: dict[str, Any]):
    fig, ax = _subplots(figsize=(8, 4))
    labels = {"distribution_probe": "pi/mu (distribution probe)", "fixed_point_probe": "pi/b (fixed-point probe)",
              "stability_probe": "pi/b (stability probe)"}  # fmt: skip
    for probe, d in data.items():
        ax.errorbar(d["iter"], d["khat"], yerr=d["se"], fmt="o-", ms=3, capsize=2, label=labels[probe])
    ax.axhline(0.5, color="#e9c46a", ls="--", lw=1, label="0.5: slow")
    ax.axhline(0.7, color="#e63946", ls="--", lw=1, label="0.7: untrustworthy")
    ax.set_xlabel("outer iteration")
    ax.set_ylabel("PSIS k_hat (dimensionless)")
    _suptitle(fig, _title(run, "tail index of the importance ratios"))
    ax.legend(fontsize=7)
    return fig


def draw_ratio_tail(run: Any, data: dict[str, Any]):
    fig, ax = _subplots(figsize=(7, 5))
    ax.loglog(data["rho"], data["survival"], ".", ms=2, color="#264653", label="empirical P(rho >= t)")
    if data["fit"] is not None:
        f = data["fit"]
        ax.loglog(f["x"], f["survival"], "-", color="#e63946", label=f"generalized Pareto tail, k_hat = {fmt(f['k'])}")
    if math.isfinite(data["k_theory"]) and data["k_theory"] > 0:
        t0, s0 = data["rho"][-1] / 10, None
        idx = np.searchsorted(data["rho"], t0)
        s0 = data["survival"][min(idx, data["rho"].size - 1)]
        xs = np.array([t0, data["rho"][-1]])
        ax.loglog(xs, s0 * (xs / t0) ** (-1 / data["k_theory"]), ":", color="#2a9d8f",
                  label=f"pi/mu asymptotic slope -1/k, k = {fmt(data['k_theory'])}")  # fmt: skip
    if math.isfinite(data["bound"]):
        ax.axvline(data["bound"], color="black", lw=0.8, ls="--", label=f"1/p_mix = {fmt(data['bound'])}")
    plain_log(ax.xaxis)
    plain_log(ax.yaxis)
    ax.set_xlabel("importance ratio t = pi/b (dimensionless)")
    ax.set_ylabel("survival P(rho >= t) (probability)")
    _suptitle(fig, _title(run, "ratio tail at the last probe iteration"))
    ax.legend(fontsize=7)
    return fig


def draw_eigenvalues(run: Any, data: dict[str, Any]):
    fig, axes = _subplots(1, 2, figsize=(11, 5))
    theta = np.linspace(0, 2 * np.pi, 721)
    for ax, zoom in ((axes[0], False), (axes[1], True)):
        ax.plot(np.cos(theta), np.sin(theta), color="black", lw=0.8)
        est, ex = data["estimate"], data["exact"]
        ax.plot(est.real, est.imag, "o", mfc="none", color="#457b9d", label="I - alpha_w A_hat (probe)")
        ax.plot(ex.real, ex.imag, "x", color="#e63946", label="I - alpha_w A (exact)")
        ax.set_xlabel("Re (dimensionless)")
        ax.set_ylabel("Im (dimensionless)")
        ax.set_aspect("equal")
        if zoom:
            pts = np.concatenate([est, ex])
            near = pts[np.abs(pts - 1) < 0.5] if np.any(np.abs(pts - 1) < 0.5) else pts
            span = max(float(np.max(np.abs(near - 1))) * 1.3, 1e-3)
            ax.set_xlim(1 - span, 1 + span)
            ax.set_ylim(-span, span)
            ax.set_title("zoomed to the arc near 1")
        else:
            ax.legend(fontsize=7)
            ax.set_title("the unit circle")
    _suptitle(fig, _title(run, "eigenvalues of the critic's expected map against the unit circle"))
    return fig


def write_plots(run: Any, out_dir: Path | None = None) -> list[Path]:
    """Draw every picture the run's files allow into `out_dir` (default: the run directory)."""
    _pyplot()
    target = Path(out_dir if out_dir is not None else run.run_dir)
    written = []
    jobs = [
        ("core_metrics.png", core_metrics_data(run), draw_core_metrics),
        ("stability.png", stability_data(run), draw_stability),
        ("khat.png", khat_data(run), draw_khat),
        ("ratio_tail.png", ratio_tail_data(run), draw_ratio_tail),
        ("eigenvalues.png", eigenvalues_data(run), draw_eigenvalues),
    ]
    for name, data, draw in jobs:
        if not data:
            continue
        # A diverging run's numbers (1e300, inf) can defeat matplotlib's transforms (singular matrix,
        # overflow): that picture is skipped with a warning, the others are drawn; a failed write
        # (OSError) still propagates.
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                _save(draw(run, data), target / name)
        except OSError:
            raise
        except Exception as exc:
            sys.stderr.write(f"offtd: warning: could not draw {name}: {type(exc).__name__}: {exc}\n")
            continue
        written.append(target / name)
    return written


# ------------------------------------------------------------------------------- report.md and the CLI

PLOTS_HEADING = "## Plots"
PLOT_TITLES = {
    "core_metrics.png": "Core metrics per iteration (probe iterations coloured by health)",
    "stability.png": "Spectral radius and min Re eig, with the probe's intervals and the exact values",
    "khat.png": "PSIS k_hat per probe iteration",
    "ratio_tail.png": "Survival of the last probe's pi/b ratios, with the fitted tail",
    "eigenvalues.png": "Eigenvalues of I - alpha_w A_hat against the unit circle",
}


def link_in_report(run_dir: Path, written: list[Path]) -> None:
    """Add (or replace) report.md's last section, `## Plots`, linking the pictures drawn."""
    from .report import write_atomic

    path = Path(run_dir) / "report.md"
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    cut = text.find("\n" + PLOTS_HEADING + "\n")
    if cut >= 0:
        text = text[: cut + 1]
    if not text.endswith("\n"):
        text += "\n"
    lines = ["", PLOTS_HEADING, ""]
    for p in written:
        lines += [f"![{PLOT_TITLES.get(p.name, p.stem)}]({p.name})", ""]
    write_atomic(path, text + "\n".join(lines))


def plot_run(run: Any) -> list[Path]:
    """Draw a run's pictures into its directory and link them from its report.md. `run` is a RunResult
    with a run directory, or the directory (read with offtd.load_run). Returns the files written."""
    from .api import load_run

    if not hasattr(run, "report"):
        run = load_run(run)
    if run.run_dir is None:
        raise ValueError("plot_run needs a run written to a directory (offtd.run(..., out=...))")
    _pyplot()  # PlotsUnavailable before anything is touched
    written = write_plots(run)
    link_in_report(Path(run.run_dir), written)
    return written
