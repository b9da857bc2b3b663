"""The pulumi CLI (and the language host and plugins it starts, which inherit its whole
environment) gets none of opsctl's own secrets (breaker 43 S15: the backup key and a
database URL with its password were in every pulumi child's environment). What pulumi needs
stays: the AWS and Pulumi credentials. A stand-in `pulumi` (the real CLI is not installable
here) writes the environment it was given and fails, as a pulumi without a backend does."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from opsctl.cli import app

REPO = Path(__file__).resolve().parents[2]

STAND_IN = """#!{python}
import json, os, sys
with open({record!r}, "a") as f:
    f.write(json.dumps({{"args": sys.argv[1:], "env": dict(os.environ)}}) + "\\n")
if sys.argv[1:2] == ["version"]:
    print("v{version}")
    sys.exit(0)
print("error: no backend: run 'pulumi login'", file=sys.stderr)
sys.exit(255)
"""


def test_pulumi_children_get_no_opsctl_secret_but_keep_cloud_credentials(tmp_path, runner, monkeypatch):
    from importlib.metadata import version

    (tmp_path / "bin").mkdir()
    record = tmp_path / "env.jsonl"
    cli = tmp_path / "bin" / "pulumi"
    cli.write_text(STAND_IN.format(python=sys.executable, record=str(record), version=version("pulumi")))
    cli.chmod(0o755)
    secrets = {"OPSCTL_BACKUP_KEY": "S0tLS0tLS0tLS0tLS0tLS0tLS0tLS0tLS0tLS0tLS0s=",
               "STAGING_DATABASE_URL": "postgresql://transcribe:DBPASSWORDsecret99@127.0.0.1:1/transcribe",
               "OPSCTL_WORKER_API_KEY": "WkApiKeySecret5555",
               # another environment's (breaker 44 T2: only the selected one's were withheld)
               "PRODUCTION_DATABASE_URL": "postgresql://transcribe:PRODPASSWORD77@10.0.0.1:5432/transcribe",
               "PRODUCTION_REDIS_URL": "rediss://:PRODREDIS88@10.0.0.2:6379/0"}
    kept = {"AWS_SECRET_ACCESS_KEY": "awsSecretForPulumi", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
            "PULUMI_CONFIG_PASSPHRASE": "passphrase-for-state"}
    for name, value in {**secrets, **kept}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PULUMI_BACKEND_URL", raising=False)
    r = runner.invoke(app, ["--root", str(REPO), "infra", "preview", "--env", "staging"])
    assert r.exit_code == 2, r.output
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(calls) >= 2, calls  # `pulumi version`, then the stack's own commands
    for call in calls:
        assert not set(secrets) & set(call["env"]), (call["args"], sorted(set(secrets) & set(call["env"])))
        assert all(call["env"].get(name) == value for name, value in kept.items()), call["args"]
    for name, value in secrets.items():  # given back to this process afterwards
        assert os.environ[name] == value
