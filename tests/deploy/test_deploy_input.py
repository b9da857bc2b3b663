"""Deploy input is checked up front, the same way by every front door (breaker 37 G4, G5):
`--image` against the distribution reference grammar (a tag required), and `deploy --dry-run`
refusing exactly what `deploy` refuses. Bad input is one line, exit 2, before any driver is
built: a driver that fails the test when it is touched stands in for the platform."""

from __future__ import annotations

import json

import pytest

from opsctl.cli import app
from opsctl.deploy.model import ColorState, Release

DIGEST = "sha256:" + "0123456789abcdef" * 4


class StandIn:
    """A driver with blue serving 1.0.0: enough for a plan; anything a deploy would change fails."""

    name = "local"

    def active_color(self):
        return "blue"

    def colors(self):
        return {"blue": ColorState("blue", "1.0.0", True, True), "green": ColorState("green", None, False, False)}

    def render(self, release, color):
        return f"WORKER_VERSION={release.version} on {color}"

    def __getattr__(self, name):
        raise AssertionError(f"the deploy went as far as driver.{name}")


@pytest.fixture
def drivers(ops_root, monkeypatch) -> list:
    """The drivers built during the test (each a StandIn)."""
    built = []

    def driver_for(project, env):
        built.append(StandIn())
        return built[-1]

    monkeypatch.setattr("opsctl.deploy.drivers.driver_for", driver_for)
    return built


def _refused(runner, args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (args, result.exit_code, result.output, result.exception)
    line = result.stderr.strip()
    assert line.count("\n") == 0 and "Traceback" not in result.output, result.output
    assert "\x1b" not in result.output and "\r" not in result.output  # escapes shown, never run
    return line


@pytest.mark.parametrize("image, expected", [
    ("worker:v2\x1b[7mINV\rX", r"contains the control character '\x1b'"),
    ("worker:[/]", "is not an image reference"),
    ("worker", "has no tag"),
    (f"worker@{DIGEST}", "has no tag"),
    ("worker:", "is not an image reference: the tag ''"),
    ("worker:.1", "the tag '.1'"),
    ("worker:" + "1" * 129, "the tag"),
    ("Worker:1.0", "the name 'Worker' must be lowercase"),
    ("-worker:1.0", "the name '-worker'"),
    ("reg.example.com:port/worker:1.0", "the name"),
    ("worker:1.0@sha256:abc", "the part after '@' must be a digest"),
    ("worker:1.0@sha256:" + "A" * 64, "lowercase hex"),
    ("worker:1.0 ", "contains a space"),
    (" ", "--image is empty"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_an_image_that_is_no_tagged_reference_is_refused_before_anything(runner, drivers, image, expected, dry_run):
    line = _refused(runner, ["deploy", "--image", image, "--no-analysis"] + (["--dry-run"] if dry_run else []))
    assert expected in line and line.startswith("opsctl: error: --image"), line
    assert "use NAME:TAG" in line or "add it, e.g. worker:1.4.0" in line or "digest must be" in line
    assert drivers == []


@pytest.mark.parametrize("image, name, version", [
    ("worker:1.4.0", "worker", "1.4.0"),
    ("registry.example.com:5000/team/transcription-worker:2.0_rc-1", "registry.example.com:5000/team/transcription-worker",
     "2.0_rc-1"),
    (f"ghcr.io/example/worker:1.4.0@{DIGEST}", "ghcr.io/example/worker", "1.4.0"),
    ("localhost:5000/a__b.c-d/w:Latest", "localhost:5000/a__b.c-d/w", "Latest"),
    ("[::1]:5000/worker:1", "[::1]:5000/worker", "1"),
])
def test_a_tagged_reference_is_taken_with_its_tag_as_the_version(image, name, version):
    release = Release.parse(image, [])
    assert (release.image, release.name, release.version) == (image, name, version)


def test_a_dry_run_of_a_pinned_reference_plans_its_tag(runner, drivers):
    result = runner.invoke(app, ["deploy", "--image", f"worker:1.4.0@{DIGEST}", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["version"] == "1.4.0" and plan["image"] == f"worker:1.4.0@{DIGEST}"
    assert plan["manifests"] == "WORKER_VERSION=1.4.0 on green"


@pytest.mark.parametrize("args, expected", [
    (["--strategy", "nope"], "--strategy nope: use blue-green or rolling"),
    (["--load-gate", "p95<"], "--load-gate: bad term 'p95<'"),
    (["--load-gate", "p95<nanms"], "--load-gate: bad term 'p95<nanms'"),
    (["--load-gate", " "], "--load-gate is empty"),
    (["--load-gate", "p95<100ms", "--load-gate-duration", "soon"], "--load-gate-duration: 'soon' is not a duration"),
    (["--set", "colour=red"], "unknown worker setting"),
])
def test_a_dry_run_refuses_exactly_what_the_deploy_refuses(runner, drivers, args, expected):
    """A CI job validating with --dry-run must not pass what the deploy then refuses."""
    real = _refused(runner, ["deploy", "--image", "worker:2.0.0", *args])
    dry = _refused(runner, ["deploy", "--image", "worker:2.0.0", "--dry-run", *args])
    assert dry == real and expected in real, (dry, real)
    assert drivers == []


@pytest.mark.parametrize("to, expected", [
    ("", "--to is empty; give a version"),
    ("  ", "--to is empty"),
    ("1.0\x1b[7m", r"--to '1.0\x1b[7m' is not a version"),
    ("worker:1.0", "--to 'worker:1.0' is not a version"),
])
def test_rollback_to_an_empty_or_impossible_version_is_refused_before_anything(runner, drivers, to, expected):
    line = _refused(runner, ["rollback", "--to", to])
    assert expected in line, line
    assert drivers == []
