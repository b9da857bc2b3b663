"""Fixtures of the backup tests; they live in backup_support so tests can import its helpers
under a name no other folder uses (two folders importing `conftest` collide)."""

from backup_support import _seed, backup_envs, benv, pg15, seeded  # noqa: F401
