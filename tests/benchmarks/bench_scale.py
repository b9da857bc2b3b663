"""A year of history slows nothing down (issue 27): each command at N = 10 and N = 1,000
backups in the same run, whole CLI, medians of 3, and the ratio N=1000 / N=10.

Targets: the health sweep (`opsctl health --check backup`) and `backup create` <= 1.2x;
`backup list --limit 20` <= 1.5x; prune's time per removed backup <= 1.2x. The repository
is file:// on local disk, encrypted; Redis is a private embedded server.

The fixture: one real `backup create --type redis`, then copies of its folder under new ids
with manifests re-sealed by the key (what N real creates would leave, in a fraction of the
time), then one `backup list` that builds the catalog index. Its build time is printed.
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
ROUNDS = 3


def run(argv: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([str(OPSCTL), *argv], env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"opsctl {' '.join(argv)} failed: {result.stderr[-500:]}")
    return took, result.stdout


def grow(root: Path, key_text: str, template: str, n: int, start: dt.datetime) -> None:
    """Copies of backup `template` under n new ids (one a minute from `start`), sealed by the key."""
    from opsctl.backup import catalog
    from opsctl.backup import manifest as mf
    from opsctl.backup.keys import parse

    key = parse(key_text, "bench")
    m = mf.parse((root / template / mf.NAME).read_bytes(), template)
    for i in range(n):
        when = start + dt.timedelta(minutes=i)
        bid = catalog.new_id(when)
        folder = root / bid
        shutil.copytree(root / template, folder)
        for name in ("verified.json", "verify-failed.json"):
            (folder / name).unlink(missing_ok=True)
        c = m.model_copy(deep=True)
        c.id, c.created_at, c.finished_at = bid, when, when
        c.redis.object.name = f"{bid}/redis.rdb.zst"
        c.sign(key)
        (folder / mf.NAME).write_bytes(c.to_bytes())


def measure(env: dict, name: str) -> dict:
    out: dict[str, float] = {}
    out["health"] = statistics.median(_health(env, name) for _ in range(ROUNDS))
    out["list20"] = statistics.median(run(["backup", "list", "--env", name, "--limit", "20", "--json"], env)[0]
                                      for _ in range(ROUNDS))
    out["create"] = statistics.median(run(["backup", "create", "--env", name, "--type", "redis", "--json"], env)[0]
                                      for _ in range(ROUNDS))
    return out


def _health(env: dict, name: str) -> float:
    start = time.perf_counter()
    subprocess.run([str(OPSCTL), "health", "--env", name, "--check", "backup", "--json"], env=env,
                   capture_output=True)  # exit code is the Nagios status, not a failure
    return time.perf_counter() - start


def prune_per_backup(env: dict, name: str, removed_each: int = 3) -> float:
    listed = json.loads(run(["backup", "list", "--env", name, "--json"], env)[1])
    total = listed["total"]
    times = []
    for _ in range(ROUNDS):
        total -= removed_each
        took, out = run(["backup", "prune", "--env", name, "--keep-last", str(total), "--yes", "--json"], env)
        assert len(json.loads(out)["removed"]) == removed_each, out
        times.append(took / removed_each)
    return statistics.median(times)


def main() -> int:
    from opsctl.local import procs
    from opsctl.local import redis as rd

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    port = procs.free_port()
    pid = rd.start(tmp / "redis", port, tmp / "redis.log")
    try:
        key = base64.b64encode(os.urandom(32)).decode()
        envs = {}
        for n in (10, 1000):
            envs[f"n{n}"] = {"platform": "kubernetes", "redis": {"url_env": "BENCH_REDIS_URL"},
                             "backup": {"repository": f"file://{tmp / f'repo{n}'}"},
                             "thresholds": {"backup_age_hours": 1e6}}
        (tmp / "opsctl.yaml").write_text(json.dumps({"version": 1, "environments": envs}))
        env = dict(os.environ, OPSCTL_ROOT=str(tmp), BENCH_REDIS_URL=rd.url(port), CI="true", OPSCTL_BACKUP_KEY=key)
        import redis

        r = redis.Redis.from_url(rd.url(port))
        r.mset({f"k{i}": f"v{i}" for i in range(1000)})
        results, build = {}, {}
        for n in (10, 1000):
            began = time.perf_counter()
            made = json.loads(run(["backup", "create", "--env", f"n{n}", "--type", "redis", "--json"], env)[1])
            grow(tmp / f"repo{n}", key, made["id"], n - 1,
                 dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=60))
            run(["backup", "list", "--env", f"n{n}", "--limit", "1"], env)  # builds the index
            build[n] = time.perf_counter() - began
            results[n] = measure(env, f"n{n}")
            results[n]["prune"] = prune_per_backup(env, f"n{n}")
        print(f"bench_scale: N = 10 and N = 1000 backups (file://, encrypted), whole CLI, medians of {ROUNDS}")
        print(f"  fixture build: N=10 {build[10]:.1f} s, N=1000 {build[1000]:.1f} s")
        targets = {"health": 1.2, "create": 1.2, "list20": 1.5, "prune": 1.2}
        labels = {"health": "opsctl health --check backup", "create": "backup create --type redis",
                  "list20": "backup list --limit 20", "prune": "prune, per removed backup"}
        ok = True
        for k, target in targets.items():
            ratio = results[1000][k] / results[10][k]
            ok &= ratio <= target
            print(f"  {labels[k]:<30} {results[10][k]:.3f} s -> {results[1000][k]:.3f} s  ratio {ratio:.2f} "
                  f"(target <= {target})")
        return 0 if ok else 1
    finally:
        rd.stop(pid, port)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
