"""Helpers of the stacks/ tests: the program's path, test arguments, one component under the mocks."""

from __future__ import annotations

import sys
from pathlib import Path

STACKS = Path(__file__).resolve().parents[2] / "stacks"
if str(STACKS) not in sys.path:
    sys.path.insert(0, str(STACKS))

from transcribe_infra import offline  # noqa: E402

KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/test"
AZS = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
TAGS = {"project": "transcribe", "environment": "test", "managed-by": "pulumi"}


def run_component(build) -> offline.OfflineRun:
    """Run `build()` (which creates one component and returns its outputs) under the mocks."""
    return offline.run(build, {"aws:region": "eu-west-1"}, stack="test")
