"""Point-in-time recovery: continuous WAL archiving, physical base backups, restore to a time.

The pieces, each a module:
- `layout`: where WAL and base backups live in the backup repository, and how each object is
  named and authenticated (segment arithmetic, timelines);
- `archive`: PostgreSQL's `archive_command` (a bounded local queue) and the archiver that
  drains the queue into the repository, compressed, sealed and tagged;
- `base`: full and incremental base backups (`pg_basebackup`, `--incremental`);
- `chain`: what the repository holds: base backup chains, WAL, gaps, the recoverable window;
- `restore`: restore to a time or an LSN into a new data directory, replay, check, swap.

Nothing here is imported by `opsctl --help`; the package itself imports nothing heavy.
"""
