"""A year of history slows nothing down (issue 27): each command at N = 10 and N = 1,000
backups in the same run, whole CLI, on both kinds of repository: s3:// (the default kind;
an S3 endpoint over HTTP, moto server) and file:// (local disk), encrypted.

Targets (ratio of the medians, N=1000 / N=10): the health sweep (`opsctl health --check
backup`) and `backup create` <= 1.2x; `backup list --limit 20` <= 1.5x; prune's time per
removed backup <= 1.2x. Prune is measured two ways, both printed:
- "prune --keep-last 5" is the issue's definition: a fresh copy of the built N-backup
  repository per round (file://: a copy of the fixture's folder; s3://: server-side
  CopyObject of every object of the fixture's bucket into an empty bucket of its own, so
  no listing of the measured repository ever sees the template), its index brought up to
  date by an untimed `backup list` (a folder copy changes the inodes the index's stamps
  hold), then the timed `backup prune --keep-last 5` removing N-5; the figure is that time
  divided by N-5. Prune's one full scan (every manifest's stamps against the index: the
  trust rule) is part of it, as it is of every real prune.
- "prune --keep-last N-3" removes REMOVED_EACH backups per run from the fixture itself, so
  the fixed cost of that one scan weighs N/3 times more per removed backup at N=1000.
The two sizes are measured in alternation (round 1 at N=10, round 1
at N=1000, round 2 ...) so a load that comes and goes lands on both; every figure is printed
with its spread (min-max of the rounds) so a reader can tell noise from change.

The fixture: one real `backup create --type redis`, then copies of its folder under new ids
with manifests re-sealed by the key (what N real creates would leave, in a fraction of the
time), then one full `backup list` that builds the catalog index. Its build time is printed.
Redis is a private embedded server.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OPSCTL = Path(sys.executable).parent / "opsctl"
ROUNDS = 5
SIZES = (10, 1000)
KINDS = ("s3", "file")
REMOVED_EACH = 3  # prune rounds remove this many each (PRUNE_ROUNDS * REMOVED_EACH < the N=10 fixture)
PRUNE_ROUNDS = 4
ISSUE_ROUNDS = 3  # rounds of the issue's prune (--keep-last 5 on a fresh copy), sizes alternated
ISSUE_KEEP = 5


def run(argv: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([str(OPSCTL), *argv], env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"opsctl {' '.join(argv)} failed: {result.stderr[-500:]}")
    return took, result.stdout


def _copy_of(m, bid: str, when: dt.datetime, key):
    c = m.model_copy(deep=True)
    c.id, c.created_at, c.finished_at = bid, when, when
    c.redis.object.name = f"{bid}/redis.rdb.zst"
    c.sign(key)
    return c.to_bytes()


def grow_file(root: Path, key, template: str, n: int, start: dt.datetime) -> None:
    """Copies of backup `template` under n new ids (one a minute from `start`), sealed by the key."""
    from opsctl.backup import catalog
    from opsctl.backup import manifest as mf

    m = mf.parse((root / template / mf.NAME).read_bytes(), template)
    for i in range(n):
        when = start + dt.timedelta(minutes=i)
        bid = catalog.new_id(when)
        folder = root / bid
        shutil.copytree(root / template, folder)
        for name in ("verified.json", "verify-failed.json"):
            (folder / name).unlink(missing_ok=True)
        (folder / mf.NAME).write_bytes(_copy_of(m, bid, when, key))


def grow_s3(s3, bucket: str, prefix: str, key, template: str, n: int, start: dt.datetime) -> None:
    """The same on S3: server-side copies of the template's objects, a re-sealed manifest each."""
    from concurrent.futures import ThreadPoolExecutor

    from opsctl.backup import catalog
    from opsctl.backup import manifest as mf

    base = f"{prefix}/{template}/"
    m = mf.parse(s3.get_object(Bucket=bucket, Key=base + mf.NAME)["Body"].read(), template)
    objects = [o["Key"][len(base):] for o in s3.list_objects_v2(Bucket=bucket, Prefix=base)["Contents"]]
    objects = [o for o in objects if o not in (mf.NAME, "verified.json", "verify-failed.json")]

    def one(i: int) -> None:
        when = start + dt.timedelta(minutes=i)
        bid = catalog.new_id(when)
        for o in objects:
            s3.copy_object(Bucket=bucket, Key=f"{prefix}/{bid}/{o}", CopySource={"Bucket": bucket, "Key": base + o})
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{bid}/{mf.NAME}", Body=_copy_of(m, bid, when, key))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))


