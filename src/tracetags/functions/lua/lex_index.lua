-- The byte-order index of a key's distinct values: kept by the fold, read by LIKE and by
-- ordering on the key.

local chunked = Sets.chunked

--[[ The byte-order index of a tag or metadata key's distinct values (dkey td:/md:), so that
LIKE prefixes and ordering by the key read only the values they need.  The distinct zset is
scored by count, so it cannot give byte order; one zset of every value at score 0 would
(ZRANGE BYLEX) but becomes a skiplist, several times larger a value, once past LEX_BUCKET
members.  Instead the values are cut into buckets of at most LEX_BUCKET values at score 0,
small enough to stay listpacks:
  dkey..':L'                 zset, score 0: the head of every bucket, '' included
  dkey..':L:'..enc(head)     zset, score 0: the values v with head <= v < the next head
The first head is '' (below every value), so every value has a bucket: the largest head
<= v.  A bucket that empties leaves the directory (except ''); when the distinct zset
empties, the directory goes too.  A bucket past LEX_BUCKET values is rewritten as buckets
of at most LEX_FILL.  The index exists exactly when its directory does: data folded before it
existed gets it the next time the fold touches the key (built from the distinct zset), and
readers fall back to reading the distinct zset while it is missing.
--]]
local LEX_FILL = 96 -- a rewritten bucket holds at most this many (room to grow)

local function lex_dir(dkey)
    return dkey .. ':L'
end

local function lex_bucket(dkey, head)
    return dkey .. ':L:' .. enc(head)
end

-- The head of the bucket that holds (or would hold) v.
local function lex_head(dir, v)
    return call('ZRANGE', dir, '[' .. v, '-', 'BYLEX', 'REV', 'LIMIT', 0, 1)[1] or ''
end

local function zadd_zero(key, values)
    local items = {}
    for i = 1, #values do
        items[2 * i - 1], items[2 * i] = 0, values[i]
    end
    chunked('ZADD', key, items)
end

-- Write sorted values (all >= head, below the next head) as buckets of equal sizes up to
-- LEX_FILL, the first under head.  key holds the values already (possibly as a big zset):
-- it is rewritten.
local function lex_split(dkey, dir, head, key, sorted)
    call('DEL', key)
    local n = #sorted
    local size = math.ceil(n / math.ceil(n / LEX_FILL))
    for i = 1, n, size do
        local piece = { unpack_(sorted, i, math.min(i + size - 1, n)) }
        local h = i == 1 and head or piece[1]
        zadd_zero(lex_bucket(dkey, h), piece)
        if i > 1 then
            call('ZADD', dir, 0, h)
        end
    end
end

-- Build the index of dkey from its distinct zset (Redis sorts: every value at score 0 in
-- one scratch bucket, then cut).
local function lex_build(dkey)
    local values = call('ZRANGE', dkey, 0, -1)
    if #values == 0 then
        return
    end
    local dir = lex_dir(dkey)
    local first = lex_bucket(dkey, '')
    call('ZADD', dir, 0, '')
    zadd_zero(first, values)
    if #values > LEX_BUCKET then
        lex_split(dkey, dir, '', first, call('ZRANGE', first, 0, -1))
    end
end

-- Values of buckets, grouped by head: {head = {values}}.
local function lex_by_head(dir, values)
    local by = {}
    for i = 1, #values do
        local head = lex_head(dir, values[i])
        local list = by[head]
        if not list then
            list = {}
            by[head] = list
        end
        list[#list + 1] = values[i]
    end
    return by
end

-- Keep the index of dkey in step with its distinct zset, after the fold wrote the zset:
-- added = values new to it, removed = values gone from it.
local function lex_update(dkey, added, removed)
    local dir = lex_dir(dkey)
    if call('EXISTS', dir) == 0 then
        lex_build(dkey)
        return
    end
    if #removed > 0 then
        if call('EXISTS', dkey) == 0 then -- the key's last value went
            for head in pairs(lex_by_head(dir, removed)) do
                call('DEL', lex_bucket(dkey, head))
            end
            call('DEL', dir)
            return
        end
        for head, values in pairs(lex_by_head(dir, removed)) do
            local key = lex_bucket(dkey, head)
            chunked('ZREM', key, values)
            if head ~= '' and call('EXISTS', key) == 0 then
                call('ZREM', dir, head)
            end
        end
    end
    for head, values in pairs(lex_by_head(dir, added)) do
        local key = lex_bucket(dkey, head)
        zadd_zero(key, values)
        if call('ZCARD', key) > LEX_BUCKET then
            lex_split(dkey, dir, head, key, call('ZRANGE', key, 0, -1))
        end
    end
end

-- Feed visit(values) the values of dkey's byte-order index (see lex_update), a bucket at a
-- time, ascending or descending from `from` (inclusive; nil = from the first or last
-- value), until visit returns true (then true).  Only called when the index exists.
local function lex_scan(dkey, asc, from, visit)
    local dir = lex_dir(dkey)
    local head
    if from then
        head = lex_head(dir, from)
    elseif asc then
        head = ''
    else
        head = call('ZRANGE', dir, '+', '-', 'BYLEX', 'REV', 'LIMIT', 0, 1)[1] or ''
    end
    local ahead, at = {}, 1 -- the next heads, read a few at a time
    while true do
        local key = lex_bucket(dkey, head)
        local values
        if from then
            if asc then
                values = call('ZRANGE', key, '[' .. from, '+', 'BYLEX')
            else
                values = call('ZRANGE', key, '[' .. from, '-', 'BYLEX', 'REV')
            end
            from = nil
        elseif asc then
            values = call('ZRANGE', key, 0, -1)
        else
            values = call('ZRANGE', key, 0, -1, 'REV')
        end
        if #values > 0 and visit(values) then
            return true
        end
        if at > #ahead then
            if asc then
                ahead = call('ZRANGE', dir, '(' .. head, '+', 'BYLEX', 'LIMIT', 0, 16)
            elseif head == '' then
                ahead = EMPTY
            else
                ahead = call('ZRANGE', dir, '(' .. head, '-', 'BYLEX', 'REV', 'LIMIT', 0, 16)
            end
            at = 1
        end
        head = ahead[at]
        if head == nil then
            return false
        end
        at = at + 1
    end
end

-- The first value of dkey's index >= s (> s when open), or nil.
local function lex_first(dkey, dir, s, open)
    local head = lex_head(dir, s)
    local got = call('ZRANGE', lex_bucket(dkey, head), (open and '(' or '[') .. s, '+', 'BYLEX',
        'LIMIT', 0, 1)[1]
    while not got do
        head = call('ZRANGE', dir, '(' .. head, '+', 'BYLEX', 'LIMIT', 0, 1)[1]
        if not head then
            return nil
        end
        got = call('ZRANGE', lex_bucket(dkey, head), 0, 0)[1]
    end
    return got
end

LexIndex.lex_update = lex_update
LexIndex.lex_dir = lex_dir
LexIndex.lex_first = lex_first
LexIndex.lex_scan = lex_scan
