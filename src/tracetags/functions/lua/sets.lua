-- Sets of trace numbers: long commands sent in chunks, and chunked sets (chunk c of key K is
-- K:<c>, holding the offsets number - c * SET_CHUNK: each chunk stays an intset).

local function chunked(command, key, items)
    local n = #items
    if n <= CHUNK then
        call(command, key, unpack_(items))
        return
    end
    for i = 1, n, CHUNK do
        call(command, key, unpack_(items, i, math.min(i + CHUNK - 1, n)))
    end
end

-- HMGET of many fields; missing ones come back as false.
local function hmget(key, fields)
    local n = #fields
    if n <= CHUNK then
        return call('HMGET', key, unpack_(fields))
    end
    local out = {}
    for i = 1, n, CHUNK do
        local got = call('HMGET', key, unpack_(fields, i, math.min(i + CHUNK - 1, n)))
        for j = 1, #got do
            out[i + j - 1] = got[j]
        end
    end
    return out
end

-- Numbers grouped by chunk: { [chunk] = {offsets} }.  pos = { chunk = {}, offset = {} }
-- caches each number's chunk and offset text (a number's sets are many, its parse one).
local function by_chunk(numbers, pos)
    local out = {}
    local chunks, offsets = pos.chunk, pos.offset
    for i = 1, #numbers do
        local no = numbers[i]
        local c = chunks[no]
        if not c then
            local n = tonumber(no)
            c = floor(n / SET_CHUNK)
            chunks[no], offsets[no] = c, DECIMAL[n - c * SET_CHUNK]
        end
        local list = out[c]
        if not list then
            list = {}
            out[c] = list
        end
        list[#list + 1] = offsets[no]
    end
    return out
end

local function chunked_write(command, key, numbers, pos)
    for c, offsets in pairs(by_chunk(numbers, pos)) do
        chunked(command, key .. ':' .. int(c), offsets)
    end
end

-- Every member (trace number) of a chunked set whose chunks are 0..last_chunk; deletes it.
local function take_chunked(key, last_chunk)
    local members = {}
    for c = 0, last_chunk do
        local chunk_key = key .. ':' .. int(c)
        local got = call('SMEMBERS', chunk_key)
        if #got > 0 then
            local base = c * SET_CHUNK
            for i = 1, #got do
                members[#members + 1] = int(base + tonumber(got[i]))
            end
            call('DEL', chunk_key)
        end
    end
    return members
end

local function set_of(list)
    local out = {}
    for i = 1, #list do
        out[list[i]] = true
    end
    return out
end

-- Rewrite a value set whose form changes: every current member, minus rem, plus add.
local function members_after(current, rem, add)
    local removed = set_of(rem)
    local out = {}
    for i = 1, #current do
        if not removed[current[i]] then
            out[#out + 1] = current[i]
        end
    end
    for i = 1, #add do
        out[#out + 1] = add[i]
    end
    return out
end

-- The member counts of values in the distinct zset dkey (0 when absent).
local function value_counts(dkey, values)
    local counts = {}
    local n = #values
    for i = 1, n, CHUNK do
        local got = call('ZMSCORE', dkey, unpack_(values, i, math.min(i + CHUNK - 1, n)))
        for j = 1, #got do
            counts[i + j - 1] = got[j] and tonumber(got[j]) or 0
        end
    end
    return counts
end

local function zmscore(zkey, members)
    local out = {}
    local n = #members
    for i = 1, n, CHUNK do
        local got = call('ZMSCORE', zkey, unpack_(members, i, math.min(i + CHUNK - 1, n)))
        for j = 1, #got do
            out[i + j - 1] = got[j] and tonumber(got[j]) or false
        end
    end
    return out
end

-- The trace numbers (decimal strings) of offsets of chunk c, in place.
local function chunk_numbers(offsets, c)
    local base = c * SET_CHUNK
    for i = 1, #offsets do
        offsets[i] = int(base + tonumber(offsets[i]))
    end
    return offsets
end

-- The members of list without a score in zkey, in order.
local function unscored(zkey, list)
    local scores = zmscore(zkey, list)
    local out = {}
    for i = 1, #list do
        if not scores[i] then
            out[#out + 1] = list[i]
        end
    end
    return out
end

-- A score bound of a range leaf ('(' for exclusive, '-inf', '+inf') as (number, open).
local function score_bound(text)
    local open = sub(text, 1, 1) == '('
    local body = open and sub(text, 2) or text
    if body == '-inf' then
        return -math.huge, open
    elseif body == '+inf' or body == 'inf' then
        return math.huge, open
    end
    return tonumber(body), open
end

local function in_range(leaf, score)
    if leaf.lo == nil then
        leaf.lo, leaf.lo_open = score_bound(leaf[3])
        leaf.hi, leaf.hi_open = score_bound(leaf[4])
    end
    if score < leaf.lo or (leaf.lo_open and score == leaf.lo) then
        return false
    end
    if score > leaf.hi or (leaf.hi_open and score == leaf.hi) then
        return false
    end
    return true
end

Sets.chunked = chunked
Sets.by_chunk = by_chunk
Sets.chunked_write = chunked_write
Sets.members_after = members_after
Sets.take_chunked = take_chunked
Sets.value_counts = value_counts
Sets.hmget = hmget
Sets.zmscore = zmscore
Sets.chunk_numbers = chunk_numbers
Sets.unscored = unscored
Sets.score_bound = score_bound
Sets.in_range = in_range
