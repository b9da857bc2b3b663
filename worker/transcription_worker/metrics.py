"""Prometheus metrics (prefix `worker_`), the names the monitoring issue builds alerts on.

Kept in one module so the list in README.md and the code cannot drift apart silently.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

REQUESTS = Counter("worker_requests_total", "HTTP requests answered",
                   ["method", "route", "status"])
REQUEST_DURATION = Histogram(
    "worker_request_duration_seconds", "HTTP request latency", ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
AUDIO_SECONDS = Counter("worker_audio_seconds_total", "Seconds of audio transcribed", ["source"])
AUDIO_DECODED_SECONDS = Counter(
    "worker_audio_decoded_seconds_total",
    "Seconds of audio decoded from uploads, including those then refused as too long")
TRANSCRIPTION_SECONDS = Histogram(
    "worker_transcription_duration_seconds", "Wall time of one transcription",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
TRANSCRIPTIONS = Counter("worker_transcriptions_total", "Model runs by pipeline (batched with VAD, or"
                         " the sequential long-form loop)", ["pipeline"])
REALTIME_FACTOR = Histogram(
    "worker_realtime_factor", "Processing seconds per audio second (below 1: faster than real time)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5))
TRANSCRIPTIONS_STOPPED = Counter(
    "worker_transcriptions_stopped_total", "Transcriptions stopped before their end: reason "
    "client_gone (the client left) or budget (ran past WORKER_TRANSCRIPTION_BUDGET_*)", ["reason"])
QUEUE_DEPTH = Gauge("worker_queue_depth", "Transcriptions waiting for a model slot")
IN_PROGRESS = Gauge("worker_transcriptions_in_progress", "Transcriptions running now")
QUEUE_REJECTED = Counter("worker_queue_rejected_total", "Requests refused because the queue was full")
MODEL_LOAD_SECONDS = Gauge("worker_model_load_seconds", "Time the model took to load")
MODEL_LOADED = Gauge("worker_model_loaded", "1 once the model is loaded")
JOBS = Counter("worker_jobs_total", "Asynchronous jobs by outcome",
               ["status"])  # created, deduplicated, backlogged, succeeded, failed, adopted, abandoned
UPLOADS_EXPIRED = Counter("worker_uploads_expired_total",
                          "Uploads never completed, aborted in S3 after WORKER_UPLOAD_EXPIRY_SECONDS")
UPLOADS_ASSEMBLED_DELETED = Counter(
    "worker_uploads_assembled_deleted_total", "Expired uploads whose object an interrupted complete had"
    " assembled in S3 without it being recorded: the object is deleted (counted in expired too)")
UPLOADS_SWEPT = Counter(
    "worker_uploads_swept_total", "Stray S3 keys of ended uploads the keeper's sweep removed: an object"
    " at a claim attempt's key that is not the recorded file, or a multipart upload left open", ["kind"])
UPLOADS_RETIRED = Counter(
    "worker_uploads_retired_total", "Ended uploads deleted past WORKER_UPLOAD_RETENTION_HOURS: their row,"
    " and a completed one's file in S3")
UPLOADS_INCOMPLETE = Gauge(
    "worker_uploads_incomplete", "Uploads started and not yet completed, cancelled or expired (their"
    " S3 multipart upload is open), across all workers of the database; refreshed by the job keeper")
UPLOADS_OLDEST_AGE = Gauge(
    "worker_uploads_oldest_incomplete_age_seconds", "Age in seconds of the oldest incomplete upload"
    " (0 when there is none), across all workers of the database; refreshed by the job keeper")
PART_MEMORY = Gauge(
    "worker_upload_part_memory_bytes", "Bytes of /v1/uploads part bodies this worker holds reserved now"
    " (at most WORKER_PART_MEMORY_MB, but for a lone part larger than it)")
PART_MEMORY_BUDGET = Gauge("worker_upload_part_memory_budget_bytes", "WORKER_PART_MEMORY_MB, in bytes")
PARTS_WAITING = Gauge(
    "worker_upload_parts_waiting", "Parts waiting for room in the part memory now (at most 64, each"
    " for up to 10 s before 503 server_busy)")
PARTS_REFUSED = Counter(
    "worker_upload_parts_refused_total", "Parts refused by the part memory: server_busy (503: no room"
    " within the wait, or the wait queue full), shed (408: trickling while a part waited for room),"
    " too_slow (408: below WORKER_PART_MIN_RATE_KBPS); the per-key share is in"
    " worker_rate_limited_total{limit=\"part_memory\"}", ["reason"])
DEDUP_HITS = Counter("worker_dedup_hits_total", "Requests answered from a stored transcript")
RATE_LIMITED = Counter("worker_rate_limited_total", "Requests refused by a per-key limit", ["limit"])
BUILD = Info("worker_build", "Version, color and model of this worker")
MODEL = Info("worker_model", "Settings the loaded model runs with: device, compute_type, cpu_threads"
             " (intra-op threads per transcription), num_workers (transcriptions at once), batch_size"
             " (batched pipeline, resolved from the device when WORKER_BATCH_SIZE=0), beam_size")

# Create every labelled series at zero, so alert rules see 0 rather than an absent series.
for _status in ("created", "deduplicated", "backlogged", "succeeded", "failed", "adopted", "abandoned"):
    JOBS.labels(_status)
for _reason in ("client_gone", "budget"):
    TRANSCRIPTIONS_STOPPED.labels(_reason)
for _limit in ("requests_per_minute", "concurrent_uploads", "daily_audio_seconds",
               "parts_per_minute", "open_uploads", "daily_upload_bytes", "part_memory"):
    RATE_LIMITED.labels(_limit)
for _reason in ("server_busy", "shed", "too_slow"):
    PARTS_REFUSED.labels(_reason)
for _pipeline in ("batched", "sequential"):
    TRANSCRIPTIONS.labels(_pipeline)
for _source in ("sync", "job"):
    AUDIO_SECONDS.labels(_source)


def serve_metrics(host: str, port: int) -> object:
    """Start the scraper's listener (WORKER_METRICS_PORT) on a daemon thread: GET /metrics
    only, no authentication (keep the port off public networks); anything else is 404.

    prometheus_client's own `start_http_server` answers every path, so its WSGI app is
    wrapped here to serve the one path. Raises OSError when the port cannot be bound.
    """
    import threading
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    exposition = make_wsgi_app()

    def only_metrics(environ, start_response):
        if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"this port serves only GET /metrics\n"]
        return exposition(environ, start_response)

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:  # scrapes are not worth a log line each
            pass

    server = make_server(host, port, only_metrics, server_class=Server, handler_class=QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-listener", daemon=True).start()
    return server
