"""The MLflow-style fluent layer: ``@trace``, ``update_current_trace``, ``search_traces``, ….

They write through one process-wide default :class:`~tracetags.producer.TagProducer`
(``configure()`` replaces it), and track the active trace in a context variable, so nested
calls, threads and asyncio tasks each see their own trace.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar, overload

from tracetags import schemas
from tracetags.producer import TagProducer
from tracetags.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_default: TagProducer | None = None


class _ActiveTrace:
    __slots__ = (
        "client_request_id",
        "experiment_id",
        "metadata",
        "name",
        "timestamp_ms",
        "trace_id",
    )

    def __init__(self, trace_id: str, experiment_id: str, name: str, timestamp_ms: int) -> None:
        self.trace_id = trace_id
        self.experiment_id = experiment_id
        self.name = name
        self.timestamp_ms = timestamp_ms
        self.metadata: dict[str, str] = {}
        self.client_request_id: str | None = None


_current: contextvars.ContextVar[_ActiveTrace | None] = contextvars.ContextVar(
    "tracetags_current_trace", default=None
)


def configure(settings: Settings | None = None) -> TagProducer:
    """Set the process-wide default producer (closing the previous one) and return it."""
    global _default
    producer = TagProducer(settings or Settings.from_env())
    with _lock:
        old, _default = _default, producer
    if old is not None:
        old.close()
    return producer


def default_producer() -> TagProducer:
    """The default producer, made from ``Settings.from_env()`` on first use."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = TagProducer(Settings.from_env())
    return _default


def new_trace_id() -> str:
    """An MLflow-format trace id: ``tr-`` and 32 hex digits."""
    return "tr-" + os.urandom(16).hex()


def get_current_trace_id() -> str | None:
    """The id of the trace active in this context, or None."""
    active = _current.get()
    return None if active is None else active.trace_id


def update_current_trace(
    tags: Mapping[str, str] | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
    client_request_id: str | None = None,
) -> None:
    """Add or update tags of the active trace (metadata is sent when the trace finishes).

    Outside a trace this warns and does nothing, like MLflow.
    """
    active = _current.get()
    if active is None:
        warnings.warn(
            "update_current_trace() called with no active trace: decorate the function "
            "with @tracetags.trace; nothing was recorded",
            stacklevel=2,
        )
        return
    if metadata:
        active.metadata.update(schemas.check_mapping(metadata, "metadata"))
    if client_request_id is not None:
        active.client_request_id = schemas.check_optional_text(
            client_request_id, "client_request_id"
        )
    if tags:
        default_producer().set_tags(active.trace_id, tags)


def set_trace_tag(trace_id: str, key: str, value: str, *, source: str | None = None) -> None:
    """Set one tag on any trace (fire-and-forget); ``source``: who writes (default: the
    settings' source)."""
    default_producer().set_tags(trace_id, {key: value}, source=source)


def delete_trace_tag(trace_id: str, key: str, *, source: str | None = None) -> None:
    """Delete one tag from any trace (fire-and-forget)."""
    default_producer().delete_tags(trace_id, [key], source=source)


@overload
def trace(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def trace(
    *, name: str | None = None, experiment_id: str | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def trace(
    func: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    experiment_id: str | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Record each call of ``func`` as a trace: started on entry, finished on exit.

    The status is ``OK``, or ``ERROR`` when the function raises (the exception propagates).
    A decorated function called inside another trace joins it (MLflow would make it a
    span; tracetags keeps no spans).  Works for sync and async functions.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        trace_name = name or fn.__name__
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                if _current.get() is not None:
                    return await fn(*args, **kwargs)
                active, token, started = _begin(trace_name, experiment_id)
                status = "ERROR"
                try:
                    result = await fn(*args, **kwargs)
                    status = "OK"
                    return result
                finally:
                    _end(active, token, started, status)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if _current.get() is not None:
                return fn(*args, **kwargs)
            active, token, started = _begin(trace_name, experiment_id)
            status = "ERROR"
            try:
                result = fn(*args, **kwargs)
                status = "OK"
                return result
            finally:
                _end(active, token, started, status)

        return wrapper

    return decorate if func is None else decorate(func)


def _begin(
    name: str, experiment_id: str | None
) -> tuple[_ActiveTrace, contextvars.Token[_ActiveTrace | None], float]:
    producer = default_producer()
    active = _ActiveTrace(
        new_trace_id(), experiment_id or producer.settings.experiment_id, name, schemas.now_ms()
    )
    token = _current.set(active)
    producer.trace_started(
        active.trace_id,
        experiment_id=active.experiment_id,
        timestamp_ms=active.timestamp_ms,
        name=name,
    )
    return active, token, time.perf_counter()


def _end(
    active: _ActiveTrace,
    token: contextvars.Token[_ActiveTrace | None],
    started: float,
    status: str,
) -> None:
    _current.reset(token)
    default_producer().trace_finished(
        active.trace_id,
        experiment_id=active.experiment_id,
        timestamp_ms=active.timestamp_ms,
        execution_time_ms=int((time.perf_counter() - started) * 1000),
        status=status,
        name=active.name,
        client_request_id=active.client_request_id,
        metadata=active.metadata,
    )


_client_lock = threading.Lock()
_default_client: Any = None


def search_traces(
    experiment_ids: Sequence[str] | None = None,
    filter_string: str | None = None,
    order_by: Sequence[str] | None = None,
    max_results: int | None = None,
    page_token: str | None = None,
    *,
    settings: Settings | None = None,
) -> Any:
    """MLflow-style ``search_traces``: a list of :class:`~tracetags.client.Trace`.

    ``max_results=None`` returns every match (walking the page tokens); otherwise one page
    of at most ``max_results`` whose ``.token`` fetches the next.  Uses a process-wide
    :class:`~tracetags.client.Client` from ``Settings.from_env()`` unless ``settings`` is given.
    """
    from tracetags.client import Client, TracePage

    global _default_client
    if settings is not None:
        client = Client(settings)
    else:
        with _client_lock:
            if _default_client is None:
                _default_client = Client(Settings.from_env())
            client = _default_client
    try:
        if max_results is not None:
            return client.search_traces(
                experiment_ids, filter_string, order_by, max_results, page_token
            )
        traces: list[Any] = []
        token = page_token
        while True:
            page = client.search_traces(experiment_ids, filter_string, order_by, 5_000, token)
            traces.extend(page)
            token = page.token
            if token is None:
                return TracePage(traces, None)
    finally:
        if settings is not None:
            client.close()
