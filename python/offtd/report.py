"""The run report: one dict (report.json), its markdown rendering (report.md), the series files, and
atomic writing of a run directory."""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import re
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from .health import Verdict
from .loop import CORE_METRICS, EXTRA_CORE_METRICS, LoopResult
from .spec_io import to_toml
from .spec_schema import Spec, _printable
from .summary import fmt, summarize

SAMPLE_COLUMNS = (
    "iter", "td_loss", "critic_teacher_error", "tracking_gap", "mean_rho2", "w_norm",
    "fixed_point_gap", "stability_proxy", "dist_mmd2",
)  # fmt: skip
SAMPLE_ROWS = 8


def probe_columns(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    """Rows of one probe -> {metric: values}, metrics in first-seen order."""
    names: list[str] = []
    for r in rows:
        names.extend(k for k in r if k not in names)
    return {k: [r.get(k, math.nan) for r in rows] for k in names}


def key_hparams(spec: Spec) -> str:
    """The Run Info line: the hyperparameters a reader compares across runs."""
    return (
        f"outer_iters={spec.run.outer_iters}, horizon={spec.run.horizon}, gamma={spec.critic.gamma:g}, "
        f"alpha_w={spec.critic.alpha_w:g}, alpha_pi={spec.actor.alpha_pi:g}, beta={spec.policy.beta:g}, "
        f"sigma_mu={spec.policy.sigma_mu:g}, sigma_pi={spec.policy.sigma_pi:g}, p_mix={spec.policy.p_mix:g}, "
        f"critic={spec.critic.algorithm}" + (f" (alpha_h={spec.critic.alpha_h:g})" if spec.critic.algorithm in ("tdc", "gtd2") else "")
    )


def build_report(spec: Spec, result: LoopResult, verdict: Verdict, theory: dict, run_info: dict[str, Any]) -> dict:
    """Everything the run measured, as one JSON-ready dict (numbers may be non-finite here)."""
    done = result.completed
    iters = result.iters[:done]
    k = spec.run.last_k
    core = {name: summarize(iters, result.series[name][:done], k) for name in CORE_METRICS + EXTRA_CORE_METRICS}
    probes: dict[str, dict] = {}
    probe_series: dict[str, dict] = {}
    for name, rows in result.probe_series.items():
        if not rows:
            continue
        cols = probe_columns(rows)
        probe_series[name] = cols
        probes[name] = {metric: summarize(cols["iter"], vals, k) for metric, vals in sorted(cols.items())}
    exact_series = probe_columns(result.exact_series) if result.exact_series else {}
    exact = {metric: summarize(exact_series["iter"], vals, k) for metric, vals in exact_series.items()}
    stab = result.probe_series.get("stability_probe") or []
    train_scale = float(result.series["train_step_scale"][done - 1]) if done else math.nan
    scale = {
        "train_step_scale": train_scale,
        "stability_probe_step_scale": stab[-1]["stability_probe_step_scale"] if stab else None,
        "stability_probe_step_scale_ratio": stab[-1]["stability_probe_step_scale_ratio"] if stab else None,
    }
    # Iterations that never ran (after divergence or an interruption) are "not measured": None (null).
    series = {
        "iter": result.iters.tolist(),
        **{name: [*result.series[name][:done].tolist(), *([None] * (len(result.iters) - done))] for name in result.series},
    }
    return {
        "run_info": {
            **run_info,
            "seed": spec.run.seed,
            "key_hparams": key_hparams(spec),
            "name": spec.name,
            "outer_iters": spec.run.outer_iters,
            "completed_iters": done,
            "diverged_at": result.diverged_at,
            "interrupted": result.interrupted,
            "spec": spec.to_dict(),
        },
        "health": verdict.to_dict(),
        "scale_checks": scale,
        "core_metrics": core,
        "probes": probes,
        "series": series,
        "probe_series": probe_series,
        "exact": exact,
        "exact_series": exact_series,
        "next_steps": list(verdict.next_steps),
        "theory": theory,
    }


# ------------------------------------------------------------------------------------------- markdown

# "<" that could open an HTML tag, comment, declaration or autolink; "&" that could start an entity.
_MD_HTML = re.compile(r"<(?=[A-Za-z/!?])|&(?=[A-Za-z0-9#])")


def md(text: Any, table: bool = False) -> str:
    """Any string as inert markdown text on one line: backslashes doubled, control characters and line
    separators escaped as `\\n`, `\\x1b`, ... (a name or path holding a newline cannot start a heading), HTML
    tags and entities escaped, no inline links; in a table cell (`table=True`) pipes escaped too. What a
    reader sees rendered is the text itself."""
    s = _printable(str(text).replace("\\", "\\\\"))
    if table:
        s = s.replace("|", "\\|")
    s = _MD_HTML.sub(lambda m: "&lt;" if m.group() == "<" else "&amp;", s)
    return s.replace("](", "]\\(")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(md(h, table=True) for h in header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(md(c, table=True) for c in r) + " |" for r in rows]
    return out


def _summary_table(metrics: dict[str, dict]) -> list[str]:
    cols = ["last", "min", "max", "mean_last_k", "slope_last_k"]
    return _table(["metric", *cols], [[name, *(fmt(s[c]) for c in cols)] for name, s in metrics.items()])


def _samples(report: dict) -> tuple[list[list[str]], list[list[str]]]:
    series = report["series"]
    ps = report["probe_series"]

    def probe_lookup(probe: str, metric: str) -> dict[float, float]:
        cols = ps.get(probe) or {}
        return dict(zip(cols.get("iter", []), cols.get(metric, [])))

    extra = {
        "fixed_point_gap": probe_lookup("fixed_point_probe", "w_gap"),
        "stability_proxy": probe_lookup("stability_probe", "stability_proxy"),
        "dist_mmd2": probe_lookup("distribution_probe", "mmd2"),
    }
    rows = []
    for i, t in enumerate(series["iter"]):
        row = [fmt(t)]
        for c in SAMPLE_COLUMNS[1:]:
            if c in extra:
                row.append(fmt(extra[c][t]) if t in extra[c] else "-")
            else:
                row.append(fmt(series[c][i]))
        rows.append(row)
    return rows[:SAMPLE_ROWS], rows[-SAMPLE_ROWS:]


def render_markdown(report: dict, elapsed_s: float | None = None) -> str:
    """report.md. `elapsed_s` (wall time) is shown when given; report.json leaves it out so that the same
    spec and seed give the same report.json apart from timestamp and run_dir."""
    info = report["run_info"]
    took = f" in {elapsed_s:.3g} s" if elapsed_s is not None else ""
    lines = ["# Run Report", "", "## Run Info"]
    lines += [
        f"- run_dir: {md(info.get('run_dir'))}",
        f"- timestamp: {md(info.get('timestamp'))}",
        f"- seed: {md(info['seed'])}",
        f"- key_hparams: {md(info['key_hparams'])}",
        f"- backend: {md(info.get('backend'))}",
        f"- name: {md(info['name'])}",
        f"- iterations: {md(info['completed_iters'])} of {md(info['outer_iters'])} completed{took}",
    ]
    lines += ["", "## Health", f"- {md(report['health']['status_line'])}"]
    sc = report["scale_checks"]
    ratio = sc["stability_probe_step_scale_ratio"]
    lines += [
        "",
        "## Scale Checks",
        f"- train_step_scale: {fmt(sc['train_step_scale'])}",
        f"- stability_probe_step_scale: {fmt(sc['stability_probe_step_scale'])}",
        f"- stability_probe_step_scale_ratio: {'-' if ratio is None else repr(float(ratio))} (expect ~1.0)",
    ]
    lines += ["", "## Core Metrics", *_summary_table(report["core_metrics"])]
    lines += ["", "## Probe Metrics"]
    for name in sorted(report["probes"]):
        lines += [f"### {md(name)}", *_summary_table(report["probes"][name]), ""]
    head, tail = _samples(report)
    lines += ["## Samples (Head)", *_table(list(SAMPLE_COLUMNS), head), ""]
    lines += ["## Samples (Tail)", *_table(list(SAMPLE_COLUMNS), tail), ""]
    lines += ["## Next Steps", *(f"- {md(s)}" for s in report["next_steps"]), ""]
    lines += ["## Theory"]
    lines += _table(
        ["quantity", "predicted", "measured", "note"],
        [[k, fmt(v["predicted"]), fmt(v["measured"]), v["note"]] for k, v in report["theory"].items()],
    )
    lines += ["", "## Health Checks"]
    lines += _table(["check", "status", "reason"], [[c["name"], c["status"], c["reason"]] for c in report["health"]["checks"]])
    if report.get("exact"):
        lines += ["", "## Exact Expected TD", EXACT_INTRO, "", *_summary_table(report["exact"])]
    return "\n".join(lines) + "\n"


EXACT_INTRO = (
    "Computed without sampling at each probe iteration's gains (specs/MODEL.md 9): `exact_radius`, `exact_min_re_eig`, "
    "`exact_alpha_w_crit` of the population expected TD update; `_pool` the same given the iteration's states; "
    "`exact_teacher_gap` the TD fixed point's relative RMS distance from the teacher (0 without clipping); the ratio "
    "moments at equal policy means (`exact_ratio_available`). `exact_available` = 0: no closed form (clipping with "
    "unequal means); the verdicts then use the probes' intervals."
)


# ----------------------------------------------------------------------------------------- json, files


NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _nonfinite_text(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def plain(obj: Any, encode_nonfinite: bool = False) -> Any:
    """Plain Python values: numpy scalars and arrays become floats, ints and lists. With
    `encode_nonfinite`, inf / -inf / nan become the strings "inf" / "-inf" / "nan" (report.json is strict
    JSON, and null there means "not measured")."""
    if isinstance(obj, dict):
        return {str(k): plain(v, encode_nonfinite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if all(type(v) is float for v in obj):  # the series: one pass, no recursion
            if not encode_nonfinite:
                return list(obj)
            return [v if math.isfinite(v) else _nonfinite_text(v) for v in obj]
        return [plain(v, encode_nonfinite) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist(), encode_nonfinite)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if (math.isfinite(x) or not encode_nonfinite) else _nonfinite_text(x)
    return obj


def jsonable(obj: Any) -> Any:
    """Strict-JSON form: non-finite floats as "inf" / "-inf" / "nan" strings (see :func:`plain`)."""
    return plain(obj, encode_nonfinite=True)


def decode_nonfinite(obj: Any) -> Any:
    """Inverse of :func:`jsonable` for what `json.loads` gives: "inf" / "-inf" / "nan" back to floats."""
    if isinstance(obj, dict):
        return {k: decode_nonfinite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_nonfinite(v) for v in obj]
    if isinstance(obj, str) and obj in NONFINITE:
        return NONFINITE[obj]
    return obj


def to_json(report: dict) -> str:
    return json.dumps(jsonable(report), indent=1, allow_nan=False) + "\n"


def series_csv(columns: dict[str, list[float]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = list(columns)
    writer.writerow(names)
    for row in zip(*(columns[n] for n in names)):
        writer.writerow(["" if x is None else repr(float(x)) for x in row])  # empty: not measured
    return buf.getvalue()


_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


def _create_temp(path: Path) -> tuple[int, str]:
    """A new hidden `.<name>.<random>.tmp` next to `path`, created with mode 0o666: the kernel applies the
    umask (and a default ACL) exactly as for `open()`. Nothing process-wide is read or changed (reading
    the umask with os.umask sets it, and races with other threads creating files)."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers never see half a file, even
    if the process is killed mid-write (at worst a hidden `.<name>.*.tmp` file is left behind). The file
    gets the mode `open()` would give (0o666 less the umask)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """:func:`write_atomic` for bytes (the PNG pictures)."""
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def ratios_npz(ratios: dict[str, np.ndarray]) -> bytes:
    """ratios_last.npz: the last probe iteration's pi/b ratios, one array per probe (`np.load`). Binary,
    not CSV: a probe may hold 10^5-10^6 ratios, and their text form cost ~25x their bytes in memory and
    ~0.5 s a run."""
    buf = io.BytesIO()
    arrays: dict[str, Any] = {name: np.asarray(ratios[name], dtype=np.float64).reshape(-1) for name in sorted(ratios)}
    np.savez(buf, **arrays)
    return buf.getvalue()


def eigenvalues_csv(eigenvalues: dict[str, np.ndarray]) -> str:
    """eigenvalues.csv: the eigenvalues of A_hat at the last stability probe (source 0) and of the exact
    expected A (source 1), as columns source, re, im."""
    lines = ["source,re,im"]
    for code, name in ((0, "estimate"), (1, "exact")):
        for lam in np.asarray(eigenvalues.get(name, []), dtype=complex).reshape(-1).tolist():
            lines.append(f"{code},{lam.real!r},{lam.imag!r}")
    return "\n".join(lines) + "\n"


def write_run(
    run_dir: Path,
    spec: Spec,
    report: dict,
    elapsed_s: float | None = None,
    ratios: dict[str, np.ndarray] | None = None,
    eigenvalues: dict[str, np.ndarray] | None = None,
) -> None:
    """Write every file of a run. report.json goes last: its presence marks a complete run directory.
    When a write fails (disk full, file too large, interrupted) the files already written are removed
    before the error propagates: no half-written run is left (the caller removes the directory).
    `ratios` and `eigenvalues` (LoopResult.last_ratios, .last_eigenvalues) become ratios_last.npz and
    eigenvalues.csv, which the pictures read (offtd.plots)."""
    written: list[Path] = []

    def put(name: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            write_bytes_atomic(run_dir / name, text)
        else:
            write_atomic(run_dir / name, text)
        written.append(run_dir / name)

    try:
        put("spec.toml", to_toml(spec))
        put("series.csv", series_csv(report["series"]))
        for name, cols in report["probe_series"].items():
            put(f"{name}.csv", series_csv(cols))
        if report.get("exact_series"):
            put("exact_td.csv", series_csv(report["exact_series"]))
        if ratios:
            put("ratios_last.npz", ratios_npz(ratios))
        if eigenvalues:
            put("eigenvalues.csv", eigenvalues_csv(eigenvalues))
        put("report.md", render_markdown(report, elapsed_s))
        put("report.json", to_json(report))
    except BaseException:
        for path in reversed(written):
            try:
                path.unlink()
            except OSError:
                pass
        raise
