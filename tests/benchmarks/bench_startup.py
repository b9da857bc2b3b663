"""How long `opsctl --help` takes, as a ratio of `python -c "import typer, rich"`.

Both are measured in the same run, as medians of repeated cold-process starts made in
alternation, so the figure is about opsctl's own import cost, not this machine's speed; the
spread of each series and of the pairs' ratios is printed beside it. Target: at most 1.0
(issue 21: opsctl --help costs no more than importing Typer and Rich).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = 15
OPSCTL = Path(sys.executable).parent / "opsctl"


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def spread(runs: list[float]) -> str:
    """median (min-max) of a series, in milliseconds"""
    return f"{statistics.median(runs) * 1000:.0f} ms ({min(runs) * 1000:.0f}-{max(runs) * 1000:.0f})"


def main() -> int:
    baseline, opsctl = [], []
    for _ in range(RUNS):  # alternated: a load that comes and goes lands on both
        baseline.append(wall([sys.executable, "-c", "import typer, rich"]))
        opsctl.append(wall([str(OPSCTL), "--help"]))
    ratio = statistics.median(opsctl) / statistics.median(baseline)
    pairs = sorted(o / b for o, b in zip(opsctl, baseline))  # each pair ran back to back
    print(f"bench_startup: baseline 'import typer, rich' {spread(baseline)}, 'opsctl --help' {spread(opsctl)}, "
          f"{RUNS} alternated runs, median (min-max); ratio {ratio:.2f} (target <= 1.0); per pair "
          f"{pairs[0]:.2f}-{pairs[-1]:.2f} (quartiles {statistics.quantiles(pairs, n=4)[0]:.2f}-"
          f"{statistics.quantiles(pairs, n=4)[2]:.2f})")
    return 0 if ratio <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
