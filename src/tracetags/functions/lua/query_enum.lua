-- Candidate enumeration: a plan's sources, or every trace, fed in batches.

local chunk_numbers, unscored = Sets.chunk_numbers, Sets.unscored
local QUERY_BATCH, last_chunk_of = Leaves.QUERY_BATCH, Leaves.last_chunk_of
local score_bound, slot, value_sets = Sets.score_bound, Leaves.slot, Leaves.value_sets
local chunked_key, covers_all = Eval.chunked_key, Eval.covers_all

-- The trace numbers in chunk c of every chunked set of keys (SMEMBERS for one, SINTER), or
-- with minus (one key only) those of its members in none of minus's sets (SDIFF); names: a
-- scratch table for the chunk keys.
local function chunk_members(keys, c, names, minus)
    local suffix = ':' .. slot(c)
    for k = 1, #keys do
        names[k] = keys[k] .. suffix
    end
    local got
    if minus and #minus > 0 then
        for m = 1, #minus do
            names[m + 1] = minus[m] .. suffix
        end
        got = call('SDIFF', unpack_(names, 1, #minus + 1))
    else
        got = #keys == 1 and call('SMEMBERS', names[1]) or call('SINTER', unpack_(names, 1, #keys))
    end
    return chunk_numbers(got, c)
end

-- Feed fn batches of the members common to the chunked sets keys (one: its members; with
-- minus, see chunk_members), chunk by chunk; true when fn asked to stop.
local function enum_chunks_of(ctx, keys, fn, minus)
    local names = {}
    for c = 0, last_chunk_of(ctx) do
        local got = chunk_members(keys, c, names, minus)
        if #got > 0 and fn(got) then
            return true
        end
    end
    return false
end

-- Feed fn batches of the chunked set key's members; true when fn asked to stop.
local function enum_chunked(ctx, key, fn)
    return enum_chunks_of(ctx, { key }, fn)
end

local function enum_rank(zkey, first, count, fn)
    local rank = first
    local last = first + count - 1
    while rank <= last do
        local got = call('ZRANGE', zkey, rank, math.min(rank + QUERY_BATCH - 1, last))
        if #got == 0 then
            break
        end
        if fn(got) then
            return true
        end
        rank = rank + #got
    end
    return false
end

-- Every trace of the partition: the ts zset by rank, then (rarely) the traces without a
-- timestamp from a walk of the chunked set <prefix>:all (HLEN of <prefix>:ids, one field per
-- live trace, tells whether there are any).
local function enum_all(ctx, fn, skip_timed)
    local ts = ctx.prefix .. ':ts'
    local timed = call('ZCARD', ts)
    if not skip_timed and enum_rank(ts, 0, timed, fn) then
        return true
    end
    if call('HLEN', ctx.prefix .. ':ids') <= timed then
        return false
    end
    return enum_chunked(ctx, ctx.prefix .. ':all', function(got)
        local batch = unscored(ts, got)
        return #batch > 0 and fn(batch)
    end)
end

local function enum_source(ctx, src, fn)
    local kind = src[1]
    if kind == 'V' then
        local sets = value_sets(src)
        for s = 1, #sets do
            local set = sets[s]
            if set[2] then
                if enum_chunked(ctx, set[1], fn) then
                    return true
                end
            else
                local got = call('SMEMBERS', set[1])
                if #got > 0 and fn(got) then
                    return true
                end
            end
        end
        return false
    elseif kind == 'C' then
        return enum_chunked(ctx, src[2], fn)
    elseif kind == 'R' then
        local zkey = ctx.prefix .. ':' .. src[2]
        local lo, lo_open = score_bound(src[3])
        local first = 0
        if lo ~= -math.huge then
            -- Ranks below the range: scores < lo (or <= lo when lo is exclusive).
            local below = lo_open and sub(src[3], 2) or ('(' .. src[3])
            first = call('ZCOUNT', zkey, '-inf', below)
        end
        return enum_rank(zkey, first, call('ZCOUNT', zkey, src[3], src[4]), fn)
    elseif kind == 'E' then
        local batch = {}
        for i = 2, #src do
            batch[#batch + 1] = tostring(src[i])
            if #batch == QUERY_BATCH then
                if fn(batch) then
                    return true
                end
                batch = {}
            end
        end
        return #batch > 0 and fn(batch)
    elseif kind == '!' and src[2][1] == 'C' then
        -- the traces without a key: every trace's chunk minus the key's (SDIFF)
        return enum_chunks_of(ctx, { ctx.prefix .. ':all' }, fn, { src[2][2] })
    elseif kind == 'A' then
        return enum_all(ctx, fn, false)
    elseif kind == 'Z' then
        return false
    end
    fail('BADPLAN', 'cannot enumerate leaf kind ' .. tostring(kind))
end

-- Feed fn batches of candidates: the plan's sources (deduplicated when several) or every trace.
local function enum_candidates(ctx, fn)
    local sources = ctx.plan.sources
    if not sources or #sources == 0 then
        return enum_all(ctx, fn, false)
    end
    if #sources == 1 then
        return enum_source(ctx, sources[1], fn)
    end
    local seen = {}
    for s = 1, #sources do
        local stop = enum_source(ctx, sources[s], function(batch)
            local fresh = {}
            for i = 1, #batch do
                if not seen[batch[i]] then
                    seen[batch[i]] = true
                    fresh[#fresh + 1] = batch[i]
                end
            end
            return #fresh > 0 and fn(fresh)
        end)
        if stop then
            return true
        end
    end
    return false
end

-- Regroup the batches an enumerator feeds into lists of up to EVAL_BATCH candidates: a
-- chunked leaf tests a list with one SMISMEMBER per chunk it touches, so large lists cost
-- far fewer calls per candidate than QUERY_BATCH-number batches.
-- A call with a deadline tests smaller lists: a list's grouping by chunk is Lua work with no
-- Redis call in between, which the deadline's clock (read between Redis calls) cannot cut.
local EVAL_BATCH, DEADLINE_EVAL_BATCH = 32768, 2048
Enum.eval_batch = EVAL_BATCH

local function buffered(enum, fn)
    local buf = {}
    local stop = enum(function(batch)
        local n = #buf
        for i = 1, #batch do
            buf[n + i] = batch[i]
        end
        if #buf >= Enum.eval_batch then
            local full = buf
            buf = {}
            return fn(full)
        end
        return false
    end)
    if stop then
        return true
    end
    return #buf > 0 and fn(buf) or false
end

-- The conjuncts of a plan node (itself when it is not an AND), and the node of a list of
-- conjuncts ({'A'} for none).
local function conjuncts(node)
    if node[1] == '&' then
        return { unpack_(node, 2) }
    end
    return { node }
end

local function conjunction(parts)
    if #parts == 0 then
        return { 'A' }
    end
    return #parts == 1 and parts[1] or { '&', unpack_(parts) }
end

-- The conjuncts of expr that are one chunked set each (their keys), and the others as one
-- node; with negated, the conjuncts that are NOT of one chunked set instead.
local function split_conjunction(ctx, expr, negated)
    local keys, rest = {}, {}
    for _, child in ipairs(conjuncts(expr)) do
        local key
        if negated then
            key = child[1] == '!' and chunked_key(ctx, child[2])
        else
            key = chunked_key(ctx, child)
        end
        if key then
            keys[#keys + 1] = key
        else
            rest[#rest + 1] = child
        end
    end
    return keys, conjunction(rest)
end

-- The chunked sets of a conjunct that is a V leaf of a few dense values (experiment_ids
-- naming several experiments), for chunk_join to intersect with each in turn: a trace holds
-- one value of a key, so those intersections are disjoint and their union needs no dedup.
local UNION_MAX = 8

local function union_sets(ctx, node)
    if node[1] ~= 'V' or #node - 3 > UNION_MAX or covers_all(ctx, node) then
        return nil
    end
    local sets = value_sets(node)
    local keys, seen = {}, {}
    for s = 1, #sets do
        if not sets[s][2] then
            return nil
        end
        if not seen[sets[s][1]] then
            seen[sets[s][1]] = true
            keys[#keys + 1] = sets[s][1]
        end
    end
    return #keys >= 2 and keys or nil
end

-- Per chunk, the members of every chunked set of keys and of one of the sets of union: one
-- SINTER per set of union.
local function enum_union_chunks(ctx, keys, union, fn)
    local names = {}
    local n = #keys + 1
    for c = 0, last_chunk_of(ctx) do
        local suffix = ':' .. slot(c)
        for k = 1, #keys do
            names[k] = keys[k] .. suffix
        end
        for u = 1, #union do
            names[n] = union[u] .. suffix
            local got = chunk_numbers(call('SINTER', unpack_(names, 1, n)), c)
            if #got > 0 and fn(got) then
                return true
            end
        end
    end
    return false
end

-- When the candidates come from one chunked set and the residual filter ANDs other chunked
-- sets: an enumerator of their intersection, one SINTER per chunk (Redis intersects <= 512
-- offsets natively; Lua only sees the matches), and what the matches must still pass.  A
-- conjunct of a few dense values joins too, one SINTER per value and chunk.
local function chunk_join(ctx)
    local sources = ctx.plan.sources
    if not sources or #sources ~= 1 then
        return nil
    end
    local first = chunked_key(ctx, sources[1])
    if not first then
        return nil
    end
    local keys, left = split_conjunction(ctx, ctx.residual)
    local minus, union = nil, nil
    if #keys == 0 then
        -- no other chunked set to intersect: the chunked sets the filter excludes (a key
        -- IS NULL) are taken out of the source's chunks instead (SDIFF)
        minus, left = split_conjunction(ctx, left, true)
        if #minus == 0 then
            minus = nil
        end
    end
    local narrowed = false -- (by another chunked set: the few members left are tested)
    for k = 1, #keys do
        narrowed = narrowed or keys[k] ~= first
    end
    if not minus and not narrowed and left[1] ~= '&' then
        -- (only as the last test: before others, such as a range that few candidates
        -- pass, its SINTER per value would cost more calls than it spares)
        union = union_sets(ctx, left)
        if union then
            left = { 'A' }
        end
    end
    if #keys == 0 and not minus and not union then
        return nil
    end
    table.insert(keys, 1, first)
    local function enumerate(fn)
        if union then
            return enum_union_chunks(ctx, keys, union, fn)
        end
        return enum_chunks_of(ctx, keys, fn, minus)
    end
    return enumerate, left
end

Enum.buffered = buffered
Enum.EVAL_BATCH, Enum.DEADLINE_EVAL_BATCH = EVAL_BATCH, DEADLINE_EVAL_BATCH
Enum.chunk_join = chunk_join
Enum.chunk_members = chunk_members
Enum.enum_all = enum_all
Enum.enum_candidates = enum_candidates
Enum.split_conjunction = split_conjunction
Enum.conjuncts, Enum.conjunction = conjuncts, conjunction
Enum.enum_source = enum_source
