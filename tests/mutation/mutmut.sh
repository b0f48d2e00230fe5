#!/usr/bin/env bash
# Mutation testing of offtd's Python mathematics with mutmut 3 (https://mutmut.readthedocs.io).
#
#   bash tests/mutation/mutmut.sh                # a seeded random sample of the mutants (SAMPLE=150, SEED=13)
#   bash tests/mutation/mutmut.sh --all          # every mutant (~6000: days on 2 cores)
#   bash tests/mutation/mutmut.sh --names A B    # these mutants (names as `mutmut results` prints them)
#   bash tests/mutation/mutmut.sh --summary      # the score of the last sample, with its 95% interval
#   bash tests/mutation/mutmut.sh --show NAME    # the diff of one mutant
#
# What is mutated and which tests judge it: [tool.mutmut] in pyproject.toml (model, loop, probes,
# health, advice, summary, exact/*, reference/*; the test files with independent oracles for them).
#
# Layout: mutmut 3 imports the mutated code from mutants/src (or mutants/.) and names mutants after
# the file's path, so python/offtd/health.py would be "python.offtd.health" while the tests import
# "offtd.health" (and every mutant would be "no tests"). The script therefore works on a copy of HEAD
# (git archive; this checkout is never touched, so commit a test before asking whether it kills a
# mutant) in which python/ is renamed src/, in WORK (default target/mutmut), with this checkout's
# compiled extension (python/offtd/_core*.so, rebuild it first if rust/ changed) copied in. The copy
# is reused while HEAD is the same: mutmut keeps its test-coverage map ("stats", one run of every
# selected test, ~10-20 min on 2 busy cores) and the results of mutants already run.
#
# Cost: the stats run once, then each mutant runs the selected tests that reach its function, stopping
# at the first failure: seconds for most, minutes for a mutant in the loop that every whole-run test
# reaches. A 150-mutant sample took about an hour on 2 shared cores (see tests/README.md).
#
# Environment: WORK, SAMPLE, SEED, JOBS (mutmut's --max-children, default 1), CORE (the compiled
# extension to copy in, default this checkout's python/offtd/_core*.so: give a build of HEAD's rust/
# when the checkout's was built from uncommitted Rust changes, e.g. `maturin build --release` of a
# `git archive HEAD`).

set -euo pipefail
cd "$(dirname "$0")/../.."
src=$(pwd)
work="${WORK:-target/mutmut}"
sample="${SAMPLE:-150}"
seed="${SEED:-13}"
jobs="${JOBS:-1}"
helper="$src/tests/mutation/mutmut_sample.py"

mode=sample
names=()
case "${1:-}" in
    "") ;;
    --all) mode=all ;;
    --names) mode=names; shift; names=("$@"); [ ${#names[@]} -gt 0 ] || { echo "--names needs mutant names" >&2; exit 2; } ;;
    --summary) mode=summary ;;
    --show) mode=show; [ $# -eq 2 ] || { echo "--show needs one mutant name" >&2; exit 2; } ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
esac

python3 -c "import mutmut" 2>/dev/null || { echo "mutmut is not installed: pip install 'mutmut>=3.8,<4'" >&2; exit 2; }

head=$(git rev-parse HEAD)
if [ "$mode" = summary ] || [ "$mode" = show ]; then
    [ -f "$work/sample.txt" ] || { echo "no sample in $work: run the script first" >&2; exit 2; }
    cd "$work"
    if [ "$mode" = show ]; then exec mutmut show "$2"; fi
    echo "sample of $(wc -l < sample.txt) mutants (seed $(cat seed.txt)) at commit $(cat commit.txt)"
    exec python3 "$helper" summary sample.txt
fi

# A fresh copy when HEAD moved (mutants of older code would be judged by newer tests, or vice versa).
if [ ! -f "$work/commit.txt" ] || [ "$(cat "$work/commit.txt")" != "$head" ]; then
    rm -rf "$work"
    mkdir -p "$work"
    git archive HEAD | tar -x -C "$work"
    mv "$work/python" "$work/src"
    if [ -n "${CORE:-}" ]; then cp "$CORE" "$work/src/offtd/_core.abi3.so"; else cp python/offtd/_core*.so "$work/src/offtd/"; fi
    echo "$head" > "$work/commit.txt"
fi
cd "$work"
export RAYON_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
start=$(date +%s)
python3 "$helper" generate
case "$mode" in
    sample)
        python3 "$helper" sample "$sample" "$seed" > sample.txt
        echo "$seed" > seed.txt
        mapfile -t names < sample.txt
        ;;
    all)
        names=()
        echo all > seed.txt
        ;;
    names)
        printf '%s\n' "${names[@]}" > sample.txt
        echo named > seed.txt
        ;;
esac
set +e
mutmut run --max-children "$jobs" "${names[@]}"
status=$?
set -e
end=$(date +%s)
echo "wall time: $((end - start)) s (mutmut exit $status)"
if [ "$status" -ne 0 ]; then
    # mutmut hides the output of its stats and clean-test runs: show the failing test
    echo "mutmut failed; the selected tests on the unmutated copy:" >&2
    mapfile -t selection < <(python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['tool']['mutmut']['pytest_add_cli_args_test_selection']))")
    PYTHONPATH=src python3 -m pytest -x -q -p no:cacheprovider "${selection[@]}" | tail -20 >&2 || true
    exit "$status"
fi
if [ "$mode" = all ]; then
    mutmut results --all true | sed 's/^ *//; s/:.*//' > sample.txt
fi
echo "sample of $(wc -l < sample.txt) mutants (seed $(cat seed.txt)) at commit $head"
python3 "$helper" summary sample.txt