def _health(env: dict, name: str) -> float:
    start = time.perf_counter()
    subprocess.run([str(OPSCTL), "health", "--env", name, "--check", "backup", "--json"], env=env,
                   capture_output=True)  # exit code is the Nagios status, not a failure
    return time.perf_counter() - start


def _prune(env: dict, name: str, total: int) -> float:
    took, out = run(["backup", "prune", "--env", name, "--keep-last", str(total - REMOVED_EACH), "--yes",
                     "--json"], env)
    assert len(json.loads(out)["removed"]) == REMOVED_EACH, out
    return took / REMOVED_EACH


def _copy_bucket(s3, source: str, target: str) -> None:
    """Every object of bucket `source` copied server-side (CopyObject) into the empty bucket `target`."""
    from concurrent.futures import ThreadPoolExecutor

    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=source)
            for o in page.get("Contents", [])]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.copy_object(Bucket=target, Key=k, CopySource={"Bucket": source, "Key": k}),
                      keys))


def _empty_bucket(s3, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def measure_issue_prune(env: dict, kind: str, tmp: Path, s3) -> dict[int, list[float]]:
    """{N: [seconds per removed backup]}: `backup prune --keep-last 5` on a fresh copy of
    the N-backup fixture each round (the copy and an index refresh untimed)."""
    times: dict[int, list[float]] = {n: [] for n in SIZES}
    for _ in range(ISSUE_ROUNDS):
        for n in SIZES:
            name = f"{kind}{n}p"
            if kind == "file":
                shutil.rmtree(tmp / f"prune{n}", ignore_errors=True)
                shutil.copytree(tmp / f"repo{n}", tmp / f"prune{n}", symlinks=True)
            else:
                _empty_bucket(s3, f"bench-p{n}")
                _copy_bucket(s3, f"bench-n{n}", f"bench-p{n}")
            listed = json.loads(run(["backup", "list", "--env", name, "--json"], env)[1])  # index up to date
            assert listed["total"] == n, listed["total"]
            took, out = run(["backup", "prune", "--env", name, "--keep-last", str(ISSUE_KEEP), "--yes", "--json"],
                            env)
            assert len(json.loads(out)["removed"]) == n - ISSUE_KEEP, out
            times[n].append(took / (n - ISSUE_KEEP))
    return times


def measure(env: dict, kind: str) -> dict[str, dict[int, list[float]]]:
    """{command: {N: [seconds per round]}}, the sizes alternating round by round."""
    times: dict[str, dict[int, list[float]]] = {k: {n: [] for n in SIZES}
                                                for k in ("health", "list20", "create", "prune")}
    for _ in range(ROUNDS):
        for n in SIZES:
            name = f"{kind}{n}"
            times["health"][n].append(_health(env, name))
            times["list20"][n].append(run(["backup", "list", "--env", name, "--limit", "20", "--json"], env)[0])
            times["create"][n].append(run(["backup", "create", "--env", name, "--type", "redis", "--json"], env)[0])
    totals = {n: json.loads(run(["backup", "list", "--env", f"{kind}{n}", "--json"], env)[1])["total"]
              for n in SIZES}
    for _ in range(PRUNE_ROUNDS):
        for n in SIZES:
            times["prune"][n].append(_prune(env, f"{kind}{n}", totals[n]))
            totals[n] -= REMOVED_EACH
    return times


def main() -> int:
    from opsctl.backup.keys import parse
    from opsctl.local import procs
    from opsctl.local import redis as rd
    from opsctl.local import s3 as s3mod

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    port, s3port = procs.free_port(), procs.free_port()
    pid = rd.start(tmp / "redis", port, tmp / "redis.log")
    s3pid = s3mod.start(s3port, tmp / "moto.log")
    try:
        key_text = base64.b64encode(os.urandom(32)).decode()
        key = parse(key_text, "bench")
        endpoint = s3mod.endpoint(s3port)
        s3mod.ensure_buckets(endpoint, [f"bench-{b}{n}" for n in SIZES for b in ("n", "p")])
        envs = {}
        for n in SIZES:
            common = {"platform": "kubernetes", "redis": {"url_env": "BENCH_REDIS_URL"},
                      "thresholds": {"backup_age_hours": 366 * 24}}
            envs[f"file{n}"] = {**common, "backup": {"repository": f"file://{tmp / f'repo{n}'}"}}
            envs[f"s3{n}"] = {**common, "aws": {"endpoint_url": endpoint},
                              "backup": {"repository": f"s3://bench-n{n}/opsctl"}}
            # the issue's prune: a fresh copy of the fixture per round (measure_issue_prune)
            envs[f"file{n}p"] = {**common, "backup": {"repository": f"file://{tmp / f'prune{n}'}"}}
            envs[f"s3{n}p"] = {**common, "aws": {"endpoint_url": endpoint},
                               "backup": {"repository": f"s3://bench-p{n}/opsctl"}}
        (tmp / "opsctl.yaml").write_text(json.dumps({"version": 1, "environments": envs}))
        env = dict(os.environ, OPSCTL_ROOT=str(tmp), BENCH_REDIS_URL=rd.url(port), CI="true",
                   OPSCTL_BACKUP_KEY=key_text, **s3mod.CREDENTIALS)
        import redis

        redis.Redis.from_url(rd.url(port)).mset({f"k{i}": f"v{i}" for i in range(1000)})
        s3 = s3mod.client(endpoint)
        build: dict[tuple[str, int], float] = {}
        for kind in KINDS:
            for n in SIZES:
                began = time.perf_counter()
                name = f"{kind}{n}"
                made = json.loads(run(["backup", "create", "--env", name, "--type", "redis", "--json"], env)[1])
                start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=60)
                if kind == "file":
                    grow_file(tmp / f"repo{n}", key, made["id"], n - 1, start)
                else:
                    grow_s3(s3, f"bench-n{n}", "opsctl", key, made["id"], n - 1, start)
                run(["backup", "list", "--env", name, "--json"], env)  # reads every manifest, builds the index
                build[kind, n] = time.perf_counter() - began
        issue_prune = {kind: measure_issue_prune(env, kind, tmp, s3) for kind in KINDS}  # before measure() grows them
        results = {kind: measure(env, kind) for kind in KINDS}
        for kind in KINDS:
            results[kind]["prune5"] = issue_prune[kind]
        # the issue's targets; "prune" (3 removed per run) has none: it divides the one full
        # trusted scan by 3, so it shows that scan's growth, printed for the reader
        targets = {"health": 1.2, "create": 1.2, "list20": 1.5, "prune5": 1.2, "prune": None}
        labels = {"health": "opsctl health --check backup", "create": "backup create --type redis",
                  "list20": "backup list --limit 20",
                  "prune5": f"prune --keep-last {ISSUE_KEEP} (issue), per removed",
                  "prune": f"prune --keep-last N-{REMOVED_EACH}, per removed"}
        ok = True
        print(f"bench_scale: N = {SIZES[0]} and N = {SIZES[1]} backups, encrypted, whole CLI, medians of {ROUNDS} "
              f"rounds (prune --keep-last {ISSUE_KEEP}: {ISSUE_ROUNDS} rounds on a fresh copy of the fixture, "
              f"N-{ISSUE_KEEP} removed each; prune --keep-last N-{REMOVED_EACH}: {PRUNE_ROUNDS} rounds, "
              f"{REMOVED_EACH} removed each; min-max), sizes alternated")
        for kind in KINDS:
            print(f"  {kind}://  fixture build: N={SIZES[0]} {build[kind, SIZES[0]]:.1f} s, "
                  f"N={SIZES[1]} {build[kind, SIZES[1]]:.1f} s")
            for k, target in targets.items():
                lo, hi = (results[kind][k][n] for n in SIZES)
                ratio = statistics.median(hi) / statistics.median(lo)
                ok &= target is None or ratio <= target
                judged = f"target <= {target}" if target is not None else "no target: the scan's growth / 3"
                print(f"    {labels[k]:<40} {statistics.median(lo):.3f} s ({min(lo):.3f}-{max(lo):.3f}) -> "
                      f"{statistics.median(hi):.3f} s ({min(hi):.3f}-{max(hi):.3f})  ratio {ratio:.2f} "
                      f"({judged})")
        return 0 if ok else 1
    finally:
        rd.stop(pid, port)
        procs.stop(s3pid)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
