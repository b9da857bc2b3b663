"""Fixtures of the worker tests; they live in worker_support so tests can import its helpers
under a name no other folder uses (two folders importing `conftest` collide)."""

from worker_support import api_key, http, model_dir, worker  # noqa: F401
