"""Log output: the default text lines, or one JSON object per line (`[server] log_format = "json"`).

This module is in charge of the JSON form, for log collectors (journald's JSON export, Loki, Elastic):
`{"time": "...Z", "level": "info", "logger": "peerage.net", "message": "...", "pid": 1234}`, plus
`exception` with the traceback when there is one. The message text is the same as in text mode.
"""

from __future__ import annotations

import datetime
import json
import logging
import os


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": os.getpid(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def use_format(log_format: str) -> None:
    """Switch every handler of the root logger to `log_format` ("text" keeps what is there)."""
    if log_format != "json":
        return
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter())
