from __future__ import annotations

import pytest

from tracetags import ConfigError, Settings


def test_defaults_are_valid_and_embedded() -> None:
    settings = Settings()
    assert settings.redis_url is None
    assert settings.effective_redis_url == "redis://127.0.0.1:6379/0"
    assert settings.namespace == "tracetags"
    assert settings.partitions is None
    assert settings.partition_count == 1


def test_from_env_reads_prefixed_variables() -> None:
    settings = Settings.from_env(
        {
            "TRACETAGS_REDIS_URL": "redis://example:6380/1",
            "TRACETAGS_NAMESPACE": "prod-tags",
            "TRACETAGS_PARTITIONS": "16",
            "TRACETAGS_BUFFER_SIZE": "10_000",
            "UNRELATED": "x",
        }
    )
    assert settings.redis_url == "redis://example:6380/1"
    assert settings.namespace == "prod-tags"
    assert settings.partitions == 16
    assert settings.buffer_size == 10_000


def test_overrides_win_over_env() -> None:
    settings = Settings.from_env({"TRACETAGS_NAMESPACE": "a"}, namespace="b")
    assert settings.namespace == "b"


def test_non_numeric_env_value_names_variable_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"TRACETAGS_PARTITIONS": "many"})
    assert str(info.value) == "TRACETAGS_PARTITIONS='many' is not a whole number"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("0", False), ("false", False), ("Off", False), ("yes", True), ("1", True)],
)
def test_boolean_env_values(raw: str, expected: bool) -> None:
    settings = Settings.from_env({"TRACETAGS_CONSUMER_GC_FREEZE": raw})
    assert settings.consumer_gc_freeze is expected


def test_a_non_boolean_env_value_names_variable_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"TRACETAGS_CONSUMER_GC_FREEZE": "maybe"})
    assert str(info.value).startswith("TRACETAGS_CONSUMER_GC_FREEZE='maybe' is not a boolean")


def test_out_of_range_env_value_names_variable_and_rule() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"TRACETAGS_PARTITIONS": "0"})
    assert str(info.value) == "TRACETAGS_PARTITIONS: partitions=0: must be 1..1024"


def test_bad_namespace_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"namespace='a:b'"):
        Settings(namespace="a:b")
    with pytest.raises(ConfigError, match=r"namespace='x\{p1\}'"):
        Settings(namespace="x{p1}")


def test_bad_url_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match="must start with redis://"):
        Settings.from_env({"TRACETAGS_REDIS_URL": "http://localhost:6379"})


def test_replace_validates() -> None:
    with pytest.raises(ConfigError, match="buffer_size=0"):
        Settings().replace(buffer_size=0)
    assert Settings().replace(buffer_size=5).buffer_size == 5


def test_lookup_keys_are_comma_separated_tags_or_metadata() -> None:
    settings = Settings.from_env({"TRACETAGS_LOOKUP_KEYS": "tags.user_id, metadata.tenant,"})
    assert settings.lookup_keys == ("tags.user_id", "metadata.tenant")
    assert settings.lookup_fields == ("tuser_id", "mtenant")
    assert Settings().lookup_keys == ()
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"TRACETAGS_LOOKUP_KEYS": "tags.user_id,user_id"})
    assert str(info.value) == (
        "TRACETAGS_LOOKUP_KEYS: lookup_keys='user_id': each must be tags.<key> or metadata.<key>"
    )


def test_a_cluster_url_names_a_cluster_and_defaults_to_16_partitions() -> None:
    for url in ("redis+cluster://10.0.0.5:7000", "rediss+cluster://user:pw@node-1:7000"):
        settings = Settings.from_env({"TRACETAGS_REDIS_URL": url})
        assert settings.is_cluster
        assert settings.partition_count == 16
    assert Settings(redis_url="redis+cluster://n:7000", partitions=4).partition_count == 4
    assert not Settings(redis_url="redis://n:6379/0").is_cluster
    assert not Settings().is_cluster


def test_an_unknown_url_scheme_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        Settings(redis_url="cluster://n:7000")
    assert str(info.value) == (
        "redis_url='cluster://n:7000': must start with redis://, rediss://, unix://, "
        "redis+cluster:// or rediss+cluster://"
    )
