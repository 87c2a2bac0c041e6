-- Budgeted scans: a count or stats that would test many candidates runs over several calls,
-- each testing traces in trace-number order from plan.scan[1] until plan.scan[2]
-- microseconds are spent, and replying where the next call starts.
--
-- The cursor is a trace number, which never changes for a trace, so a trace that lives
-- through the whole scan is counted exactly once; one created or changed meanwhile is seen
-- as it is when its chunk is reached (the scan is not a snapshot).

local eval, chunked_key, covers_all = Eval.eval, Eval.chunked_key, Eval.covers_all
local value_sets = Leaves.value_sets
local last_chunk_of, slot = Leaves.last_chunk_of, Leaves.slot
local stats_state, stats_add, stats_rows = Counts.stats_state, Counts.stats_add, Counts.stats_rows

local function now_us()
    local t = call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- The numbers of chunk c of the chunked sets keys (their union) that are >= from, ascending.
local function chunk_from(keys, c, from)
    local got
    local suffix = ':' .. slot(c)
    if #keys == 1 then
        got = call('SMEMBERS', keys[1] .. suffix)
    else
        local names = {}
        for k = 1, #keys do
            names[k] = keys[k] .. suffix
        end
        got = call('SUNION', unpack_(names))
    end
    local base = c * SET_CHUNK
    local numbers = {}
    for i = 1, #got do
        local n = base + tonumber(got[i])
        if n >= from then
            numbers[#numbers + 1] = n
        end
    end
    table.sort(numbers)
    return numbers
end

-- The chunked sets a scan of the one source leaf enumerates (false when it cannot: a value
-- leaf of more than SCAN_UNION_MAX values, holding a plain set, or every trace).
local function source_keys(ctx, leaf)
    local key = chunked_key(ctx, leaf)
    if key then
        return { key }
    end
    if leaf[1] ~= 'V' or #leaf - 3 > SCAN_UNION_MAX or covers_all(ctx, leaf) then
        return false
    end
    local keys = {}
    for _, set in ipairs(value_sets(leaf)) do
        if not set[2] then
            return false
        end
        keys[#keys + 1] = set[1]
    end
    return #keys > 0 and keys
end

-- What the scan enumerates and tests: the chunked sets of the plan's one source and the
-- residual, or every trace (the chunked set <prefix>:all) and the whole filter.
local function scan_target(ctx)
    local sources = ctx.plan.sources
    if sources and #sources == 1 then
        local keys = source_keys(ctx, sources[1])
        if keys then
            return keys, ctx.residual
        end
    end
    return { ctx.prefix .. ':all' }, ctx.expr
end

-- Feed on_batch the matches of traces from plan.scan[1] on, in small batches sized to the
-- budget left (on_batch returns the microseconds its matches add to the reply's making,
-- reserved out of the budget); returns the trace number the next call starts from (-1:
-- done).
local function scan(ctx, on_batch)
    local from, budget = ctx.plan.scan[1], ctx.plan.scan[2]
    -- The call's setup (unpacking the plan, sizing its value leaves: ~3 us a value) counts
    -- against the budget up to half of it, so that a call always gets through some traces.
    local t = now_us()
    local start = math.max(ctx.started or t, t - floor(budget / 2))
    local keys, expr = scan_target(ctx)
    local last = last_chunk_of(ctx)
    local size = 8
    local reserved = 0 -- microseconds the reply will take to build (stats rows)
    for c = floor(from / SET_CHUNK), last do
        local numbers = chunk_from(keys, c, from)
        local i = 1
        while i <= #numbers do
            local j = math.min(i + size - 1, #numbers)
            local batch = {}
            for k = i, j do
                batch[k - i + 1] = int(numbers[k])
            end
            local t0 = now_us()
            reserved = reserved + (on_batch(eval(ctx, expr, batch)) or 0)
            local t1 = now_us()
            local left = budget - (t1 - start) - reserved
            if left <= 0 then
                return j < #numbers and numbers[j + 1] or (c + 1) * SET_CHUNK
            end
            -- The next batch: what the rest of the budget allows at this batch's cost per
            -- trace, at most twice this one (a cheap batch may precede a dear one).
            local per = math.max(t1 - t0, 1) / (j - i + 1)
            size = math.max(1, math.min(2 * size, floor(left / per / 2), 4096))
            i = j + 1
        end
        if now_us() - start >= budget then
            return c < last and (c + 1) * SET_CHUNK or -1
        end
    end
    return -1
end

-- count with plan.scan: {next trace number or -1, matches counted by this call}.
local function count_scan(ctx)
    local total = 0
    local next_from = scan(ctx, function(got)
        total = total + #got
    end)
    return { next_from, total }
end

-- Reply time of one stats row (its group values and durations, made into RESP by Redis).
local ROW_US = 15

-- stats with plan.scan: {next trace number or -1, rows of this call's matches}.
local function stats_scan(ctx)
    local state = stats_state(ctx)
    local next_from = scan(ctx, function(got)
        local before = #state.names
        stats_add(state, got)
        return (#state.names - before) * ROW_US
    end)
    return { next_from, stats_rows(state) }
end

Budget.now_us = now_us
Budget.scan = scan
Budget.count_scan = count_scan
Budget.stats_scan = stats_scan
