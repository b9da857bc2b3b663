#!/usr/bin/env bash
# The main job on the embedded platform, end to end. Each capability extends it.
set -euo pipefail
cd "$(dirname "$0")/.."
OPSCTL=.venv/bin/opsctl
$OPSCTL doctor
$OPSCTL version
