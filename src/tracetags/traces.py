"""The traces a search answers: :class:`TraceInfo` (one trace's folded state, shaped like
MLflow's) and its :class:`Trace` wrapper.  Their own module, so that the query executor
decodes tt_query's page replies straight into them (:mod:`tracetags.client` re-exports
both)."""

from __future__ import annotations

import msgspec

from tracetags.keys import NAME_TAG

__all__ = ["Trace", "TraceInfo"]


# gc=False: a page makes a hundred of each, and they hold only strings, ints and dicts of
# strings (never a cycle), so the cycle collector need not track them.
class TraceInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One trace's folded state, shaped like MLflow's ``TraceInfo``."""

    trace_id: str
    experiment_id: str | None
    timestamp_ms: int | None
    execution_time_ms: int | None
    status: str | None
    client_request_id: str | None
    tags: dict[str, str]
    request_metadata: dict[str, str]

    @property
    def request_id(self) -> str:
        """MLflow 2.x name of the trace id."""
        return self.trace_id

    @property
    def name(self) -> str | None:
        """The trace name: the tag ``mlflow.traceName``."""
        return self.tags.get(NAME_TAG)

    @property
    def trace_metadata(self) -> dict[str, str]:
        """MLflow 3.x name of ``request_metadata``."""
        return self.request_metadata

    @property
    def end_time_ms(self) -> int | None:
        if self.timestamp_ms is None:
            return None
        return self.timestamp_ms + (self.execution_time_ms or 0)


class Trace(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    info: TraceInfo
