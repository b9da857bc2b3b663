"""`opsctl backup create --type db` against pg_dump itself, on a database of at least 200 MB.

Everything runs in the same process tree on the same machine, and every figure is a ratio
against a baseline measured in this run (medians of ROUNDS runs, alternated):

- backup / `pg_dump -Fc -Z0 > /dev/null`            target <= 1.3 (compress+encrypt+store ~free)
- backup / `pg_dump -Fc > file` (default gzip)      target <  1.0 (faster, while also encrypting)
- compression ratio (dump bytes / stored bytes)
- `opsctl restore --jobs 2` / `--jobs 1`            below 1.0 when pg_restore parallelism helps
- the fixed cost of `backup create`: the same two commands on an empty database (process
  start-up, config, key, repository record, index and manifest writes), the dump's own time
  taken out by its pg_dump baseline

Every series is printed with its median and its spread (min-max over the rounds, and each
round's ratio, its pair having run back to back), so noise shows apart from change. The
database is the size written below (TARGET_MB, ROWS), never enlarged to hide the fixed cost.
opsctl's bytecode is compiled first, as `pip install` and `make install` do: a checkout whose
.pyc files went stale (PYTHONDONTWRITEBYTECODE) would otherwise time Python's compiler.

The repository is file:// on local disk; PostgreSQL is a private embedded server.
"""

from __future__ import annotations

import base64
import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from opsctl import binaries
from opsctl.backup.pipeline import FAST_HASH_LOG, FAST_WINDOW_LOG
from opsctl.backup.postgres import drop_database
from opsctl.local import postgres as pg
from opsctl.local import procs

ROUNDS = 5  # this machine is noisy: 3 rounds moved the median by 0.4
TARGET_MB = 200
OPSCTL = Path(sys.executable).parent / "opsctl"
TABLES = ("events", "transcripts", "jobs")
ROWS = 700_000  # ~450 MB database, ~320 MB dump: big enough that process start-up is not the figure


def generate(url: str) -> int:
    """~150 MB per table of random text and numbers, each with a secondary index."""
    with psycopg.connect(url, autocommit=True) as conn:
        for i, name in enumerate(TABLES):
            conn.execute(f"create table {name} (id bigint primary key, kind int, body text, at timestamptz)")
            conn.execute(f"insert into {name} select g, (random()*50)::int, "
                         "md5(random()::text) || ' ' || md5(random()::text) || ' ' || repeat(chr(97 + g % 26), 40), "
                         
                         f"now() - g * interval '1 second' from generate_series(1, {ROWS}) g")
            conn.execute(f"create index on {name} (kind, at)")
        conn.execute("vacuum analyze")
        conn.execute("checkpoint")  # the fresh data is on disk: no writeback competes with the first rounds
        return conn.execute("select pg_database_size(current_database())").fetchone()[0]


CPU: dict[str, list[float]] = {}  # label -> CPU seconds (user + sys) of each run's process tree


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wall(argv: list[str], env: dict | None = None, stdout=subprocess.DEVNULL, cpu: str | None = None) -> tuple[float, str]:
    """Seconds `argv` took and its stdout; with `cpu`, the CPU seconds of its process tree (it
    and the children it waited for: pg_dump and psql under opsctl; the server's backends are
    not in it) are added to CPU[cpu]. Commands run one at a time, so the children's rusage
    grows by this one's alone."""
    os.sync()  # the previous run's files are on disk: its writeback does not land on this run's clock
    before = _children_cpu()
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=stdout, stderr=subprocess.PIPE, check=False)
    took = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {result.stderr.decode()[-500:]}")
    if cpu:
        CPU.setdefault(cpu, []).append(_children_cpu() - before)
    return took, (result.stdout.decode() if isinstance(result.stdout, bytes) else "")


def spread(runs: list[float]) -> str:
    """median (min-max) of a series, in seconds"""
    return f"{statistics.median(runs):.2f} s ({min(runs):.2f}-{max(runs):.2f})"


def load() -> str:
    """The 1-minute load average: above ~0.5 other work shares the 2 cores, and every wall
    time here moves with it (the CPU seconds move far less)."""
    return f"{os.getloadavg()[0]:.2f}"


