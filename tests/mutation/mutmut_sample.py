#!/usr/bin/env python3
"""Helper of tests/mutation/mutmut.sh, run inside its work copy (the directory holding src/offtd and
the pyproject.toml with [tool.mutmut]):

    python3 mutmut_sample.py generate                 # write mutants/ (mutmut's own generator), print the count
    python3 mutmut_sample.py sample N SEED > names    # N mutant names drawn without replacement, seeded
    python3 mutmut_sample.py summary names            # the score of those mutants, with a 95% interval

mutmut 3 has no command that only generates mutants or samples them, so `generate` calls its generator
(the functions `mutmut run` calls first) and `sample` reads the names from the generated meta files.
The score counts killed, timeout and segfault as caught, survived and "no tests" as missed (a mutant no
selected test reaches is not caught), and leaves out "not checked" and "skipped". The interval is
Clopper-Pearson (exact binomial): the sample is a simple random sample of the mutants.
"""

from __future__ import annotations

import collections
import os
import random
import sys
from pathlib import Path

CAUGHT = {"killed", "timeout", "segfault", "caught by type check"}
MISSED = {"survived", "no tests", "suspicious"}


def _mutant_names() -> dict[str, str]:
    """Every generated mutant name -> its status."""
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code
    from mutmut.utils.file_utils import walk_mutatable_files

    out = {}
    for path in walk_mutatable_files():
        m = SourceFileMutationData(path=path)
        m.load()
        for name, code in m.exit_code_by_key.items():
            out[name] = status_by_exit_code[code]
    return out


def generate() -> None:
    from mutmut.__main__ import create_mutants
    from mutmut.mutation.trampoline import set_mutant_under_test
    from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir

    set_mutant_under_test("mutant_generation")
    os.makedirs("mutants", exist_ok=True)
    copy_src_dir()
    copy_also_copy_files()
    create_mutants(1)
    print(f"{len(_mutant_names())} mutants", file=sys.stderr)


def sample(n: int, seed: int) -> None:
    names = sorted(_mutant_names())
    if not names:
        sys.exit("no mutants: run `generate` first")
    for name in sorted(random.Random(seed).sample(names, min(n, len(names)))):
        print(name)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    from scipy import stats

    a = 1.0 - level
    lo = float(stats.beta.ppf(a / 2, k, n - k + 1)) if k > 0 else 0.0
    hi = float(stats.beta.ppf(1 - a / 2, k + 1, n - k)) if k < n else 1.0
    return lo, hi


def summary(names_file: str) -> int:
    wanted = [line.strip() for line in Path(names_file).read_text().splitlines() if line.strip()]
    status = _mutant_names()
    counts: collections.Counter[str] = collections.Counter()
    by_module: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    missed = []
    for name in wanted:
        s = status.get(name, "gone")  # gone: the code changed since the sample was drawn
        counts[s] += 1
        module = name.split(".x_")[0].split(".xǁ")[0]
        by_module[module][s] += 1
        if s in MISSED:
            missed.append((name, s))
    caught = sum(counts[s] for s in CAUGHT)
    judged = caught + sum(counts[s] for s in MISSED)
    print("statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if judged:
        lo, hi = clopper_pearson(caught, judged)
        print(f"score: {caught}/{judged} = {100.0 * caught / judged:.1f}% caught  (95% Clopper-Pearson interval {100 * lo:.1f}-{100 * hi:.1f}%)")
    for module in sorted(by_module):
        c = by_module[module]
        k = sum(c[s] for s in CAUGHT)
        j = k + sum(c[s] for s in MISSED)
        print(f"  {module:36s} caught {k:3d} / {j:3d}")
    for name, s in missed:
        print(f"  {s}: {name}")
    return 0


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "generate":
        generate()
    elif cmd == "sample" and len(args) == 2:
        sample(int(args[0]), int(args[1]))
    elif cmd == "summary" and len(args) == 1:
        return summary(args[0])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
