"""A progress view of a run for a person at a terminal: one line when a step starts and ends
(with its time), the assets' own INFO messages (trial n of N, the gate's decision, ...), and
every warning and error, each with the time since the run started. Dagster's DEBUG stream
(every event, dbt's lines) still goes to the run's log in the instance, where the UI shows it.

`make run` and `propensity run` choose it with PROGRESS_LOGGING; a run launched from the UI or a
schedule keeps Dagster's console logger.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import dagster as dg

PROGRESS_LOGGER = "progress"
PROGRESS_LOGGING = {"loggers": {PROGRESS_LOGGER: {}}}
_SHOWN_EVENTS = {"STEP_START", "STEP_SUCCESS", "STEP_FAILURE", "PIPELINE_FAILURE"}


class ProgressFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self.started = time.monotonic()

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        event_type = getattr(event, "event_type_value", None)
        step = (meta.get("step_key") or "").replace("__", "/")
        message = str(meta.get("orig_message") or record.getMessage())
        elapsed = time.monotonic() - self.started
        stamp = f"[{int(elapsed // 60):2d}:{int(elapsed % 60):02d}]"
        if event_type == "STEP_START":
            return f"{stamp} {step} ..."
        if event_type == "STEP_SUCCESS":
            took = message.rsplit(" in ", 1)[-1].rstrip(".") if " in " in message else ""
            return f"{stamp} {step} done" + (f" in {took}" if took else "")
        if event_type in ("STEP_FAILURE", "PIPELINE_FAILURE"):
            return f"{stamp} {step or 'run'} FAILED: {failure_reason(event) or message}"
        level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        return f"{stamp}   {level}{message}"


def failure_reason(event: object) -> str:
    """The error of a failed step in one line (its last cause, where the real reason is)."""
    error = getattr(getattr(event, "event_specific_data", None), "error", None)
    while error is not None and getattr(error, "cause", None) is not None:
        error = error.cause
    if error is None:
        return ""
    return " ".join(str(error.message).split())[:500]


class ProgressFilter(logging.Filter):
    """INFO and above, plus the step events of _SHOWN_EVENTS (DEBUG in Dagster)."""

    def filter(self, record: logging.LogRecord) -> bool:
        meta = getattr(record, "dagster_meta", None) or {}
        event_type = getattr(meta.get("dagster_event"), "event_type_value", None)
        if event_type is not None:
            return event_type in _SHOWN_EVENTS
        return record.levelno >= logging.INFO


@dg.logger(description="A compact progress view for a terminal (make run, propensity run).")
def progress_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    log = logging.getLogger(f"propensity.progress.{id(init_context)}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ProgressFormatter())
    handler.addFilter(ProgressFilter())
    log.handlers = [handler]
    return log


LOGGERS = {**dg.default_loggers(), PROGRESS_LOGGER: progress_logger}


def quiet_libraries() -> None:
    """For a process that shows the progress view: MLflow's own INFO and WARNING lines and its
    download bars stay off the terminal (errors still show; MLflow records everything)."""
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
