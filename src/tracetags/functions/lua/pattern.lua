-- The M leaf (a pattern tested on each candidate) and the B leaf (a bitmap of trace
-- numbers) of a query plan.  LIKE and ILIKE are tested on one value in Lua deciding exactly
-- as the client's predicate (_like_predicate in src/tracetags/query/logical.py): the M leaf
-- tests a candidate's register this way, so a pattern over a key of many values (or over the trace ids) needs
-- no reading of every value in the client.
--
-- A pattern is split on '%' into segments of a fixed length in characters (literal runs
-- and '_', one UTF-8 character each).  The first segment matches at the start, the last at
-- the end, each one between at its leftmost place after the previous one.  ILIKE compares
-- Python's str.lower() of both sides: the client lowers the pattern (it sends only ASCII
-- ones here), and a value is lowered bytewise plus the two characters whose lower case
-- holds ASCII (U+0130 -> 'i' U+0307, U+212A -> 'k'); every other character lowers to a
-- single non-ASCII character, which an ASCII pattern meets only through '_' or '%'.

-- Bytes of the UTF-8 character whose first byte is b.
local function width(b)
    if b < 0xC0 then
        return 1
    elseif b < 0xE0 then
        return 2
    elseif b < 0xF0 then
        return 3
    end
    return 4
end

-- A segment: its items (literal strings, counts of '_') and its length in characters.
local function compile_segment(text)
    local seg, chars, at = { chars = 0 }, 0, 1
    while at <= #text do
        local u = find(text, '_', at, true)
        if u == at then
            local e = at
            while sub(text, e, e) == '_' do
                e = e + 1
            end
            seg[#seg + 1] = e - at
            chars = chars + (e - at)
            at = e
        else
            local stop = (u or (#text + 1)) - 1
            local lit = sub(text, at, stop)
            seg[#seg + 1] = lit
            local k = 1
            while k <= #lit do
                k = k + width(string.byte(lit, k))
                chars = chars + 1
            end
            at = stop + 1
        end
    end
    seg.chars = chars
    return seg
end

-- A pattern's segments (split on '%').
local function compile(pattern)
    local segs, at = {}, 1
    while true do
        local p = find(pattern, '%', at, true)
        segs[#segs + 1] = compile_segment(sub(pattern, at, (p or (#pattern + 1)) - 1))
        if not p then
            return segs
        end
        at = p + 1
    end
end

-- Where the segment ends (exclusive) when it matches v at byte at, within [at, stop).
local function segment_at(v, at, seg, stop)
    for k = 1, #seg do
        local item = seg[k]
        if type_(item) == 'string' then
            local e = at + #item
            if e > stop or sub(v, at, e - 1) ~= item then
                return nil
            end
            at = e
        else
            for _ = 1, item do
                if at >= stop then
                    return nil
                end
                at = at + width(string.byte(v, at))
            end
        end
    end
    if at > stop then
        return nil
    end
    return at
end

-- The end of the segment's leftmost match in v within [at, stop) (nil: none).
local function segment_search(v, at, seg, stop)
    local first = seg[1]
    local literal = type_(first) == 'string'
    while at < stop do
        if literal then
            local f = find(v, first, at, true)
            if not f or f + #first > stop then
                return nil
            end
            at = f
        end
        local e = segment_at(v, at, seg, stop)
        if e then
            return e
        end
        at = at + width(string.byte(v, at))
    end
    return nil
end

-- Whether v matches the compiled pattern segs.
local function like(v, segs)
    local n, stop = #segs, #v + 1
    if n == 1 then
        return segment_at(v, 1, segs[1], stop) == stop
    end
    local last = segs[n]
    local s = stop -- where the last segment starts: its length in characters before the end
    for _ = 1, last.chars do
        if s <= 1 then
            return false
        end
        s = s - 1
        while s > 1 do
            local b = string.byte(v, s)
            if b < 0x80 or b >= 0xC0 then
                break
            end
            s = s - 1
        end
    end
    local at = segment_at(v, 1, segs[1], s)
    if not at then
        return false
    end
    for k = 2, n - 1 do
        if #segs[k] > 0 then
            at = segment_search(v, at, segs[k], s)
            if not at then
                return false
            end
        end
    end
    return segment_at(v, s, last, stop) == stop
end

-- Python's str.lower() of v, for an ASCII pattern (see the top of this file).
local function lower(v)
    if find(v, '[\128-\255]') then
        v = v:gsub('\196\176', 'i\204\135'):gsub('\226\132\170', 'k')
    end
    return string.lower(v)
end

-- The test of an M leaf {'M', field, stamped, op ('L' LIKE, 'I' ILIKE, 'R' RLIKE as a Lua
-- pattern: query/rlike.py), negated, pattern}: a function of a value (a string) to
-- whether it matches (negated: does not match).
local function matcher(leaf)
    local negated = leaf[5] == 1
    if leaf[4] == 'R' then
        local pattern = leaf[6]
        return function(v)
            return (find(v, pattern) ~= nil) ~= negated
        end
    end
    local segs = compile(leaf[6])
    local fold = leaf[4] == 'I'
    return function(v)
        if fold then
            v = lower(v)
        end
        return like(v, segs) ~= negated
    end
end

local POW2 = { [0] = 1, 2, 4, 8, 16, 32, 64 }

-- A B leaf: the candidates whose bit is set in the bitmap (bit n % 7 of byte n // 7: 7
-- bits a byte keep it ASCII, a msgpack str).
local function test_bitmap(bitmap, list, mask)
    for i = 1, #list do
        local n = tonumber(list[i])
        local b = string.byte(bitmap, floor(n / 7) + 1)
        if b and floor(b / POW2[n % 7]) % 2 == 1 then
            mask[i] = true
        end
    end
end

-- An M leaf: each candidate's register (or field) read and matched by lua/pattern.lua.
local function test_pattern(ctx, leaf, list, mask)
    local test = leaf.test
    if not test then
        test = matcher(leaf)
        leaf.test = test
    end
    local hash_prefix, field, stamped = ctx.prefix .. ':t:', leaf[2], leaf[3] == 1
    for i = 1, #list do
        if not mask[i] then
            local raw = call('HGET', hash_prefix .. list[i], field)
            if raw and stamped then
                raw = Stamps.register_value(raw)
            end
            if raw and test(raw) then
                mask[i] = true
            end
        end
    end
end

Patterns.matcher = matcher
Patterns.test_pattern = test_pattern
Patterns.test_bitmap = test_bitmap
Patterns.width = width
Patterns.compile = compile
Patterns.like = like
