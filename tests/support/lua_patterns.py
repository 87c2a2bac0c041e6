"""lua/pattern.lua's matcher run in a real Redis's Lua by EVAL of the part's own text, for
the tests that check it against the client's predicates."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

import redis

# The runtime bindings the part expects from the prelude, then the part, then a runner:
# ARGV = op, negated, pattern, value...; replies 1/0 per value.
_HARNESS = """
local find, sub, type_ = string.find, string.sub, type
local Patterns = {}
%s
local test = Patterns.matcher({ 'M', 'f', 0, ARGV[1], tonumber(ARGV[2]), ARGV[3] })
local out = {}
for i = 4, #ARGV do
    out[#out + 1] = test(ARGV[i]) and 1 or 0
end
return out
"""

Script = tuple[redis.Redis, str]


@contextmanager
def pattern_script(redis_url: str) -> Iterator[Script]:
    """The harness loaded (SCRIPT LOAD) on the test Redis: a client and its sha."""
    text = resources.files("tracetags.functions").joinpath("lua/pattern.lua").read_text()
    client = redis.Redis.from_url(redis_url)
    try:
        yield client, client.script_load(_HARNESS % text)
    finally:
        client.close()


def lua_matches(script: Script, spec: tuple[str, int, str], values: list[str]) -> list[bool]:
    """Whether each value matches the M leaf form ``spec`` (op, negated, pattern) in Lua."""
    client, sha = script
    return [bool(x) for x in client.evalsha(sha, 0, spec[0], spec[1], spec[2], *values)]
