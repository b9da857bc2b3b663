"""PostgreSQL: the schema, its migration, and the queries on jobs and transcripts.

`jobs` holds one row per asynchronous request; `(api_key_id, idempotency_key)` is unique so
a retried POST finds the row its first attempt made instead of adding one. `transcripts`
holds one verbose_json document per (audio SHA-256, options), the store that identical
audio is answered from. Migrations are numbered, applied under an advisory lock (blue and
green may start together) and recorded in `worker_schema_migrations`, so `migrate` is safe to
run any number of times.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

MIGRATIONS: list[str] = [
    """
    CREATE TABLE transcripts (
        audio_sha256 text NOT NULL,
        options_key  text NOT NULL,
        model        text NOT NULL,
        duration     double precision NOT NULL,
        result       jsonb NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (audio_sha256, options_key)
    );
    CREATE TABLE jobs (
        id              uuid PRIMARY KEY,
        api_key_id      text NOT NULL,
        idempotency_key text,
        status          text NOT NULL
                        CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
        audio_sha256    text NOT NULL,
        audio_key       text NOT NULL,
        audio_bytes     bigint NOT NULL,
        duration        double precision NOT NULL,
        options         jsonb NOT NULL,
        options_key     text NOT NULL,
        deduplicated    boolean NOT NULL DEFAULT false,
        error           text,
        worker          text,
        created_at      timestamptz NOT NULL DEFAULT now(),
        started_at      timestamptz,
        completed_at    timestamptz,
        UNIQUE (api_key_id, idempotency_key)
    );
    CREATE INDEX jobs_status_created ON jobs (status, created_at);
    """,
    # leases (recovery.py): the worker process that owns a queued or running job renews
    # heartbeat_at; a job whose owner stopped renewing is adopted by another worker
    """
    ALTER TABLE jobs ADD COLUMN owner text,
                     ADD COLUMN heartbeat_at timestamptz,
                     ADD COLUMN attempts integer NOT NULL DEFAULT 0;
    UPDATE jobs SET heartbeat_at = coalesce(started_at, created_at) WHERE status IN ('queued', 'running');
    CREATE INDEX jobs_unfinished ON jobs (heartbeat_at) WHERE status IN ('queued', 'running');
    """,
    # request_hash: what an Idempotency-Key was first used for (a reuse with another request
    # is refused); bypass_store + result: a `Cache-Control: no-cache` job is always run by the
    # model and keeps its own transcript instead of reading or writing the shared store
    """
    ALTER TABLE jobs ADD COLUMN request_hash text,
                     ADD COLUMN bypass_store boolean NOT NULL DEFAULT false,
                     ADD COLUMN result jsonb;
    """,
    # OpenAI-style uploads (file_uploads.py): one row per upload, its parts numbered in order
    # of arrival; a part's SHA-256 is unique within its upload, so a part
    # sent twice is stored once
    """
    CREATE TABLE uploads (
        id           text PRIMARY KEY,
        api_key_id   text NOT NULL,
        filename     text NOT NULL,
        bytes        bigint NOT NULL,
        mime_type    text NOT NULL,
        purpose      text NOT NULL,
        status       text NOT NULL CHECK (status IN ('pending', 'completed', 'cancelled', 'expired')),
        s3_key       text NOT NULL,
        s3_upload_id text NOT NULL,
        file_id      text UNIQUE,
        sha256       text,
        created_at   timestamptz NOT NULL DEFAULT now(),
        expires_at   timestamptz NOT NULL,
        completed_at timestamptz
    );
    CREATE TABLE upload_parts (
        id          text PRIMARY KEY,
        upload_id   text NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
        part_number integer NOT NULL,
        etag        text,
        sha256      text NOT NULL,
        bytes       bigint NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        UNIQUE (upload_id, part_number),
        UNIQUE (upload_id, sha256)
    );
    """,
    # presigned uploads: the client PUTs its parts to S3 itself; the worker learns them
    # from S3's ListParts
    """
    ALTER TABLE uploads ADD COLUMN presigned boolean NOT NULL DEFAULT false;
    """,
    # uploads as part objects (file_uploads.py): each part is its own S3 object, assembled
    # at complete by a multipart upload made then, so s3_upload_id is only set on uploads an
    # earlier worker version made (one multipart upload per upload, parts by arrival);
    # idempotency_key: a retried create (same key and Idempotency-Key) finds its upload;
    # parts_swept: a presigned upload's part objects were deleted once its URLs had expired
    # (a client may PUT one after complete or cancel); earlier uploads have none to sweep
    """
    ALTER TABLE uploads ALTER COLUMN s3_upload_id DROP NOT NULL,
                        ADD COLUMN idempotency_key text,
                        ADD UNIQUE (api_key_id, idempotency_key),
                        ADD COLUMN parts_swept boolean NOT NULL DEFAULT false;
    UPDATE uploads SET parts_swept = true;
    """,
    # complete_request: what the complete that completed an upload asked for (its part list's
    # fingerprint and md5), so only that same complete retried is answered 200
    """
    ALTER TABLE uploads ADD COLUMN complete_request text;
    """,
    # part_size: a presigned upload's part size (its part URLs), so a create retried with its
    # Idempotency-Key and another part_size is refused, and a retry's URLs are the first's
    """
    ALTER TABLE uploads ADD COLUMN part_size bigint;
    """,
    # parts_prefix: where the upload's part objects live (NULL: `{s3_key}.parts/`, uploads made
    # before part objects moved under a prefix of their own); claim, claim_owner, claim_until:
    # a complete, cancel or expiry at work on a pending upload ('completing', 'cancelling',
    # 'expiring'), the request or keeper that holds it and until when (renewed while it
    # works; a lapsed claim is a dead worker's, taken over by the next)
    """
    ALTER TABLE uploads ADD COLUMN parts_prefix text,
                        ADD COLUMN claim text,
                        ADD COLUMN claim_owner text,
                        ADD COLUMN claim_until timestamptz;
    """,
    # claim_attempt: how many claims (complete, cancel, expiry) a pending upload has had; a
    # complete assembles into its attempt's own key (file_uploads._attempt_key), so a holder
    # that stalled past its lease never writes the key another's complete records; file_key:
    # the completed file's key (NULL: s3_key, uploads completed before). Attempt 1's key is
    # s3_key, where an earlier version assembled: what it left there is found by attempt 1
    """
    ALTER TABLE uploads ADD COLUMN claim_attempt integer NOT NULL DEFAULT 0,
                        ADD COLUMN file_key text;
    """,
    # the end fence: a statement that moves an upload out of `pending` while another's claim
    # was live when its transaction began, without clearing that claim, fails (55P03). This
    # version's `end_upload` clears the claim it holds in that same statement; a worker of a
    # version before claims (blue-green: both colors share this database) does not know them,
    # and its end of an upload this version holds now fails (its transaction rolls back, its
    # client is told 503 and retries) instead of overruling the holder. A lapsed claim (its
    # worker died) does not fence: any end clears it, so such a version alone (a rollback)
    # still ends every upload
    """
    CREATE FUNCTION uploads_end_fence() RETURNS trigger LANGUAGE plpgsql AS $fence$
    BEGIN
        IF NEW.claim_owner IS NOT NULL AND OLD.claim_until > now() THEN
            RAISE EXCEPTION 'upload % is being ended by its claim holder %', OLD.id, OLD.claim_owner
                USING ERRCODE = 'lock_not_available',
                      HINT = 'only the holder of a live claim ends an upload; retry once it has';
        END IF;
        NEW.claim := NULL;
        NEW.claim_owner := NULL;
        NEW.claim_until := NULL;
        RETURN NEW;
    END
    $fence$;
    CREATE TRIGGER uploads_end_fence BEFORE UPDATE OF status ON uploads FOR EACH ROW
        WHEN (OLD.status = 'pending' AND NEW.status <> 'pending') EXECUTE FUNCTION uploads_end_fence();
    """,
    # error_code: a failed job's reason as the API's error codes name it (breaker 31 F8), beside
    # its message; NULL for failures that have none
    """
    ALTER TABLE jobs ADD COLUMN error_code text;
    """,
    # retention (breaker 46 F3): an ended upload keeps no part rows (deleted at its end; a
    # presigned one's once its URLs expired and were swept), `stored` keeping the bytes they
    # held (its unreceived bytes are refunded from it); `purging`: the keeper is deleting the
    # upload past WORKER_UPLOAD_RETENTION_HOURS (no new job may read its file). The indexes
    # find uploads due and the unfinished jobs that read a file
    """
    ALTER TABLE uploads ADD COLUMN stored bigint,
                        ADD COLUMN purging boolean NOT NULL DEFAULT false;
    CREATE INDEX uploads_ended ON uploads ((coalesce(completed_at, expires_at))) WHERE status <> 'pending';
    CREATE INDEX jobs_unfinished_audio ON jobs (audio_key) WHERE status IN ('queued', 'running');
    """,
    # read_until (breaker 47 F4): a request making a job from the upload's file is reading it
    # (downloading, decoding) until then, its job row not made yet: `claim_retired` does not
    # take the upload before it passes (`upload_by_file` sets it, the request renews it)
    """
    ALTER TABLE uploads ADD COLUMN read_until timestamptz;
    """,
]
class FileGone(Exception):
    """The upload a job was to be made from is being deleted (or was) past its retention."""


class PartsTooLarge(Exception):
    """A part would take an upload past the `bytes` it was created for."""

    def __init__(self, held: int, declared: int):
        super().__init__(f"{held} of {declared} bytes held")
        self.held, self.declared = held, declared


_LOCK_ID = 0x77_6F_72_6B  # "work": advisory lock for migrations


def migrate(url: str) -> list[int]:
    """Apply pending migrations; returns the numbers applied (empty when up to date)."""
    applied = []
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS worker_schema_migrations ("
                         " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            done = {r[0] for r in conn.execute("SELECT version FROM worker_schema_migrations")}
            for number, sql in enumerate(MIGRATIONS, start=1):
                if number in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO worker_schema_migrations (version) VALUES (%s)", (number,))
                applied.append(number)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied


def ping(url: str) -> None:
    """A fresh connection, not a pooled one: readiness must see the server as it is now."""
    with psycopg.connect(url, connect_timeout=2) as conn:
        conn.execute("SELECT 1")


_JOB_COLUMNS = """j.id, j.status, j.audio_sha256, j.audio_key, j.audio_bytes, j.duration, j.options,
    j.options_key, j.deduplicated, j.error, j.error_code, j.created_at, j.started_at, j.completed_at,
    j.idempotency_key, j.request_hash, j.bypass_store, coalesce(j.result, t.result) AS result"""


class Database:
    """The worker's PostgreSQL: a connection pool (at most `max_size` connections, 5 s to get
    one) and the queries on jobs, transcripts and uploads. Rows are dicts; psycopg errors
    propagate (callers turn them into 503 `store_unavailable`).

    A connection is checked (one empty round trip) before it is lent: after a failover, a
    server restart or an idle-timeout kill every pooled connection is dead, and without the
    check each would fail the one request it was lent to."""

    def __init__(self, url: str, max_size: int):
        self.url = url
        self.pool = ConnectionPool(url, min_size=1, max_size=max_size, open=False, timeout=5,
                                   check=ConnectionPool.check_connection,
                                   kwargs={"connect_timeout": 3, "row_factory": dict_row})

    def open(self) -> None:
        """Open the pool without waiting (the worker starts even while PostgreSQL is away)."""
        self.pool.open(wait=False)

    def close(self) -> None:
        """Close the pool and its connections."""
        self.pool.close()

    def _one(self, sql: str, params: tuple) -> dict[str, Any] | None:
        with self.pool.connection() as conn:
            return conn.execute(sql, params).fetchone()

    def find_transcript(self, sha256: str, options_key: str) -> dict[str, Any] | None:
        """The stored verbose_json transcript of (audio SHA-256, options key), or None."""
        row = self._one("SELECT result FROM transcripts WHERE audio_sha256 = %s AND options_key = %s",
                        (sha256, options_key))
        return row["result"] if row else None

    def save_transcript(self, sha256: str, options_key: str, model: str, result: dict) -> None:
        """Store a transcript once; a second save of the same key is a no-op."""
        with self.pool.connection() as conn:
            conn.execute("INSERT INTO transcripts (audio_sha256, options_key, model, duration, result)"
                         " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                         (sha256, options_key, model, result.get("duration", 0), Jsonb(result)))

    def get_job(self, job_id: str, api_key_id: str) -> dict[str, Any] | None:
        """The job `job_id` of key `api_key_id` with its result (its own or the stored
        transcript's), or None when it does not exist, is another key's, or is not a UUID."""
        try:
            uuid.UUID(job_id)
        except ValueError:
            return None
        return self._one(f"SELECT {_JOB_COLUMNS} FROM jobs j LEFT JOIN transcripts t"
                         " ON t.audio_sha256 = j.audio_sha256 AND t.options_key = j.options_key"
                         " AND j.status = 'succeeded' AND NOT j.bypass_store WHERE j.id = %s AND j.api_key_id = %s",
                         (job_id, api_key_id))

    def find_by_idempotency_key(self, api_key_id: str, key: str) -> dict[str, Any] | None:
        """The key's job made with this Idempotency-Key, or None."""
        row = self._one("SELECT id FROM jobs WHERE api_key_id = %s AND idempotency_key = %s",
                        (api_key_id, key))
        return self.get_job(str(row["id"]), api_key_id) if row else None

    def create_job(self, *, api_key_id: str, idempotency_key: str | None, sha256: str,
                   audio_key: str, audio_bytes: int, duration: float, options: dict,
                   options_key: str, done: bool, worker: str, owner: str | None,
                   request_hash: str | None = None, bypass_store: bool = False,
                   upload_id: str | None = None, hold: float = 0) -> tuple[dict[str, Any], bool]:
        """Insert a job; returns (job, created). A concurrent twin with the same
        Idempotency-Key makes `created` False and returns the twin's row. `owner` None: the
        job waits in the backlog, for any worker's keeper to adopt (`adopt_orphans`).

        `upload_id`: the job reads that upload's file (`upload_by_file`). In the insert's
        transaction its row is locked and its reader mark renewed for `hold` seconds, unless
        the keeper is deleting it (`purging`: its mark lapsed) or deleted it: then FileGone
        and no job. A keeper's `claim_retired` skips the locked row, and one begun before
        this commit still sees the renewed mark when it reaches the row; every later one sees
        the queued job (breaker 47 F4)."""
        job_id = uuid.uuid4()
        status = "succeeded" if done else "queued"
        with self.pool.connection() as conn, conn.transaction():
            if upload_id is not None and conn.execute(
                    "UPDATE uploads SET read_until = greatest(read_until, now() + make_interval(secs => %s))"
                    " WHERE id = %s AND status = 'completed' AND NOT purging", (hold, upload_id)).rowcount != 1:
                raise FileGone(upload_id)
            row = conn.execute(
                "INSERT INTO jobs (id, api_key_id, idempotency_key, status, audio_sha256, audio_key,"
                " audio_bytes, duration, options, options_key, deduplicated, worker, owner, heartbeat_at,"
                " completed_at, request_hash, bypass_store)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " CASE WHEN %s::text IS NULL THEN '-infinity'::timestamptz ELSE now() END,"
                " CASE WHEN %s THEN now() END, %s, %s)"
                " ON CONFLICT (api_key_id, idempotency_key) DO NOTHING RETURNING id",
                (job_id, api_key_id, idempotency_key, status, sha256, audio_key, audio_bytes,
                 duration, Jsonb(options), options_key, done, worker, owner, owner, done,
                 request_hash, bypass_store)).fetchone()
        if row is None:
            return self.find_by_idempotency_key(api_key_id, idempotency_key or ""), False
        return self.get_job(str(job_id), api_key_id), True

    def mark_running(self, job_id: str, owner: str) -> bool:
        """Start a job this worker still owns; False when another worker adopted it meanwhile."""
        with self.pool.connection() as conn:
            return conn.execute(
                "UPDATE jobs SET status = 'running', started_at = now(), heartbeat_at = now(),"
                " attempts = attempts + 1 WHERE id = %s AND owner = %s AND status = 'queued'",
                (job_id, owner)).rowcount == 1

    def finish_job(self, job_id: str, owner: str, error: str | None = None,
                   result: dict | None = None, error_code: str | None = None) -> bool:
        """Record the outcome, unless another worker adopted the job meanwhile. `result` is
        kept on the job row (jobs that bypass the transcript store)."""
        with self.pool.connection() as conn:
            return conn.execute(
                "UPDATE jobs SET status = %s, error = %s, error_code = %s, completed_at = now(), result = %s"
                " WHERE id = %s AND owner = %s AND status IN ('queued', 'running')",
                ("failed" if error else "succeeded", error, error_code,
                 Jsonb(result) if result is not None else None, job_id, owner)).rowcount == 1

    def renew_leases(self, owner: str) -> int:
        """Push the heartbeat of every queued or running job `owner` holds; returns how many."""
        with self.pool.connection() as conn:
            return conn.execute("UPDATE jobs SET heartbeat_at = now()"
                                " WHERE owner = %s AND status IN ('queued', 'running')", (owner,)).rowcount

    def adopt_orphans(self, owner: str, lease: float, limit: int, waited: float = 0) -> list[dict[str, Any]]:
        """Take up to `limit` unfinished jobs whose owner has not renewed them for `lease` seconds
        (the backlog's have none), oldest first; with `waited`, only those made at least that
        many seconds ago."""
        with self.pool.connection() as conn:
            return conn.execute(
                "WITH orphans AS (SELECT id, owner FROM jobs WHERE status IN ('queued', 'running')"
                " AND heartbeat_at < now() - make_interval(secs => %s)"
                " AND created_at <= now() - make_interval(secs => %s)"
                " ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                " UPDATE jobs j SET owner = %s, heartbeat_at = now(), status = 'queued' FROM orphans o"
                " WHERE j.id = o.id RETURNING j.id, j.audio_key, j.audio_sha256, j.options, j.attempts,"
                " j.bypass_store, o.owner AS previous_owner", (lease, waited, limit, owner)).fetchall()

    def backlog(self) -> int:
        """Jobs waiting unowned for a worker with room. The IN list is the predicate of the
        partial index on unfinished jobs (`jobs_unfinished`), written out so the planner takes
        it: the count reads unfinished rows only, flat as history grows."""
        with self.pool.connection() as conn:
            return conn.execute("SELECT count(*) AS n FROM jobs WHERE status IN ('queued', 'running')"
                                " AND status = 'queued' AND owner IS NULL").fetchone()["n"]

    def release_job(self, job_id: str, owner: str) -> None:
        """Give an adopted job back at once (no room after all): any worker may take it."""
        with self.pool.connection() as conn:
            conn.execute("UPDATE jobs SET owner = NULL, heartbeat_at = '-infinity'"
                         " WHERE id = %s AND owner = %s AND status = 'queued'", (job_id, owner))

    # --- uploads (file_uploads.py) ---

    def create_upload(self, row: dict[str, Any], expiry_seconds: float,
                      claim_seconds: float | None = None) -> dict[str, Any]:
        """Insert an upload row (`row`'s columns) expiring `expiry_seconds` from now; returns
        it, or None when the key already has an upload made with the row's `idempotency_key`
        (a concurrent twin of a retried create: see `upload_by_idempotency_key`). With
        `claim_seconds`, the row's claim (`row` gives claim 'creating' and its owner) holds
        that long: twins wait while the limits are decided (`creation_decided`, `drop_creating`)."""
        cols, vals, params = ", ".join(row), ", ".join(["%s"] * len(row)), [*row.values()]
        if claim_seconds is not None:
            cols, vals = cols + ", claim_until", vals + ", now() + make_interval(secs => %s)"
            params.append(claim_seconds)
        with self.pool.connection() as conn:
            return conn.execute(
                f"INSERT INTO uploads ({cols}, expires_at) VALUES ({vals},"
                " now() + make_interval(secs => %s)) ON CONFLICT (api_key_id, idempotency_key) DO NOTHING"
                " RETURNING *", (*params, expiry_seconds)).fetchone()

    def creation_decided(self, upload_id: str, owner: str) -> dict[str, Any] | None:
        """The limits took the upload `owner` is creating: clear its 'creating' claim (twins
        then answer it); None when that claim was lost (lapsed, and a twin dropped the row)."""
        with self.pool.connection() as conn:
            return conn.execute("UPDATE uploads SET claim = NULL, claim_owner = NULL, claim_until = NULL"
                                " WHERE id = %s AND claim = 'creating' AND claim_owner = %s AND status = 'pending'"
                                " RETURNING *", (upload_id, owner)).fetchone()

    def drop_creating(self, upload_id: str, owner: str | None = None) -> bool:
        """Delete an upload still being created, which holds nothing yet: `owner`'s (the limits
        refused it, or the store failed deciding), or with no owner one whose 'creating' claim
        lapsed (its worker died). True when this call deleted it."""
        with self.pool.connection() as conn:
            if owner is None:
                cur = conn.execute("DELETE FROM uploads WHERE id = %s AND status = 'pending' AND claim = 'creating'"
                                   " AND claim_until <= now()", (upload_id,))
            else:
                cur = conn.execute("DELETE FROM uploads WHERE id = %s AND status = 'pending' AND claim = 'creating'"
                                   " AND claim_owner = %s", (upload_id, owner))
            return cur.rowcount == 1

    def upload_by_idempotency_key(self, api_key_id: str, key: str) -> dict[str, Any] | None:
        """The key's upload created with this Idempotency-Key, or None."""
        return self._one("SELECT * FROM uploads WHERE api_key_id = %s AND idempotency_key = %s",
                         (api_key_id, key))

    def get_upload(self, upload_id: str, api_key_id: str) -> dict[str, Any] | None:
        """The upload `upload_id` of key `api_key_id`, or None."""
        return self._one("SELECT * FROM uploads WHERE id = %s AND api_key_id = %s", (upload_id, api_key_id))

    def upload_by_file(self, file_id: str, api_key_id: str, hold: float) -> dict[str, Any] | None:
        """The completed upload whose file id is `file_id`, of key `api_key_id`, marked read for
        `hold` seconds (`read_until`: `claim_retired` leaves it alone until then; the reader
        renews it with `hold_upload_file` and `create_job` ends it with the job row), or None
        (also once its retention is over and the keeper is deleting it: `claim_retired`). One
        statement: a keeper's mark either came first (None) or waits for this one and then
        sees `read_until` (breaker 47 F4: a job was accepted for a file deleted under it)."""
        return self._one("UPDATE uploads SET read_until = greatest(read_until, now() + make_interval(secs => %s))"
                         " WHERE file_id = %s AND api_key_id = %s AND status = 'completed' AND NOT purging"
                         " RETURNING *", (hold, file_id, api_key_id))

    def hold_upload_file(self, upload_id: str, hold: float) -> bool:
        """Renew a reader's mark (`upload_by_file`) for `hold` seconds from now; False when
        the upload is being deleted (its mark had lapsed) or is gone."""
        with self.pool.connection() as conn:
            return conn.execute(
                "UPDATE uploads SET read_until = greatest(read_until, now() + make_interval(secs => %s))"
                " WHERE id = %s AND NOT purging", (hold, upload_id)).rowcount == 1

    def _conn(self, conn: Any = None) -> Any:
        """`conn` as a context manager that leaves it open, or a pooled connection."""
        return contextlib.nullcontext(conn) if conn is not None else self.pool.connection()

    def parts(self, upload_id: str, conn: Any = None) -> list[dict[str, Any]]:
        """The parts of an upload stored in S3 (their ETag known), by part number; on `conn`
        when given (complete reads them inside its lock without a second pooled connection,
        which parts waiting on that lock could have taken)."""
        with self._conn(conn) as conn:
            return conn.execute("SELECT * FROM upload_parts WHERE upload_id = %s AND etag IS NOT NULL"
                                " ORDER BY part_number", (upload_id,)).fetchall()

    def claim_part(self, upload_id: str, part_id: str, sha256: str, size: int,
                   in_flight_seconds: float = 300) -> tuple[dict[str, Any], bool]:
        """Reserve the next part number for a part of `size` bytes, or return the part already
        stored with the same SHA-256: (part row, new). Serialised per upload by a row lock.

        A claim whose S3 PUT has not finished (etag NULL) is never returned as a stored part; it
        counts against the bound below while its PUT may still be running (made less than
        `in_flight_seconds` ago: parts sent at once are all counted), not after (the worker
        died; a failed PUT releases its claim at once: `release_claim`); a re-send of the same
        bytes takes it over (same id and part number, new=True, so the caller PUTs it again;
        the row then has `taken_over` true: the first send may still land, so a failed re-send
        must not release it).

        Raises LookupError(status) when the upload is not pending (or its claim, e.g.
        'completing', while a complete, cancel or expiry holds it), and PartsTooLarge when the
        part alone is larger than the upload's declared `bytes` (it could never be used), or
        when the parts stored in S3 or on their way there plus this one would pass twice the
        declared `bytes` (each byte may be re-sent once; the parts a complete does not list are
        deleted with the upload's part objects)."""
        with self.pool.connection() as conn, conn.transaction():
            upload = conn.execute("SELECT status, bytes, claim, claim_until > now() AS claimed FROM uploads"
                                  " WHERE id = %s FOR UPDATE", (upload_id,)).fetchone()
            if upload is None or upload["status"] != "pending":
                raise LookupError(upload["status"] if upload else "missing")
            if upload["claimed"]:  # a complete, cancel or expiry is ending it
                raise LookupError(upload["claim"])
            existing = conn.execute("SELECT * FROM upload_parts WHERE upload_id = %s AND sha256 = %s",
                                    (upload_id, sha256)).fetchone()
            if existing and existing["etag"] is not None:
                return existing, False
            held = conn.execute(
                "SELECT coalesce(sum(bytes), 0) AS n FROM upload_parts WHERE upload_id = %s AND id <> %s"
                " AND (etag IS NOT NULL OR created_at > now() - make_interval(secs => %s))",
                (upload_id, existing["id"] if existing else "", in_flight_seconds)).fetchone()["n"]
            if size > upload["bytes"] or held + size > 2 * upload["bytes"]:
                raise PartsTooLarge(int(held), int(upload["bytes"]))
            if existing:  # an unfinished claim of the same bytes: this re-send takes it over
                return conn.execute("UPDATE upload_parts SET created_at = now() WHERE id = %s"
                                    " RETURNING *, true AS taken_over", (existing["id"],)).fetchone(), True
            return conn.execute(
                "INSERT INTO upload_parts (id, upload_id, part_number, sha256, bytes) VALUES (%s, %s,"
                " (SELECT coalesce(max(part_number), 0) + 1 FROM upload_parts WHERE upload_id = %s),"
                " %s, %s) RETURNING *", (part_id, upload_id, upload_id, sha256, size)).fetchone(), True

    def release_claim(self, part: dict[str, Any]) -> None:
        """Drop a claim whose S3 PUT failed (`part` as `claim_part` returned it), unless a
        re-send of the same bytes has taken it over since (its `created_at` moved)."""
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM upload_parts WHERE id = %s AND etag IS NULL AND created_at = %s",
                         (part["id"], part["created_at"]))

    def stored_part(self, part_id: str, etag: str) -> bool:
        """Record that the part's object is in S3 (its ETag); False (nothing recorded) when the
        upload is no longer pending or a complete, cancel or expiry holds its claim: that end
        clears (or has cleared) the upload's part objects without this one, so the caller
        deletes it. Takes the upload's row lock (short: no end holds it across S3 calls)."""
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute("SELECT u.status, u.claim_until > now() AS claimed FROM uploads u"
                               " JOIN upload_parts p ON p.upload_id = u.id"
                               " WHERE p.id = %s FOR UPDATE OF u", (part_id,)).fetchone()
            if row is None or row["status"] != "pending" or row["claimed"]:
                return False
            conn.execute("UPDATE upload_parts SET etag = %s WHERE id = %s", (etag, part_id))
            return True

    def claim_upload(self, upload_id: str, api_key_id: str, decide: Any) -> Any:
        """One short transaction on the upload's row lock: `decide(conn, row)` (row: the upload
        of key `api_key_id` with `claimed`, true while another holder's claim is live; None
        when there is none) returns `(claim, value)`; when `claim` is a tuple `(what, owner,
        lease_seconds)` the row is claimed for it (`what`: completing, cancelling; its
        `claim_attempt` goes one up: the holder's attempt is the row's + 1) before the commit.
        Returns `value`; what `decide` raises rolls back and propagates. No S3 call
        is made inside: the claim, not a lock, keeps others off while the holder works."""
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute("SELECT *, coalesce(claim_until > now(), false) AS claimed FROM uploads"
                               " WHERE id = %s AND api_key_id = %s FOR NO KEY UPDATE",
                               (upload_id, api_key_id)).fetchone()
            claim, value = decide(conn, row)
            if claim:  # the claim is attempt claim_attempt + 1 (`decide` saw claim_attempt under the lock)
                what, owner, lease = claim
                conn.execute("UPDATE uploads SET claim = %s, claim_owner = %s, claim_attempt = claim_attempt + 1,"
                             " claim_until = now() + make_interval(secs => %s) WHERE id = %s",
                             (what, owner, lease, upload_id))
            return value

    def renew_upload_claim(self, upload_id: str, owner: str, lease: float) -> bool:
        """Push the claim `owner` holds on a pending upload `lease` seconds on; False when it
        no longer holds it (lapsed and taken over, or the upload ended)."""
        with self.pool.connection() as conn:
            return conn.execute("UPDATE uploads SET claim_until = now() + make_interval(secs => %s)"
                                " WHERE id = %s AND claim_owner = %s AND status = 'pending'",
                                (lease, upload_id, owner)).rowcount == 1

    def drop_upload_claim(self, upload_id: str, owner: str) -> None:
        """Give up the claim `owner` holds (its work failed): the upload is pending as before."""
        with self.pool.connection() as conn:
            conn.execute("UPDATE uploads SET claim = NULL, claim_owner = NULL, claim_until = NULL"
                         " WHERE id = %s AND claim_owner = %s", (upload_id, owner))

    def end_upload(self, upload_id: str, owner: str, status: str, file_id: str | None = None,
                   sha256: str | None = None, complete_request: str | None = None,
                   file_key: str | None = None) -> dict[str, Any] | None:
        """Move a pending upload whose claim `owner` holds to `status` (completed, cancelled,
        expired) and clear the claim, recording for a completed one its file id, SHA-256, what
        its complete asked for (`complete_request`) and the S3 key of its file (`file_key`);
        returns the row with `stored` (bytes its parts stored in S3, kept on the row), or None
        (nothing changed) when `owner` no longer holds it.

        The part rows go in the same transaction: the part objects are deleted next (by the
        caller) and an ended upload lists none. A presigned upload that ended unfinished keeps
        them until `mark_swept`: parts PUT at its URLs until they expire are counted then."""
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "UPDATE uploads SET status = %s, file_id = %s, sha256 = %s, complete_request = %s, file_key = %s,"
                " completed_at = CASE WHEN %s = 'completed' THEN now() END,"
                " claim = NULL, claim_owner = NULL, claim_until = NULL,"
                " stored = (SELECT coalesce(sum(p.bytes), 0) FROM upload_parts p WHERE p.upload_id = uploads.id"
                " AND p.etag IS NOT NULL)"
                " WHERE id = %s AND claim_owner = %s AND status = 'pending' RETURNING *",
                (status, file_id, sha256, complete_request, file_key, status, upload_id, owner)).fetchone()
            if row is not None and (status == "completed" or not row["presigned"]):
                conn.execute("DELETE FROM upload_parts WHERE upload_id = %s", (upload_id,))
            return row

    def stored_bytes(self, upload_id: str, conn: Any = None) -> int:
        """Bytes the upload's parts stored in S3 (their ETag known): what its part rows hold, or
        for an ended upload whose rows went at its end, what `end_upload` kept (`stored`); on
        `conn` when given."""
        with self._conn(conn) as conn:
            return int(conn.execute(
                "SELECT greatest((SELECT coalesce(sum(bytes), 0) FROM upload_parts WHERE upload_id = %s"
                " AND etag IS NOT NULL), (SELECT coalesce(stored, 0) FROM uploads WHERE id = %s), 0) AS n",
                (upload_id, upload_id)).fetchone()["n"])

    def set_upload_sha256(self, upload_id: str, sha256: str) -> None:
        """Record a completed file's SHA-256 (hex) once a job has read it."""
        with self.pool.connection() as conn:
            conn.execute("UPDATE uploads SET sha256 = %s WHERE id = %s AND sha256 IS NULL", (sha256, upload_id))

    def claim_expired(self, owner: str, lease: float) -> dict[str, Any] | None:
        """Claim ('expiring', for `lease` seconds) the oldest pending upload past `expires_at`
        that no live claim holds (a lapsed one is a dead worker's: taken over) and return it,
        or None. One statement, SKIP LOCKED: each is taken by one keeper, none waited for. The
        keeper deletes what it holds in S3, then `end_upload`s it; a failure or a kill in
        between leaves it pending and claimed until the lease lapses, then it is taken again."""
        with self.pool.connection() as conn:
            return conn.execute(
                "UPDATE uploads SET claim = 'expiring', claim_owner = %s, claim_attempt = claim_attempt + 1,"
                " claim_until = now() + make_interval(secs => %s) WHERE id = (SELECT id FROM uploads"
                " WHERE status = 'pending' AND expires_at < now() AND (claim_until IS NULL OR claim_until <= now())"
                " AND claim IS DISTINCT FROM 'creating'"
                " ORDER BY expires_at LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED) RETURNING *",
                (owner, lease)).fetchone()

    def drop_lapsed_creating(self, limit: int = 20) -> list[dict[str, Any]]:
        """Delete up to `limit` uploads whose 'creating' claim lapsed (their worker died before
        the limits decided: no one was answered them, nothing was stored for them) and return
        them: [{id, api_key_id}]. Never expired instead (`claim_expired` skips them): the keeper
        gives back what their create was charged, if anything (Limits.refund_charge_sync: the
        charge is recorded per upload id)."""
        with self.pool.connection() as conn:
            return conn.execute(
                "DELETE FROM uploads WHERE id IN (SELECT id FROM uploads WHERE status = 'pending'"
                " AND claim = 'creating' AND claim_until <= now() LIMIT %s FOR UPDATE SKIP LOCKED)"
                " RETURNING id, api_key_id", (limit,)).fetchall()

    def upload_files(self, upload_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The uploads among `upload_ids`: id -> {status, s3_key, file: the S3 key of its file
        (`file_key`, or `s3_key` for uploads completed before it was recorded) when completed,
        else None}. Ids with no row are left out."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT id, status, s3_key, CASE WHEN status = 'completed' THEN coalesce(file_key, s3_key) END"
                " AS file FROM uploads WHERE id = ANY(%s)", (list(upload_ids),)).fetchall()
        return {r["id"]: r for r in rows}

    def unswept_presigned(self, grace_seconds: float, limit: int = 20) -> list[dict[str, Any]]:
        """Presigned uploads that ended (completed, cancelled, expired) and whose part URLs
        expired more than `grace_seconds` ago, their part objects not yet swept: [{id, s3_key,
        parts_prefix, api_key_id, bytes, status, created_at}]."""
        with self.pool.connection() as conn:
            return conn.execute(
                "SELECT id, s3_key, parts_prefix, api_key_id, bytes, status, created_at FROM uploads"
                " WHERE presigned AND NOT parts_swept AND status <> 'pending'"
                " AND expires_at < now() - make_interval(secs => %s) ORDER BY expires_at LIMIT %s",
                (grace_seconds, limit)).fetchall()

    def mark_swept(self, upload_id: str) -> None:
        """Record that a presigned upload's part objects were swept, and drop its part rows
        (kept until now to count what its URLs delivered: `end_upload`), keeping their bytes."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("UPDATE uploads SET parts_swept = true, stored = greatest(coalesce(stored, 0),"
                         " (SELECT coalesce(sum(bytes), 0) FROM upload_parts WHERE upload_id = %s"
                         " AND etag IS NOT NULL)) WHERE id = %s", (upload_id, upload_id))
            conn.execute("DELETE FROM upload_parts WHERE upload_id = %s", (upload_id,))

    def claim_retired(self, retention_seconds: float, limit: int = 20) -> list[dict[str, Any]]:
        """Mark `purging` (and return) up to `limit` ended uploads (completed, cancelled,
        expired) that ended more than `retention_seconds` ago (completed: at `completed_at`;
        else at `expires_at`, which an expired one passed and a cancelled one would have), a
        presigned one only once its part objects were swept, and none whose file a queued or
        running job reads (its `audio_key`) nor one a request making a job is reading
        (`read_until` not passed: `upload_by_file`); rows marked before and not yet deleted
        (their keeper failed or died) are taken again. A marked upload's file is found by no
        new job (`upload_by_file`, `create_job`). SKIP LOCKED: keepers of several workers
        take different rows, and a row `create_job` holds is left for the next pass."""
        with self.pool.connection() as conn:
            return conn.execute(
                "UPDATE uploads SET purging = true WHERE id IN (SELECT u.id FROM uploads u"
                " WHERE u.status <> 'pending'"
                " AND coalesce(u.completed_at, u.expires_at) < now() - make_interval(secs => %s)"
                " AND (NOT u.presigned OR u.parts_swept)"
                " AND (u.purging OR ((u.read_until IS NULL OR u.read_until <= now())"
                " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.status IN ('queued', 'running')"
                " AND j.audio_key = coalesce(u.file_key, u.s3_key))))"
                " ORDER BY coalesce(u.completed_at, u.expires_at) LIMIT %s FOR UPDATE SKIP LOCKED)"
                " RETURNING *", (retention_seconds, limit)).fetchall()

    def delete_upload(self, upload_id: str) -> bool:
        """Delete an upload `claim_retired` marked (its part rows with it: ON DELETE CASCADE);
        True when this call deleted it."""
        with self.pool.connection() as conn:
            return conn.execute("DELETE FROM uploads WHERE id = %s AND purging", (upload_id,)).rowcount == 1

    def incomplete_uploads(self) -> tuple[int, float]:
        """(how many uploads are pending, age in seconds of the oldest; 0 when none), over
        every worker of this database: what `worker_uploads_incomplete` and
        `worker_uploads_oldest_incomplete_age_seconds` report."""
        row = self._one("SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0)"
                        " AS age FROM uploads WHERE status = 'pending'", ())
        return int(row["n"]), float(row["age"])

    def record_s3_parts(self, upload_id: str, parts: list[dict[str, Any]], conn: Any = None) -> None:
        """Register the parts S3 holds for a presigned upload (ids derived from the upload
        and the part number, so every sync gives a part the same id); on `conn` when given."""
        with self._conn(conn) as conn, conn.transaction():
            for part in parts:
                n = part["PartNumber"]
                part_id = "part_" + hashlib.sha256(f"{upload_id}:{n}".encode()).hexdigest()[:32]
                conn.execute(
                    "INSERT INTO upload_parts (id, upload_id, part_number, etag, sha256, bytes)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (upload_id, part_number) DO UPDATE"
                    " SET etag = excluded.etag, sha256 = excluded.sha256, bytes = excluded.bytes",
                    (part_id, upload_id, n, part["ETag"], f"s3:{n}:{part['ETag']}", part["Size"]))
