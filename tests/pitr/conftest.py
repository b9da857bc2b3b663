"""Fixtures of the PITR tests; they live in pitr_support so tests can import its helpers
under a name no other folder uses (two folders importing `conftest` collide)."""

from pitr_support import pitr  # noqa: F401
