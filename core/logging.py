"""structlog set-up: JSON lines off a terminal, readable lines on one.

Every line carries the service name and version, and `trace_id`/`span_id` whenever an
OpenTelemetry span is active (core.runtime.boundary starts one per call when tracing is on).
Call `configure_logging` once, in `__main__`; modules just do `log = structlog.get_logger()`.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, ExceptionRenderer, Processor, WrappedLogger


def add_trace_ids(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Adds the current OpenTelemetry trace and span ids, when there is a valid span."""
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        event["trace_id"] = format(span.trace_id, "032x")
        event["span_id"] = format(span.span_id, "016x")
    return event


def _console_tracebacks() -> ExceptionRenderer:
    """Rich's tracebacks (without local variables) when rich is installed (the dev extras
    install it), else the standard library's: a console must never need rich to log."""
    if importlib.util.find_spec("rich") is None:
        return structlog.dev.plain_traceback
    return structlog.dev.RichTracebackFormatter(show_locals=False)


def configure_logging(
    *, service: str, version: str, log_format: str = "auto", level: str = "info"
) -> None:
    """Configures structlog (and the standard library's logging) for this process.

    Args:
        service: Bound on every line as `service`.
        version: Bound on every line as `version`.
        log_format: "json", "console", or "auto" (console on a terminal, else JSON).
        level: The lowest level written: debug, info, warning or error.
    """
    as_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())

    def add_service(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event.setdefault("service", service)
        event.setdefault("version", version)
        return event

    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_service,
        add_trace_ids,
    ]
    if as_json:
        # Tracebacks without local variables: those could hold passwords and payloads.
        tracebacks = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        processors += [tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(exception_formatter=_console_tracebacks())]
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (asyncio, grpc) log through the standard library: keep them on stderr too.
    logging.basicConfig(stream=sys.stderr, level=max(numeric, logging.WARNING), force=True)
