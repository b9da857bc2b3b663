"""The worker's CPU defaults (WORKER_CPU_THREADS=0, WORKER_BATCH_SIZE=0) come from the CPUs
the process may use, not the host's count (breaker 59: `os.cpu_count()`, so a pod limited to
2 CPUs on a large node sized its threads and batches for the whole node). Shown here with an
affinity mask of one core; a cgroup CPU quota goes through the same reading (loky.cpu_count)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = ("import json; from transcription_worker.config import Settings; "
         "from transcription_worker.model import default_batch_size; "
         "print(json.dumps([Settings(concurrency=1).cpu_threads, default_batch_size('cpu')]))")


def _probe(cores: set[int]) -> list[int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, cores))
    return json.loads(out.stdout)


def test_one_usable_core_gives_one_thread_and_the_smallest_batch():
    one = {min(os.sched_getaffinity(0))}
    assert _probe(one) == [1, 4]


def test_every_core_of_the_mask_counts():
    mask = os.sched_getaffinity(0)
    n = len(mask)
    assert _probe(mask) == [n, max(4, min(16, 4 * n))]
