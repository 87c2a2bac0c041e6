"""Parquet's split-block bloom filters, read back: pyarrow (26) writes them
(``bloom_filter_options``) and exposes where each column chunk's filter lies
(``ColumnChunkMetaData.bloom_filter_offset``/``_length``) but neither reads nor uses them
when it filters, so this module evaluates them itself, to the Parquet spec
(``BloomFilter.md``): XXH64 (seed 0) of the value's plain bytes, a 256-bit block chosen by
the hash's upper 32 bits, and 8 bits in it set by the lower 32 bits times 8 salts.

One probe costs a hash of the trace id (a few microseconds in pure Python, once per lookup)
and 8 bit tests per filter.
"""

from __future__ import annotations

import struct
from typing import Final

_MASK: Final = (1 << 64) - 1
_P1: Final = 0x9E3779B185EBCA87
_P2: Final = 0xC2B2AE3D27D4EB4F
_P3: Final = 0x165667B19E3779F9
_P4: Final = 0x85EBCA77C2B2AE63
_P5: Final = 0x27D4EB2F165667C5
_SALT: Final = (
    0x47B6137B, 0x44974D91, 0x8824AD5B, 0xA2B7289D,
    0x705495C7, 0x2DF1424B, 0x9EFC4947, 0x5C6BFB31,
)  # fmt: skip
_BLOCK: Final = struct.Struct("<8I")


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _MASK, 31) * _P1) & _MASK


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 of ``data`` (the hash Parquet's bloom filters use)."""
    n = len(data)
    p = 0
    if n >= 32:
        v1 = (seed + _P1 + _P2) & _MASK
        v2 = (seed + _P2) & _MASK
        v3 = seed
        v4 = (seed - _P1) & _MASK
        while p + 32 <= n:
            a, b, c, d = struct.unpack_from("<4Q", data, p)
            v1, v2, v3, v4 = _round(v1, a), _round(v2, b), _round(v3, c), _round(v4, d)
            p += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _MASK
        for v in (v1, v2, v3, v4):
            h = ((h ^ _round(0, v)) * _P1 + _P4) & _MASK
    else:
        h = (seed + _P5) & _MASK
    h = (h + n) & _MASK
    while p + 8 <= n:
        (k,) = struct.unpack_from("<Q", data, p)
        h = (_rotl(h ^ _round(0, k), 27) * _P1 + _P4) & _MASK
        p += 8
    if p + 4 <= n:
        (k,) = struct.unpack_from("<I", data, p)
        h = (_rotl(h ^ ((k * _P1) & _MASK), 23) * _P2 + _P3) & _MASK
        p += 4
    while p < n:
        h = (_rotl(h ^ ((data[p] * _P5) & _MASK), 11) * _P1) & _MASK
        p += 1
    h ^= h >> 33
    h = (h * _P2) & _MASK
    h ^= h >> 29
    h = (h * _P3) & _MASK
    return h ^ (h >> 32)


def bitset(filter_bytes: bytes) -> bytes | None:
    """The bitset of a column chunk's bloom filter (its ``BloomFilterHeader``, Thrift
    compact, then the bitset); None when it is not one this module reads."""
    # The header's first field is numBytes (field 1, i32: 0x15), a zigzag varint; the
    # bitset is the last numBytes bytes (the other fields are empty unions).
    if len(filter_bytes) < 2 or filter_bytes[0] != 0x15:
        return None
    value = shift = 0
    i = 1
    while i < len(filter_bytes):
        byte = filter_bytes[i]
        value |= (byte & 0x7F) << shift
        shift += 7
        i += 1
        if not byte & 0x80:
            break
    size = (value >> 1) ^ -(value & 1)
    if size <= 0 or size % 32 or size > len(filter_bytes) - i:
        return None
    return filter_bytes[-size:]


def might_contain(bits: bytes, hashed: int) -> bool:
    """Whether the filter ``bits`` may hold the value whose :func:`xxh64` is ``hashed``
    (False: it certainly does not)."""
    blocks = len(bits) // 32
    block = ((hashed >> 32) * blocks) >> 32
    key = hashed & 0xFFFFFFFF
    words = _BLOCK.unpack_from(bits, block * 32)
    for word, salt in zip(words, _SALT, strict=True):
        if not (word >> (((key * salt) & 0xFFFFFFFF) >> 27)) & 1:
            return False
    return True
