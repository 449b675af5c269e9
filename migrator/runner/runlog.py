"""The run's log file: a redacting handler on the ``migrator`` logger for the length of one command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from migrator.secrets import Redactor


class RedactFilter(logging.Filter):
    """Redacts every record (message and traceback) before a handler writes it."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.redactor.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class RunLog:
    """Attaches a redacting file handler (``<log_dir>/<run_id>.log``) for the length of a command."""

    def __init__(self, log_dir: Path | None, run_id: str, redactor: Redactor) -> None:
        self.path = log_dir / f"{run_id}.log" if log_dir else None
        self.redactor = redactor
        self.handler: logging.Handler | None = None

    def __enter__(self) -> RunLog:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(self.path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
            handler.addFilter(RedactFilter(self.redactor))
            logger = logging.getLogger("migrator")
            logger.addHandler(handler)
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)
            self.handler = handler
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.handler is not None:
            logging.getLogger("migrator").removeHandler(self.handler)
            self.handler.close()
