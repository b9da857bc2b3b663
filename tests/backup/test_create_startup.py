"""What `opsctl backup create` loads before pg_dump starts (issue 24: its fixed start-up cost).

A fresh interpreter runs the console command with pg_dump's start (postgres.Dump) replaced
by a probe that writes the modules loaded at that moment and ends the process: no server is
needed, and no timing is asserted, only which packages were imported.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys

# each costs 0.02-0.2 s of a core to import, and none is needed to start pg_dump: the
# repository (boto3 for s3://), the key's AES-GCM, psycopg, Rich (its consoles and log
# handler are made at first use), Kubernetes
HEAVY = ("kubernetes", "boto3", "botocore", "cryptography", "psycopg", "rich", "zstandard", "pulumi",
         "opsctl.backup.catalog", "opsctl.backup.repository")

PROBE = """
import json, os, sys
import opsctl.backup.postgres as pgb

where = sys.argv[1]

def probe(self, url):
    with open(where, "w") as out:
        json.dump(sorted(sys.modules), out)
    os._exit(0)

pgb.Dump.__init__ = probe
sys.argv = ["opsctl", "backup", "create", "--env", "bench", "--type", "db", "--json"]
from opsctl.cli import main
main()
"""


def test_backup_create_starts_pg_dump_before_loading_heavy_packages(tmp_path):
    (tmp_path / "opsctl.yaml").write_text(json.dumps({"version": 1, "environments": {"bench": {
        "platform": "kubernetes", "database": {"url_env": "BENCH_DATABASE_URL"},
        "backup": {"repository": f"file://{tmp_path / 'repo'}"}}}}))
    env = {"PATH": "/usr/bin:/bin", "OPSCTL_ROOT": str(tmp_path), "CI": "true",
           "BENCH_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere",
           "OPSCTL_BACKUP_KEY": base64.b64encode(b"k" * 32).decode()}
    seen = tmp_path / "modules.json"
    result = subprocess.run([sys.executable, "-c", PROBE, str(seen)], env=env, capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0 and seen.exists(), result.stderr[-2000:]
    loaded = json.loads(seen.read_text())
    assert "opsctl.config" in loaded  # the probe ran where pg_dump starts: after the config was read
    early = sorted({m for m in loaded for h in HEAVY if m == h or m.startswith(h + ".")})
    assert early == [], f"imported before pg_dump starts: {early}"


LOGS = """
import logging, sys
from opsctl import output
output.setup_logging("text")
before = sorted(m for m in sys.modules if m == "rich" or m.startswith("rich."))
logging.getLogger("opsctl.backup").warning("dumping database %s", "shop")
print(before, "rich.logging" in sys.modules)
"""


def test_rich_loads_at_the_first_log_record_and_the_record_still_reaches_stderr():
    """Text logs go through Rich's handler, made when the first record arrives: setting up
    logging (every command does, before pg_dump starts) imports no Rich module. Where stderr
    is no terminal (a CI log) a record is one plain line, never wrapped nor folded: Rich wrapped
    a path at 80 columns in two there. FORCE_COLOR makes Rich take stderr for a terminal."""
    import os

    tty = subprocess.run([sys.executable, "-c", LOGS], capture_output=True, text=True,
                         env={**os.environ, "FORCE_COLOR": "1"})
    assert tty.returncode == 0, tty.stderr[-2000:]
    assert tty.stdout.split() == ["[]", "True"]
    assert "dumping database shop" in tty.stderr
    plain = subprocess.run([sys.executable, "-c", LOGS + "logging.getLogger('opsctl').warning('x' * 200)\n"],
                           capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                if k not in ("FORCE_COLOR", "TTY_INTERACTIVE")})
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert plain.stdout.split() == ["[]", "False"]  # no Rich at all for a CI log
    assert plain.stderr.splitlines() == ["WARNING  dumping database shop", "WARNING  " + "x" * 200], plain.stderr
