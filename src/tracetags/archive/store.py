"""Where archive objects live: a local directory (``file://``) or an S3-compatible bucket
(``s3://bucket/prefix``), behind one small interface of whole-object puts, gets, lists and
deletes.  :func:`open_store` makes one from settings."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from tracetags.errors import ArchiveStoreError, ConfigError
from tracetags.settings import Settings, redact_url


class StoredObject:
    __slots__ = ("name", "size")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size

    def __repr__(self) -> str:
        return f"StoredObject({self.name!r}, {self.size})"


class Store(Protocol):
    """Whole objects under one root; names are ``/``-separated paths below it.

    Every failure to reach or write the store raises :class:`ArchiveStoreError` (an
    ``OSError``) with the store's URL and the cause; a missing object raises
    ``FileNotFoundError``.
    """

    url: str

    def put(self, name: str, data: bytes) -> None:
        """Write ``data`` as ``name``, atomically: readers see the old object or the new one."""

    def get(self, name: str) -> bytes: ...

    def open_input(self, name: str) -> pa.NativeFile:
        """``name`` for reading parts of it (random access; on S3, ranged GETs)."""
        ...

    def list(self, directory: str) -> list[StoredObject]:
        """Objects directly or indirectly under ``directory`` (names relative to the root),
        sorted by name; empty when there is none."""
        ...

    def delete(self, name: str) -> None:
        """Remove ``name``; no error when it does not exist."""


class LocalStore:
    """A directory.  ``put`` writes a temporary file, fsyncs it and renames it into place
    (and fsyncs the directory), so an object is whole or absent after a crash."""

    def __init__(self, root: str | Path, url: str | None = None) -> None:
        self.root = Path(root)
        self.url = redact_url(url) if url else f"file://{self.root}"

    def _path(self, name: str) -> Path:
        return self.root / name

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise ArchiveStoreError(f"archive {self.url}: cannot write {name}: {exc}") from exc

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise ArchiveStoreError(f"archive {self.url}: cannot read {name}: {exc}") from exc

    def open_input(self, name: str) -> pa.NativeFile:
        try:
            return pa.OSFile(str(self._path(name)))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise ArchiveStoreError(f"archive {self.url}: cannot read {name}: {exc}") from exc

    def list(self, directory: str) -> list[StoredObject]:
        base = self._path(directory)
        found: list[StoredObject] = []
        try:
            for dirpath, _dirs, files in os.walk(base, onerror=_raise):
                for file in files:
                    if file.startswith("."):
                        continue  # a put's temporary file
                    full = Path(dirpath) / file
                    found.append(
                        StoredObject(full.relative_to(self.root).as_posix(), full.stat().st_size)
                    )
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ArchiveStoreError(f"archive {self.url}: cannot list {directory}: {exc}") from exc
        found.sort(key=lambda o: o.name)
        return found

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink(missing_ok=True)
        except OSError as exc:
            raise ArchiveStoreError(f"archive {self.url}: cannot delete {name}: {exc}") from exc


def _raise(exc: OSError) -> None:
    raise exc


class S3Store:
    """A bucket and key prefix of an S3-compatible service, through pyarrow's S3 filesystem
    (the AWS C++ SDK in the pyarrow wheel).  A PUT is atomic; credentials come from the
    usual AWS chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, profiles, roles)."""

    def __init__(
        self,
        url: str,
        bucket: str,
        prefix: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = redact_url(url)  # shown and logged only: the store is built from the parts
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        options: dict[str, object] = {
            "connect_timeout": min(timeout_s, 3.0),
            "request_timeout": timeout_s,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=2),
        }
        if region:
            options["region"] = region
        if endpoint:
            split = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            options["endpoint_override"] = split.netloc
            options["scheme"] = split.scheme or "https"
        self.fs = pafs.S3FileSystem(**options)

    def _key(self, name: str) -> str:
        return "/".join(part for part in (self.bucket, self.prefix, name) if part)

    def _error(self, verb: str, name: str, exc: OSError) -> ArchiveStoreError:
        return ArchiveStoreError(f"archive {self.url}: cannot {verb} {name}: {exc}")

    def put(self, name: str, data: bytes) -> None:
        try:
            with self.fs.open_output_stream(self._key(name)) as stream:
                stream.write(data)
        except OSError as exc:
            raise self._error("write", name, exc) from exc

    def get(self, name: str) -> bytes:
        try:
            with self.fs.open_input_stream(self._key(name)) as stream:
                return bytes(stream.read())
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._error("read", name, exc) from exc

    def open_input(self, name: str) -> pa.NativeFile:
        try:
            return self.fs.open_input_file(self._key(name))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._error("read", name, exc) from exc

    def list(self, directory: str) -> list[StoredObject]:
        base = self._key(directory)
        root = self._key("")
        try:
            infos = self.fs.get_file_info(
                pafs.FileSelector(base, recursive=True, allow_not_found=True)
            )
        except OSError as exc:
            raise self._error("list", directory, exc) from exc
        found = [
            StoredObject(info.path[len(root) :].lstrip("/"), int(info.size or 0))
            for info in infos
            if info.type == pafs.FileType.File
        ]
        found.sort(key=lambda o: o.name)
        return found

    def delete(self, name: str) -> None:
        try:
            self.fs.delete_file(self._key(name))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error("delete", name, exc) from exc


def store_from_url(
    url: str, *, endpoint: str | None = None, region: str | None = None
) -> LocalStore | S3Store:
    """A store for ``file://PATH`` or ``s3://BUCKET[/PREFIX][?endpoint=URL&region=R]``.

    ``endpoint``/``region`` (the settings ``archive_s3_endpoint``/``_region``) apply unless
    the URL's query string gives its own.
    """
    split = urlsplit(url)
    if split.scheme == "file":
        return LocalStore(split.netloc + split.path, url)
    if split.scheme == "s3":
        if not split.netloc:
            raise ConfigError(f"archive_url={redact_url(url)!r}: an s3:// URL needs a bucket")
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        unknown = set(query) - {"endpoint", "region"}
        if unknown:
            raise ConfigError(
                f"archive_url={redact_url(url)!r}: unknown option(s) "
                f"{', '.join(sorted(unknown))} "
                "(known: endpoint, region)"
            )
        return S3Store(
            url,
            split.netloc,
            split.path,
            endpoint=query.get("endpoint", endpoint),
            region=query.get("region", region),
        )
    raise ConfigError(f"archive_url={redact_url(url)!r}: must start with file:// or s3://")


def open_store(settings: Settings) -> LocalStore | S3Store | None:
    """The archive store of ``settings`` (see ``Settings.archive_location``); None when
    archiving is off (a Redis URL given and no archive URL: the log is unbounded)."""
    url = settings.archive_location
    if url is None:
        return None
    return store_from_url(
        url, endpoint=settings.archive_s3_endpoint, region=settings.archive_s3_region
    )
