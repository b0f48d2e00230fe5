#!/usr/bin/env bash
# Mutation testing of offtd's Rust core with cargo-mutants (https://mutants.rs).
#
#   bash tests/mutation/cargo_mutants.sh                 # every mathematical module (~2300 mutants, hours on 2 cores)
#   bash tests/mutation/cargo_mutants.sh --quick         # rust/power.rs only (19 mutants, a few minutes)
#   bash tests/mutation/cargo_mutants.sh --iterate       # retest only what the last full run did not catch
#   bash tests/mutation/cargo_mutants.sh --summary [DIR] # print the score of an existing mutants.out
#   bash tests/mutation/cargo_mutants.sh -- --shard 1/8  # anything after -- goes to cargo mutants
#
# cargo-mutants only sees `cargo test`: a mutant is killed by a Rust unit test or not at all (the
# pytest parity suite does not run). Mutants are built and tested in copies of the tree, one per job.
#
# Speed: builds and tests run with `cargo test --lib` (no doc tests; the cdylib is not needed) in the
# dev profile at opt-level 0 without debug info (CARGO_PROFILE_DEV_*, set for this script only): the
# same float semantics (Rust never reassociates or fuses), overflow checks on. At opt-level 1 every
# rebuild of the crate re-optimizes its monomorphized fixed-size kernels (~100 s a mutant on a busy
# 2-core machine), at opt-level 0 it takes ~5 s; the tests then take ~1 s, except
# mmd::tests::histogram_path_equals_direct_selection (35 s: 4.5M pairs, the only test that reaches
# the histogram selection at its real size; histogram_passes_select_every_rank reaches the same
# passes on small sets). It only matters for mutants of mmd.rs's median selection, so a full run has
# three parts: `rest` (the other modules) and `mmd-other` (the rest of mmd.rs) skip it, `mmd-select`
# (select_sq_distance and select_sq_distance_capped) runs every test.
#
# Modules: rollout, transitions, policy_samples, ratios, solver, power, mmd, moments, problem, features,
# density, lqg, linalg, checks, pool, philox (the mathematics).
# Not bindings.rs / error.rs (Python glue and messages) nor par.rs (a thread driver whose mutants
# mostly hang or change nothing observable). Mutants that survive and cannot be killed are recorded
# with the reason in tests/mutation/rust_equivalent_mutants.md.
#
# Environment: OUT (output directory, default target/mutants-full or target/mutants-quick; a full run
# writes OUT/rest, OUT/mmd-select, OUT/mmd-other), PARTS (which of those to run, default all), JOBS
# (default 2), TIMEOUT (seconds per test run, default 30; TIMEOUT_SLOW for mmd-select, default 240),
# QUICK_FILE (default rust/power.rs), CRATE_DIR (the crate to mutate, default this checkout: e.g. a
# `git archive` of an older commit, to measure the score before a change).
# Requires: cargo install cargo-mutants --locked

set -euo pipefail
cd "$(dirname "$0")/../.."

