"""The log's life: archive segments (Parquet) in an object store, their manifest, the
archiver that writes them and trims the stream safely, and the reader.

Public surface (stable)::

    open_store(settings) -> Store | None
        the archive store of the settings (``file://`` or ``s3://``); None when archiving
        is off (a Redis URL given and no ``TRACETAGS_ARCHIVE_URL``)
    read_partition(settings_or_store, namespace, partition, *, after=None, until_ms=None)
        -> Iterator[tuple[str, Event | bytes]]
        every archived entry of the partition in entry-id order: (entry id text, decoded
        event) or (entry id text, raw payload) for an entry that did not decode;
        ``after`` excludes ids <= it, ``until_ms`` keeps ids whose ms <= it
    read_trace(settings_or_store, namespace, partition, trace_id, *, until_ms=None)
        -> Iterator[tuple[str, Event | bytes]]
        every archived entry of one trace, in entry-id order, without a scan
    archive_once(settings, *, partition=None) -> list[RunReport]
        one archive-and-trim run on every partition (``tracetags archive``)

Modules: store (file/S3 objects), segments (Parquet layout), manifest (meta-last
visibility), reader, index (the per-process cache of footers and bloom filters), bloom
(Parquet's bloom filters, read), compaction, archiver (runs, the serve loop), trim
(``tt_trim``), state (the status cache).  This package imports pyarrow only when a
function above is called, so ``Client.status`` stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracetags.archive.archiver import RunReport
    from tracetags.archive.store import LocalStore, S3Store
    from tracetags.schemas import Event
    from tracetags.settings import Settings


def open_store(settings: Settings) -> LocalStore | S3Store | None:
    """The archive store of ``settings``; None when archiving is off."""
    from tracetags.archive.store import open_store as _open

    return _open(settings)


def store_from_url(url: str) -> LocalStore | S3Store:
    """A store for ``file://PATH`` or ``s3://BUCKET/PREFIX[?endpoint=URL&region=R]``."""
    from tracetags.archive.store import store_from_url as _from_url

    return _from_url(url)


def read_partition(
    settings_or_store: Settings | LocalStore | S3Store,
    namespace: str,
    partition: int,
    *,
    after: str | None = None,
    until_ms: int | None = None,
) -> Iterator[tuple[str, Event | bytes]]:
    """Every archived entry of ``partition`` in entry-id order (see the module docstring
    and :func:`tracetags.archive.reader.read_partition`)."""
    from tracetags.archive.reader import read_partition as _read

    return _read(settings_or_store, namespace, partition, after=after, until_ms=until_ms)


def read_trace(
    settings_or_store: Settings | LocalStore | S3Store,
    namespace: str,
    partition: int,
    trace_id: str,
    *,
    until_ms: int | None = None,
) -> Iterator[tuple[str, Event | bytes]]:
    """Every archived entry of ``trace_id`` in ``partition`` in entry-id order (see
    :func:`tracetags.archive.reader.read_trace`)."""
    from tracetags.archive.reader import read_trace as _read

    return _read(settings_or_store, namespace, partition, trace_id, until_ms=until_ms)


def archive_once(
    settings: Settings,
    *,
    partition: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    max_segments: int | None = None,
) -> list[RunReport]:
    """One archive-and-trim run on every partition (or one); see
    :func:`tracetags.archive.archiver.archive_once`."""
    from tracetags.archive.archiver import archive_once as _once

    return _once(settings, partition=partition, on_progress=on_progress, max_segments=max_segments)


__all__ = ["archive_once", "open_store", "read_partition", "read_trace", "store_from_url"]
