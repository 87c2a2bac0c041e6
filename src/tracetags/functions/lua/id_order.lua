-- The byte order of a partition's trace ids (kept by the fold), for pages ordered by
-- request_id, and of the reversed ids, for id patterns with a literal end.

--[[ A page ordered by request_id would otherwise read the id of every candidate and sort
them all.  The ids are instead cut into buckets of neighbouring ids, each the set of their
trace numbers, small enough to stay an intset (~4 B a trace):
  <prefix>:ri              zset, score 0: the head (lowest id) of every bucket, '' included
  <prefix>:ri:<enc(head)>  set of the trace numbers whose id v has head <= v < next head
The first head is '' (below every id).  A bucket past ID_BUCKET numbers is rewritten as
buckets of at most ID_FILL, cut at the ids' byte order (the ids are read from the traces'
hashes, or from the batch for traces it creates).  An emptied bucket leaves the directory
(except '').  Like tsx, the index is kept only for partitions born with it: the batch that
creates the partition's first trace creates the directory; in an older partition it does
not exist and pages ordered by request_id collect and sort instead.
The same buckets over the ids' bytes reversed (<prefix>:rr, <prefix>:rr:<enc(head)>, heads
reversed ids) find the ids ending with a literal (request_id LIKE '%-a1b2') in a bucket or
two instead of every id of the partition.
--]]
local chunked = Sets.chunked

local ID_BUCKET = 512 -- Redis's set-max-intset-entries: past it a set becomes a hash table
local ID_FILL = 320 -- a rewritten bucket holds at most this many (room to grow)

-- rev: the reversed ids' order
local function id_dir(prefix, rev)
    return prefix .. (rev and ':rr' or ':ri')
end

local function id_bucket(prefix, head, rev)
    return prefix .. (rev and ':rr:' or ':ri:') .. enc(head)
end

-- The head of the bucket that holds (or would hold) id.
local function id_head(dir, id)
    return call('ZRANGE', dir, '[' .. id, '-', 'BYLEX', 'REV', 'LIMIT', 0, 1)[1] or ''
end

local function id_lt(a, b)
    if bytewise then
        return a < b
    end
    local n = math.min(#a, #b)
    for i = 1, n do
        local x, y = string.byte(a, i), string.byte(b, i)
        if x ~= y then
            return x < y
        end
    end
    return #a < #b
end

-- {{id, number}, ...} sorted by id (rev: by reversed id, given reversed); known maps
-- numbers to ids the hashes may not hold yet.
local function id_rows(prefix, numbers, known, rev)
    local rows = {}
    local hash_prefix = prefix .. ':t:'
    for i = 1, #numbers do
        local no = numbers[i]
        local id = known[no] or call('HGET', hash_prefix .. no, 'i') or ''
        rows[i] = { rev and string.reverse(id) or id, no }
    end
    table.sort(rows, function(a, b)
        return id_lt(a[1], b[1])
    end)
    return rows
end

-- Rewrite the bucket of head (past ID_BUCKET numbers) as buckets of at most ID_FILL.
local function id_split(prefix, dir, head, known, rev)
    local key = id_bucket(prefix, head, rev)
    local rows = id_rows(prefix, call('SMEMBERS', key), known, rev)
    call('DEL', key)
    local n = #rows
    local size = math.ceil(n / math.ceil(n / ID_FILL))
    for i = 1, n, size do
        local numbers = {}
        for k = i, math.min(i + size - 1, n) do
            numbers[#numbers + 1] = rows[k][2]
        end
        local h = i == 1 and head or rows[i][1]
        chunked('SADD', id_bucket(prefix, h, rev), numbers)
        if i > 1 then
            call('ZADD', dir, 0, h)
        end
    end
end

-- The last of the sorted heads <= id (heads[1] is '').
local function search_head(heads, id)
    local lo, hi = 1, #heads
    while lo < hi do
        local mid = floor((lo + hi + 1) / 2)
        if id_lt(id, heads[mid]) then
            hi = mid - 1
        else
            lo = mid
        end
    end
    return heads[lo]
end

-- Group {id, number} pairs by the head of their bucket: {head = {numbers}}.  Many pairs
-- against a small directory read it once (one call instead of one per id).
local function by_head(dir, pairs_)
    local by = {}
    local heads
    if #pairs_ > 16 and #pairs_ * 4 > call('ZCARD', dir) then
        heads = call('ZRANGE', dir, 0, -1)
    end
    for i = 1, #pairs_ do
        local head = heads and search_head(heads, pairs_[i][1]) or id_head(dir, pairs_[i][1])
        local list = by[head]
        if not list then
            list = {}
            by[head] = list
        end
        list[#list + 1] = pairs_[i][2]
    end
    return by
end

-- {id, number} pairs as {reversed id, number}.
local function reversed_pairs(pairs_)
    local out = {}
    for i = 1, #pairs_ do
        out[i] = { string.reverse(pairs_[i][1]), pairs_[i][2] }
    end
    return out
end

-- One byte order after a batch (see id_order_update); known: number -> id of the added.
local function order_update(prefix, removed, added, known, born, rev)
    local dir = id_dir(prefix, rev)
    if born then
        call('ZADD', dir, 0, '')
    elseif call('EXISTS', dir) == 0 then
        return
    end
    if rev then
        removed, added = reversed_pairs(removed), reversed_pairs(added)
    end
    for head, numbers in pairs(by_head(dir, removed)) do
        local key = id_bucket(prefix, head, rev)
        chunked('SREM', key, numbers)
        if head ~= '' and call('EXISTS', key) == 0 then
            call('ZREM', dir, head)
        end
    end
    for head, numbers in pairs(by_head(dir, added)) do
        local key = id_bucket(prefix, head, rev)
        chunked('SADD', key, numbers)
        if call('SCARD', key) > ID_BUCKET then
            id_split(prefix, dir, head, known, rev)
        end
    end
end

-- After a batch: removed = {id, number} of traces wiped (or renumbered), added = those
-- numbered by it; born: the batch created the partition's first traces.  Each order is
-- kept only where it exists (a partition born before the reversed one has only ri).
local function id_order_update(prefix, removed, added, born)
    local known = {} -- the ids as the hashes will hold them
    for i = 1, #added do
        known[added[i][2]] = added[i][1]
    end
    order_update(prefix, removed, added, known, born, false)
    order_update(prefix, removed, added, known, born, true)
end

IdOrder.id_order_update = id_order_update
IdOrder.id_dir = id_dir
IdOrder.id_bucket = id_bucket
IdOrder.id_head = id_head
IdOrder.id_rows = id_rows
IdOrder.id_lt = id_lt
