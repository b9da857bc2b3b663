"""Logging: one JSON object per line on stderr (what log shippers parse), or plain text.

uvicorn's own loggers are routed through the same formatter; its access log is off because
the app logs each request itself with the route, status, latency and API key id.
"""

from __future__ import annotations

import json
import logging
import logging.config
import time

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time (UTC, ms), level, logger, message, the record's
    extra fields, and the exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def config(fmt: str, level: str) -> dict:
    """The logging dictConfig for `fmt` (json or text) at `level`, the worker's and uvicorn's
    loggers on stderr (uvicorn's access log off: RequestMetrics logs requests)."""
    formatter = ({"()": JsonFormatter} if fmt == "json"
                 else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"})
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    lvl = level.upper()
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "transcription_worker": {"handlers": ["default"], "level": lvl, "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
        "root": {"handlers": ["default"], "level": "WARNING"},
    }


def setup(fmt: str, level: str) -> dict:
    """Apply `config(fmt, level)`; returns it (for uvicorn's log_config)."""
    cfg = config(fmt, level)
    logging.config.dictConfig(cfg)
    return cfg
