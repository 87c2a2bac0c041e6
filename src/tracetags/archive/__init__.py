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
"""

from tracetags.archive.reader import read_partition
from tracetags.archive.store import LocalStore, S3Store, Store, open_store, store_from_url

__all__ = ["LocalStore", "S3Store", "Store", "open_store", "read_partition", "store_from_url"]
