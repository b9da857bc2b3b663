"""The Pulumi program of stacks/, run against Pulumi's mocks (transcribe_infra.offline).

The whole stack runs once per configuration (staging, production) per session; component
tests build one component each with arguments they choose (stacks_support.run_component).
"""

from __future__ import annotations

import pytest
from stacks_support import STACKS, offline


@pytest.fixture(scope="session")
def staging():
    return offline.run_stack(STACKS, "staging")


@pytest.fixture(scope="session")
def production():
    return offline.run_stack(STACKS, "production")
