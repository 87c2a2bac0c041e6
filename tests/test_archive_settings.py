"""Archive settings: durations, the archive location's defaults, store URLs, and errors that
name the variable."""

from __future__ import annotations

import os

import pytest

from tracetags.archive import store_from_url
from tracetags.archive.store import LocalStore, S3Store
from tracetags.errors import ConfigError
from tracetags.settings import Settings, parse_duration_ms


@pytest.mark.parametrize(
    ("text", "ms"),
    [("0", 0), ("90s", 90_000), ("5m", 300_000), ("1h", 3_600_000), ("500ms", 500),
     ("2", 2_000), ("1.5s", 1_500), ("2d", 172_800_000), ("5x", None), ("", None),
     ("-1s", None), ("m", None)],
)  # fmt: skip
def test_durations(text: str, ms: int | None) -> None:
    assert parse_duration_ms(text) == ms


def test_defaults_archive_under_the_embedded_directory_and_keep_five_minutes() -> None:
    settings = Settings()
    assert settings.archive_location == "file://" + os.path.abspath(".tracetags/archive")
    assert settings.log_retention_ms == 300_000
    assert settings.archive_interval_ms == 10_000
    assert Settings(embedded_dir="/srv/tt").archive_location == "file:///srv/tt/archive"


def test_a_redis_url_without_an_archive_url_archives_nothing() -> None:
    assert Settings(redis_url="redis://h:6379/0").archive_location is None
    url = "s3://b/p"
    assert Settings(redis_url="redis://h:6379/0", archive_url=url).archive_location == url


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TRACETAGS_LOG_RETENTION", "5 minutes",
         "TRACETAGS_LOG_RETENTION: log_retention='5 minutes': must be a duration such as 0, "
         "500ms, 90s, 5m, 1h"),
        ("TRACETAGS_ARCHIVE_INTERVAL", "0",
         "TRACETAGS_ARCHIVE_INTERVAL: archive_interval='0': must be more than 0"),
        ("TRACETAGS_ARCHIVE_URL", "gs://bucket",
         "TRACETAGS_ARCHIVE_URL: archive_url='gs://bucket': must start with file:// or s3://"),
        ("TRACETAGS_ARCHIVE_MAX_ROWS", "0",
         "TRACETAGS_ARCHIVE_MAX_ROWS: archive_max_rows=0: must be >= 1"),
    ],
)  # fmt: skip
def test_bad_values_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    assert str(info.value) == message


def test_store_urls() -> None:
    local = store_from_url("file:///tmp/tt-archive")
    assert isinstance(local, LocalStore) and str(local.root) == "/tmp/tt-archive"
    s3 = store_from_url("s3://bucket/some/prefix?endpoint=http://127.0.0.1:9000&region=eu-west-1")
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    with pytest.raises(ConfigError, match="unknown option"):
        store_from_url("s3://bucket/p?endpoint_override=x")
    with pytest.raises(ConfigError, match="needs a bucket"):
        store_from_url("s3:///p")
