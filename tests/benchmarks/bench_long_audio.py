"""Long audio: the worker's batched pipeline against its sequential loop and against
faster-whisper's batched pipeline called directly, all in one run.

    python tests/benchmarks/bench_long_audio.py [--rounds 3] [--minutes 3]

The recording (at least `--minutes` of varied speech) is built from the shipped samples
(tests/worker/data: the 30 s passage, the weather report and the greeting, spoken by
espeak-ng, here at five speeds, in an order that never repeats a piece back to back), and
its reference text is theirs, joined. Three contenders, interleaved round by round so load
from elsewhere hits all alike:
  1. the worker (`transcription-worker serve`, real HTTP) with its defaults: the recording
     goes through faster-whisper's `BatchedInferencePipeline` with Silero VAD;
  2. the same worker forced onto the sequential loop (`WORKER_BATCHED_MIN_SECONDS=-1`,
     `WhisperModel.transcribe` as before issue 24): the throughput baseline;
  3. `BatchedInferencePipeline` called directly in a process of its own (model made and
     called on a thread, as the service does; same batch size, beam 5): the overhead
     baseline.
Figures: x real time (audio seconds per wall second) per contender, median of the rounds
with the spread (max-min over median); the ratios batched / sequential (target >= 1.3 on 2
CPU cores) and worker / direct pipeline (target >= 0.9), as the median of per-round ratios
with their range; word error rate (jiwer, normalised text) of each pipeline against the
reference (target: batched <= sequential + 0.02). Then one pass of each worker on the
issue's pathological recording, the passage six times in a row, for its word error rates.
Exit 0 when the three targets hold, 1 otherwise. Needs only the worker and its model wheels.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "transcription-worker"
sys.path.insert(0, str(REPO / "tests" / "worker"))

from worker_helpers import free_port, long_recording, wer  # noqa: E402

_DIRECT = """
import sys, threading
from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.audio import decode_audio
model_dir, threads, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
box = {}
def load():
    box["m"] = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads,
                            num_workers=1, local_files_only=True)
def run(path):
    segments, _ = BatchedInferencePipeline(box["m"]).transcribe(
        decode_audio(path), beam_size=5, batch_size=batch, vad_filter=True)
    box["text"] = "".join(s.text for s in segments).strip()
t = threading.Thread(target=load); t.start(); t.join()
print("ready", flush=True)
for line in sys.stdin:
    t = threading.Thread(target=run, args=(line.strip(),)); t.start(); t.join()
    print(box["text"].replace("\\n", " "), flush=True)
"""


class Direct:
    """BatchedInferencePipeline in a fresh process, as the service runs it (model on a thread)."""

    def __init__(self, model: Path, threads: int, batch: int):
        self.proc = subprocess.Popen([sys.executable, "-c", _DIRECT, str(model), str(threads), str(batch)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def transcribe(self, path: Path) -> str:
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


class Service:
    def __init__(self, model: Path, threads: int, **env_extra: str):
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
        env.update(WORKER_MODEL_PATH=str(model), WORKER_CONCURRENCY="1", WORKER_CPU_THREADS=str(threads),
                   WORKER_LOG_LEVEL="warning", **env_extra)
        self.proc = subprocess.Popen([str(BIN), "serve", "--port", self.url.rsplit(":", 1)[1]],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"worker exited: {self.proc.stderr.read().decode()}")
            time.sleep(0.2)
        raise SystemExit("worker did not become ready")

    def transcribe(self, audio: bytes) -> str:
        r = httpx.post(self.url + "/v1/audio/transcriptions", timeout=1800,
                       files={"file": ("long.wav", audio, "audio/wav")}, data={"language": "en"})
        r.raise_for_status()
        return r.json()["text"]

    def pipelines(self) -> dict[str, float]:
        """worker_transcriptions_total by pipeline: proves which path the worker took."""
        out = {}
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("worker_transcriptions_total{"):
                out[line.split('pipeline="')[1].split('"')[0]] = float(line.split()[-1])
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                        help="one untimed pass of each contender first (default on)")
    args = parser.parse_args()

    from transcription_worker.config import default_model_dir
    from transcription_worker.model import assemble_model, default_batch_size

    model = assemble_model(default_model_dir())
    cores = os.cpu_count() or 1
    batch = default_batch_size("cpu", cores)
    audio, reference = long_recording(args.minutes * 60)
    seconds = (len(audio) - 44) / 32000
    repeated, repeated_ref = long_recording(170, pieces=[("passage", 1.0)], gap_ms=0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-long-"))
    path = tmp / "long.wav"
    path.write_bytes(audio)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    print(f"recording: {seconds:.1f} s of varied speech, {len(reference.split())} words; {cores} cores;"
          f" Whisper base int8, beam 5, batch {batch}; {args.rounds} rounds"
          + (" after one warm-up" if args.warmup else ", no warm-up"), flush=True)

    batched = Service(model, cores)
    sequential = Service(model, cores, WORKER_BATCHED_MIN_SECONDS="-1")
    direct = Direct(model, cores, batch)
    runs = {"worker, batched (default)": lambda: batched.transcribe(audio),
            "worker, sequential loop": lambda: sequential.transcribe(audio),
            "batched pipeline called directly": lambda: direct.transcribe(path)}
    texts: dict[str, str] = {}
    for name, fn in runs.items() if args.warmup else ():  # allocator, caches, first-call costs
        texts[name] = fn()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for rnd in range(args.rounds):
        for name, fn in runs.items():
            time.sleep(0.5)
            started = time.perf_counter()
            texts[name] = fn()
            rates[name].append(seconds / (time.perf_counter() - started))
            print(f"  round {rnd + 1}: {name}: {rates[name][-1]:.2f}x real time,"
                  f" WER {wer(reference, texts[name]):.3f}", flush=True)
    used = batched.pipelines(), sequential.pipelines()
    assert used[0].get("batched", 0) > 0 and used[0].get("sequential", 0) == 0, used
    assert used[1].get("sequential", 0) > 0 and used[1].get("batched", 0) == 0, used

    print(f"\n{'contender':<36}{'x real time':>12}{'spread':>8}{'WER':>7}")
    for name in runs:
        print(f"{name:<36}{statistics.median(rates[name]):>12.2f}{spread(rates[name]):>8.0%}"
              f"{wer(reference, texts[name]):>7.3f}")
    b, s, d = (rates[n] for n in runs)
    speedup = [x / y for x, y in zip(b, s)]
    overhead = [x / y for x, y in zip(b, d)]
    wer_b, wer_s = wer(reference, texts["worker, batched (default)"]), wer(reference, texts["worker, sequential loop"])
    print(f"\nbatched / sequential (worker): {statistics.median(speedup):.2f}x"
          f" (rounds {min(speedup):.2f}-{max(speedup):.2f}; target >= 1.3)", flush=True)
    print(f"worker / batched pipeline called directly: {statistics.median(overhead):.2f}"
          f" (rounds {min(overhead):.2f}-{max(overhead):.2f}; target >= 0.9)")
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
    print(f"load average after: {os.getloadavg()[0]:.2f} (above ~0.5 other work shares the cores)")
    ok = (statistics.median(speedup) >= 1.3 and statistics.median(overhead) >= 0.9
          and wer_b <= wer_s + 0.02)
    print("targets:", "ok" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
