--[[ The prelude of the tracetags library: what every part shares.

The library is one chunk assembled from parts (the order is PARTS in functions/library.py):
a generated header holding the constants Python shares (SET_CHUNK, PLAIN_MAX, ...), this
prelude at the top level, then each part inside its own do ... end block.  A part's locals
end with its block (so the chunk stays under Lua's 200 locals); what later parts use, a part
exports through its module table below, and a later part binds it to a local at its top.

Key shapes and the per-trace hash layout mirror src/tracetags/keys.py, whose docstring is the
key table.  Python validates every event; this library only applies them.

Redis loads the chunk with no global but `redis` (no string, math, table, unpack, cmsgpack):
they exist only while a Function runs, so each Function calls bind_runtime() first.
--]]

local Stamps, Sets, LexIndex, Lookups, Batches, FoldTrace, FoldSingle, Apply =
    {}, {}, {}, {}, {}, {}, {}, {}
local Leaves, Eval, Enum, Ordering, Walks, Like, Counts, ValueWalk, Query =
    {}, {}, {}, {}, {}, {}, {}, {}, {}
local Trim, IdOrder, IdWalk, GroupOrder, HistoryIndex = {}, {}, {}, {}, {}
local TagLimit, OrGroups, Budget, Patterns = {}, {}, {}, {}

-- Bound by bind_runtime() (standard-library shortcuts: a local is cheaper than a global).
local call, floor, sub, find, format, match, unpack_, type_
local bytewise -- true when the server's string collation is byte order

-- unpack() of more than a few thousand values overflows Lua's C stack: chunk long commands.
local CHUNK = 1000

local ATTRIBUTES = { e = true, s = true, d = true, S = true, c = true }
local NUMERIC = { s = true, d = true }
local EMPTY = {}

local function fail(code, message)
    error({ err = 'TT_' .. code .. ' ' .. message })
end

-- Decimal texts of small numbers, made once: number-to-string conversion is the slowest
-- common Lua operation here (slower than a redis.call of a short command).
local DECIMAL = {}
for i = 0, 1023 do
    DECIMAL[i] = '' .. i
end

local function enc(s)
    local n = #s
    return (DECIMAL[n] or n) .. ':' .. s
end

local function int(n)
    return DECIMAL[n] or format('%d', n)
end

-- Code-point order of UTF-8 strings is their byte order; Lua compares with strcoll, which
-- is byte order only in the C locale (Redis calls setlocale(LC_COLLATE, "")).
local function detect_bytewise()
    return ('B' < 'a') and ('Z' < '_') and ('_' < 'a') and ('a' < 'b') and ('1' < 'A')
        and ('z' < '\195\169') and ('ab' < 'b') and not ('a' < 'B') and ('' < ' ')
end

local function bind_runtime()
    call = redis.call
    floor, sub, find = math.floor, string.sub, string.find
    format, match = string.format, string.match
    unpack_, type_ = unpack, type
    bytewise = detect_bytewise()
end

-- A page call past its deadline gives up at its next Redis call: fn(...) runs with `call`
-- checking the clock every DEADLINE_EVERY calls, and right after a call that replied more
-- than LARGE_REPLY elements (every loop of a page strategy makes Redis calls, so none runs
-- far past the deadline).  Returns true and fn's result, or false when fn gave up; other
-- errors go on.
local DEADLINE_EVERY, LARGE_REPLY = 16, 256
local ABANDON = { abandon = true }

local function with_deadline(deadline_us, fn, ...)
    local raw = redis.call
    local n = 0
    call = function(...)
        n = n + 1
        if n >= DEADLINE_EVERY then
            n = 0
            local t = raw('TIME')
            if tonumber(t[1]) * 1000000 + tonumber(t[2]) > deadline_us then
                error(ABANDON)
            end
        end
        local reply = raw(...)
        if type_(reply) == 'table' and #reply > LARGE_REPLY then
            n = DEADLINE_EVERY -- (a large read: the clock is read before the next call)
        end
        return reply
    end
    local ok, result = pcall(fn, ...)
    call = raw
    if ok then
        return true, result
    end
    if result == ABANDON then
        return false, nil
    end
    error(result, 0)
end
