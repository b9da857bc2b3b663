#!/usr/bin/env bash
# The main job on the embedded platform, end to end: bring the platform up, transcribe
# through the router, deploy a new release blue-green under traffic, back up and verify,
# sweep health, run a short load test with SLO gates, and run a runbook.
set -euo pipefail
cd "$(dirname "$0")/.."
OPSCTL=.venv/bin/opsctl
PY=.venv/bin/python
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

mkdir -p .opsctl
[ -s .opsctl/demo-backup-key ] || $PY -c "from opsctl.backup.keys import generate; print(generate())" > .opsctl/demo-backup-key
export OPSCTL_BACKUP_KEY="$(cat .opsctl/demo-backup-key)"

step "what this machine has"
$OPSCTL doctor

step "the embedded platform: PostgreSQL, Redis, S3 (moto), Caddy and the worker on 127.0.0.1"
$OPSCTL local up
$OPSCTL local status
ROUTER=$($OPSCTL local status --json | $PY -c "import json,sys; print(next(f'http://127.0.0.1:{c[\"port\"]}' for c in json.load(sys.stdin)['components'] if c['name']=='router'))")

step "a transcription through the router ($ROUTER)"
$PY - "$ROUTER" <<'PY'
import sys, httpx
with open("tests/worker/data/weather.wav", "rb") as audio:
    r = httpx.post(f"{sys.argv[1]}/v1/audio/transcriptions", files={"file": audio},
                   data={"model": "whisper-1", "response_format": "verbose_json"}, timeout=120)
r.raise_for_status()
doc = r.json()
print(f"color {r.headers['x-worker-color']}, {doc['duration']:.1f}s of audio: {doc['text'].strip()}")
PY

step "a blue-green deploy of a new release: health-gated, automatic rollback on failure"
$OPSCTL deploy --image "transcription-worker:demo-$(date +%s)"
$OPSCTL status

step "a backup: pg_dump + Redis RDB + audio, zstd, AES-256-GCM, into the S3 repository"
$OPSCTL backup create --type full --label demo
$OPSCTL backup list
$OPSCTL backup verify "$($OPSCTL backup list --json | $PY -c "import json,sys; print(max(json.load(sys.stdin)['backups'], key=lambda b: b['created_at'])['id'])")"

step "a health sweep (Nagios exit codes)"
$OPSCTL health --skip host

step "a short load test with SLO gates"
$OPSCTL loadtest run --profile light --users 2 --duration 10s --slo "error_rate<5%,p95<30000ms"

step "a runbook, as CI runs it"
$OPSCTL runbook run health-sweep -p skip=host --yes

step "done: the platform keeps running; 'opsctl local down' stops it (data kept)"
