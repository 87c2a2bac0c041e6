"""The package root is where users look first: DESIGN.md's public names import from it."""

from __future__ import annotations

import tracetags


def test_the_design_names_import_from_the_package_root() -> None:
    from tracetags import AsyncTagProducer, Client, Settings, TagProducer

    assert Client is tracetags.client.Client
    assert (Settings, TagProducer, AsyncTagProducer) == (
        tracetags.settings.Settings,
        tracetags.producer.TagProducer,
        tracetags.producer.AsyncTagProducer,
    )
    for name in ("trace", "update_current_trace", "set_trace_tag", "search_traces"):
        assert callable(getattr(tracetags, name))


def test_all_lists_what_the_root_holds() -> None:
    assert {"Client", "Settings", "TagProducer", "AsyncTagProducer"} <= set(tracetags.__all__)
    assert {"RedisUnavailableError", "TracetagsTimeoutError"} <= set(tracetags.__all__)
    for name in tracetags.__all__:
        assert hasattr(tracetags, name), name


def test_a_client_needs_no_other_import(redis_url: str, namespace: str) -> None:
    with tracetags.Client(tracetags.Settings(redis_url=redis_url, namespace=namespace)) as client:
        assert client.count() == 0
        assert client.drop_lookup("tags.user_id") == 0