MODULES=(rollout transitions policy_samples ratios solver power mmd moments problem features density lqg linalg checks pool philox)
mode=full
summary_dir=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) mode=quick ;;
        --iterate) mode=iterate ;;
        --summary)
            mode=summary
            if [ $# -gt 1 ] && [ "${2#-}" = "$2" ]; then summary_dir="$2"; shift; fi
            ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# Score of an output directory (its mutants.out, or those of its rest/, mmd-select/, mmd-other/ parts): counts, the
# score over viable mutants, per file.
summarize() {
    python3 - "$1" <<'PY'
import collections, json, sys
from pathlib import Path

root = Path(sys.argv[1])
parts = ("", "rest", "mmd-select", "mmd-other")
dirs = [root / p / "mutants.out" for p in parts if (root / p / "mutants.out").is_dir()]
if not dirs:
    sys.exit(f"no mutants.out under {root}")
outcomes = [o for d in dirs for o in json.loads((d / "outcomes.json").read_text())["outcomes"]]
counts = collections.Counter()
by_file = collections.defaultdict(collections.Counter)
for o in outcomes:
    scen = o["scenario"]
    if scen == "Baseline" or not isinstance(scen, dict):
        continue
    summary = o["summary"]
    kind = {"CaughtMutant": "caught", "MissedMutant": "missed", "Unviable": "unviable", "Timeout": "timeout"}.get(summary, summary)
    counts[kind] += 1
    by_file[scen["Mutant"]["file"]][kind] += 1
viable = counts["caught"] + counts["missed"] + counts["timeout"]
total = viable + counts["unviable"]
print(f"mutants: {total}  caught: {counts['caught']}  missed: {counts['missed']}  "
      f"timeout: {counts['timeout']}  unviable: {counts['unviable']}")
if viable:
    k = counts["caught"] + counts["timeout"]
    try:  # exact binomial (Clopper-Pearson) 95% interval of the score, the sample being random
        from scipy import stats
        lo = stats.beta.ppf(0.025, k, viable - k + 1) if k > 0 else 0.0
        hi = stats.beta.ppf(0.975, k + 1, viable - k) if k < viable else 1.0
        ci = f", 95% interval {100 * lo:.1f}-{100 * hi:.1f}%"
    except ImportError:
        ci = ""
    print(f"score (caught + timeout) / viable: {k}/{viable} = {100.0 * k / viable:.1f}%{ci}  "
          f"(caught / viable: {100.0 * counts['caught'] / viable:.1f}%)")
for f in sorted(by_file):
    c = by_file[f]
    v = c["caught"] + c["missed"] + c["timeout"]
    pct = 100.0 * (c["caught"] + c["timeout"]) / v if v else float("nan")
    print(f"  {f:24s} caught {c['caught']:4d}  missed {c['missed']:3d}  timeout {c['timeout']:3d}  "
          f"unviable {c['unviable']:4d}  score {pct:5.1f}%")
PY
}

if [ "$mode" = summary ]; then
    summarize "${summary_dir:-${OUT:-target/mutants-full}}"
    exit
fi

command -v cargo-mutants >/dev/null || { echo "cargo-mutants is not installed: cargo install cargo-mutants --locked" >&2; exit 2; }

export CARGO_PROFILE_DEV_OPT_LEVEL="${CARGO_PROFILE_DEV_OPT_LEVEL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-false}"
unset CARGO_TARGET_DIR  # every job builds in its own copy

crate_dir="${CRATE_DIR:-.}"
SLOW_TEST=mmd::tests::histogram_path_equals_direct_selection

# run_mutants OUTDIR FILE-ARGS... [-- TEST-BINARY-ARGS...]
run_mutants() {
    local dir="$1"; shift
    local timeout="${TIMEOUT:-30}"
    case "$dir" in */mmd-select) timeout="${TIMEOUT_SLOW:-240}" ;; esac
    local files=() test_args=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do files+=("$1"); shift; done
    [ $# -gt 0 ] && { shift; test_args=("$@"); }
    local args=(
        -d "$crate_dir"
        "${files[@]}"
        --jobs "${JOBS:-2}"
        --timeout "$timeout"
        --build-timeout 900
        --cargo-arg=--lib
        --output "$dir"
        --no-shuffle
        --colors never
    )
    [ "$mode" = iterate ] && args+=(--iterate)
    mkdir -p "$dir"
    set +e
    if [ ${#test_args[@]} -gt 0 ]; then
        # cargo-mutants hands what follows its `--` to cargo test: a second `--` reaches the harness
        cargo mutants "${args[@]}" "${extra[@]}" -- -- "${test_args[@]}"
    else
        cargo mutants "${args[@]}" "${extra[@]}"
    fi
    local status=$?
    set -e
    # cargo-mutants exits 2 when some mutant was missed, 3 on timeouts: report, do not fail then
    case $status in 0|2|3) return 0 ;; *) return $status ;; esac
}

start=$(date +%s)
case "$mode" in
    quick)
        out="${OUT:-target/mutants-quick}"
        run_mutants "$out" -f "${QUICK_FILE:-rust/power.rs}" -- --skip "$SLOW_TEST"
        ;;
    full|iterate)
        out="${OUT:-target/mutants-full}"
        rest=()
        for m in "${MODULES[@]}"; do [ "$m" = mmd ] || rest+=(-f "rust/$m.rs"); done
        for part in ${PARTS:-rest mmd-select mmd-other}; do
            case $part in
                rest) run_mutants "$out/rest" "${rest[@]}" -- --skip "$SLOW_TEST" ;;
                mmd-select) run_mutants "$out/mmd-select" -f rust/mmd.rs -F ' in select_sq_distance(_capped)?$' ;;
                mmd-other) run_mutants "$out/mmd-other" -f rust/mmd.rs -E ' in select_sq_distance(_capped)?$' -- --skip "$SLOW_TEST" ;;
                *) echo "unknown part $part" >&2; exit 2 ;;
            esac
        done
        ;;
esac
end=$(date +%s)
echo "wall time: $((end - start)) s"
summarize "$out"
