from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tracetags.keys import Keys, enc, partition_of

text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["a:b", "a", "b:c", "1:a", "", ":", "2:ab", "{p00}"]
)


@given(text, text, text, text)
def test_tag_value_keys_are_injective(k1: str, v1: str, k2: str, v2: str) -> None:
    keys = Keys("ns")
    same_key = keys.tag_value(0, k1, v1) == keys.tag_value(0, k2, v2)
    assert same_key == ((k1, v1) == (k2, v2))


def test_the_classic_collision_is_impossible() -> None:
    keys = Keys("ns")
    assert keys.tag_value(0, "a:b", "c") != keys.tag_value(0, "a", "b:c")
    assert enc("é") == "2:é"


def test_partition_keys_carry_the_hash_tag() -> None:
    keys = Keys("prod")
    assert keys.stream(3) == "prod:{p03}:log"
    assert keys.dead_letters(12) == "prod:{p12}:dead"
    assert keys.meta == "prod:meta"
    assert keys.tag_value(0, "env", "x").startswith("prod:{p00}:")


def test_partition_of_is_stable_across_versions() -> None:
    # CRC-32 values are fixed forever: a change here would re-route existing traces.
    assert partition_of("tr-0", 16) == 0x949F3EAA % 16 == 10
    assert [partition_of(f"tr-{i}", 4) for i in range(8)] == [2, 0, 2, 0, 3, 1, 3, 1]
    assert all(partition_of("anything", 1) == 0 for _ in range(3))


@given(st.text(max_size=40), st.integers(min_value=1, max_value=1024))
def test_partition_is_in_range(trace_id: str, partitions: int) -> None:
    assert 0 <= partition_of(trace_id, partitions) < partitions
