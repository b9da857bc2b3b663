"""Fixtures of the load-test tests; they live in loadtest_support so tests can import its helpers
under a name no other folder uses (two folders importing `conftest` collide)."""

from loadtest_support import http_server, reports  # noqa: F401