def main() -> int:
    import opsctl

    compileall.compile_dir(Path(opsctl.__file__).parent, quiet=1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    port = procs.free_port()
    pid = pg.start(tmp / "data", port, tmp / "postgres.log")
    try:
        url = pg.ensure_database(port, "transcribe", "transcribe").replace("transcribe@", "postgres@", 1)
        size = generate(url)
        assert size >= TARGET_MB * 1e6, f"database only {size / 1e6:.0f} MB"
        empty = pg.ensure_database(port, "empty", "transcribe").replace("transcribe@", "postgres@", 1)
        (tmp / "opsctl.yaml").write_text(json.dumps({"version": 1, "environments": {
            "bench": {"platform": "kubernetes", "database": {"url_env": "BENCH_DATABASE_URL"},
                      "backup": {"repository": f"file://{tmp / 'repo'}"}},
            "empty": {"platform": "kubernetes", "database": {"url_env": "EMPTY_DATABASE_URL"},
                      "backup": {"repository": f"file://{tmp / 'repo-empty'}"}}}}))
        env = dict(os.environ, OPSCTL_ROOT=str(tmp), BENCH_DATABASE_URL=url, EMPTY_DATABASE_URL=empty, CI="true",
                   OPSCTL_BACKUP_KEY=base64.b64encode(os.urandom(32)).decode())
        pg_dump = str(binaries.postgres_tool("pg_dump"))
        plain, gzip, ours, level3, ids, loads = [], [], [], [], [], [load()]
        for _ in range(ROUNDS):
            plain.append(wall([pg_dump, "-Fc", "-Z0", "-d", url], cpu="plain")[0])
            gzip.append(wall([pg_dump, "-Fc", "-f", str(tmp / "gzip.dump"), "-d", url])[0])
            took, out = wall([str(OPSCTL), "backup", "create", "--env", "bench", "--type", "db", "--json"], env,
                             subprocess.PIPE, cpu="ours")
            ours.append(took)
            ids.append(json.loads(out))
            level3.append(wall([str(OPSCTL), "backup", "create", "--env", "bench", "--type", "db",
                                "--compress-level", "3"], env)[0])
            loads.append(load())
        made = ids[-1]
        fixed_plain, fixed_ours = [], []
        for _ in range(ROUNDS):
            fixed_plain.append(wall([pg_dump, "-Fc", "-Z0", "-d", empty])[0])
            fixed_ours.append(wall([str(OPSCTL), "backup", "create", "--env", "empty", "--type", "db"], env)[0])
        restore = {}
        for jobs in (1, 2, 1, 2):
            took, _ = wall([str(OPSCTL), "restore", "--env", "bench", "--id", made["id"], "--components", "db",
                            "--target-db", f"restored_j{jobs}", "--jobs", str(jobs), "--yes"], env)
            restore.setdefault(jobs, []).append(took)
            drop_database(url, f"restored_j{jobs}")  # --target-db restores into a new database
        runs = {"plain": plain, "gzip": gzip, "ours": ours, "level3": level3}
        m = {k: statistics.median(v) for k, v in runs.items()}
        r1, r2 = statistics.median(restore[1]), statistics.median(restore[2])
        gzip_size = (tmp / "gzip.dump").stat().st_size
        print(f"bench_backup: database {size / 1e6:.0f} MB ({len(TABLES)} tables of {ROWS:,} rows), "
              f"dump {made['raw_bytes'] / 1e6:.0f} MB, {ROUNDS} rounds alternated; median (min-max)")
        print(f"  pg_dump -Fc -Z0 > /dev/null      {spread(plain)} (baseline)")
        print(f"  pg_dump -Fc (gzip) > file        {spread(gzip)}, {gzip_size / 1e6:.0f} MB")
        print(f"  opsctl backup create --type db   {spread(ours)}, {made['stored_bytes'] / 1e6:.0f} MB stored "
              f"(zstd level 1, window 2**{FAST_WINDOW_LOG}, hash 2**{FAST_HASH_LOG}; AES-256-GCM; SHA-256)")
        per_round = sorted(o / p for o, p in zip(ours, plain))  # each round's pair ran back to back
        print(f"  ratio vs pg_dump -Z0 >/dev/null  {m['ours'] / m['plain']:.2f} (target <= 1.3); per round "
              f"{per_round[0]:.2f}-{per_round[-1]:.2f} (spread: {' '.join(f'{r:.2f}' for r in per_round)})")
        print(f"  CPU (user+sys), process tree     pg_dump -Z0 {spread(CPU['plain'])}, backup create "
              f"{spread(CPU['ours'])} (the server's backends not counted; on 2 cores this competes with them)")
        print(f"  ratio vs pg_dump -Fc gzip        {m['ours'] / m['gzip']:.2f} (target < 1.0)")
        print(f"  same with --compress-level 3     {spread(level3)}, ratio vs -Z0 {m['level3'] / m['plain']:.2f}")
        print(f"  compression ratio                {made['raw_bytes'] / made['stored_bytes']:.2f} "
              f"(pg_dump gzip: {made['raw_bytes'] / gzip_size:.2f})")
        fixed = statistics.median(fixed_ours) - statistics.median(fixed_plain)
        print(f"  fixed cost of backup create      {fixed:.2f} s = {spread(fixed_ours)} on an empty database "
              f"- {spread(fixed_plain)} for its pg_dump -Z0 ({fixed / m['plain']:.2f} of the ratio)")
        print("  every run (s)                    " + "; ".join(
            f"{k} {' '.join(f'{x:.2f}' for x in v)}" for k, v in runs.items()))
        print(f"  restore --jobs 2 / --jobs 1      {r2:.2f} s / {r1:.2f} s = {r2 / r1:.2f}")
        print(f"  load average (1 min)             {' '.join(loads)} (before, then after each round), "
              f"{load()} at the end; 2 cores")
        ok = m["ours"] / m["plain"] <= 1.3 and m["ours"] / m["gzip"] < 1.0
        return 0 if ok else 1
    finally:
        pg.stop(pid)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
