"""tracetags: mutable tags on ML/LLM traces, event-sourced on Redis Streams."""

from tracetags.client import Client
from tracetags.errors import (
    BufferFullError,
    BulkWriteError,
    ConfigError,
    EventLimitError,
    FilterError,
    FilterSemanticError,
    FilterSyntaxError,
    LibraryVersionError,
    PageTokenError,
    QueryLimitError,
    RedisAuthError,
    RedisBusyError,
    RedisPermissionError,
    RedisRefusedError,
    RedisTlsError,
    RedisUnavailableError,
    TracetagsError,
    TracetagsTimeoutError,
    ValidationError,
)
from tracetags.fluent import (
    configure,
    default_producer,
    delete_trace_tag,
    get_current_trace_id,
    search_traces,
    set_trace_tag,
    trace,
    update_current_trace,
)
from tracetags.producer import AsyncTagProducer, ProducerStats, Receipt, TagProducer
from tracetags.settings import Settings

__all__ = [
    "AsyncTagProducer",
    "BufferFullError",
    "BulkWriteError",
    "Client",
    "ConfigError",
    "EventLimitError",
    "FilterError",
    "FilterSemanticError",
    "FilterSyntaxError",
    "LibraryVersionError",
    "PageTokenError",
    "ProducerStats",
    "QueryLimitError",
    "Receipt",
    "RedisAuthError",
    "RedisBusyError",
    "RedisPermissionError",
    "RedisRefusedError",
    "RedisTlsError",
    "RedisUnavailableError",
    "Settings",
    "TagProducer",
    "TracetagsError",
    "TracetagsTimeoutError",
    "ValidationError",
    "configure",
    "default_producer",
    "delete_trace_tag",
    "get_current_trace_id",
    "search_traces",
    "set_trace_tag",
    "trace",
    "update_current_trace",
]

__version__ = "0.1.0"
