"""How long `opsctl --help` takes, as a ratio of `python -c "import typer, rich"`.

Both are measured in the same run, as medians of repeated cold-process starts, so the
figure is about opsctl's own import cost, not this machine's speed. Target: at most 1.0
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


def median_wall(argv: list[str]) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    baseline = median_wall([sys.executable, "-c", "import typer, rich"])
    opsctl = median_wall([str(OPSCTL), "--help"])
    ratio = opsctl / baseline
    print(f"bench_startup: baseline 'import typer, rich' {baseline * 1000:.0f} ms, "
          f"'opsctl --help' {opsctl * 1000:.0f} ms, ratio {ratio:.2f} (target <= 1.0)")
    return 0 if ratio <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
