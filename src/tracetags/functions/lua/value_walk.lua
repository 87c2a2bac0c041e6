-- Pages ordered by a string key: its distinct values walked in order, each a group.

local zmscore = Sets.zmscore
local lex_dir, lex_scan = LexIndex.lex_dir, LexIndex.lex_scan
local ORDER_ZSETS, cmp_value = Ordering.ORDER_ZSETS, Ordering.cmp_value
local order_fields = Ordering.order_fields
local chunk_walk_page, collect_page = Walks.chunk_walk_page, Walks.collect_page
local collect_matches, select_rows = Walks.collect_matches, Ordering.select_rows
local key_values = Ordering.key_values
local walk_page = Walks.walk_page
local conjunction, enum_source = Enum.conjunction, Enum.enum_source
local split_conjunction = Enum.split_conjunction
local eval = Eval.eval

-- Distinct zsets are scored by count, so the values are sorted here (byte order = code
-- point order) and each value's set is a group, in order; within a group the rest of the
-- order keys decide, by walking their zset or collecting the group's matches.  Stops as soon
-- as the page is full; traces without the key (nulls) come last whatever the direction.

-- The chunk walk of a group: the chunks it reads to find `need` of its `matches` (those
-- newest chunks, and one more: the next chunk's times overlap the last), each priced as
-- CHUNK_VISIT walked entries (its SINTER and the time bounds read) plus its candidates, the
-- members there of the smallest chunked set the walk intersects (the group's, or the plan's
-- source's when that is a chunked set too: its count is the plan's candidates, `cost`),
-- each read, timed and ranked (CHUNK_MEMBER walked entries).
local CHUNK_VISIT, CHUNK_MEMBER = 3, 1.5

-- minus_only: no conjunct is one chunked set, so a chunk's candidates are every trace of
-- it but the excluded keys' (SDIFF): about the group's matches there, not its members.
local function chunk_walk_cost(ctx, gcount, matches, need, total, cost, minus_only)
    local smallest = gcount
    local sources = ctx.plan.sources
    if sources and #sources == 1 and Eval.chunked_key(ctx, sources[1]) then
        smallest = math.min(gcount, cost)
    end
    if minus_only then
        smallest = math.min(smallest, matches)
    end
    local chunks = need * total / (matches * SET_CHUNK) + 1
    return chunks * (CHUNK_VISIT + CHUNK_MEMBER * smallest * SET_CHUNK / total)
end

-- A candidate tested by its register (a value leaf of many values with its field in the
-- plan's value_fields: an HGET and a lookup) costs this many walked entries.  A collect reads
-- one for each of the group's candidates; a walk of ts only for the candidates it meets
-- (ts goes with the chunks, so the rest fail at a lookup in the chunk's intersection).
local REGISTER_ENTRIES = 3

-- A group ordered by a time key (its zset): walked, or newest first by its chunked set's
-- chunks (see chunk_walk_page: only the group's members in the chunks visited are tested,
-- not every walked trace), when that costs less than collecting the group (source_cost);
-- true when the group's rows are in out, false when the caller is to collect it.
local function walk_group(ctx, sub, gleaf, gcount, need, out, source_cost)
    local spec = ctx.rest[1]
    local zname = ORDER_ZSETS[spec[2]]
    local wv = ctx.plan.walk_values
    local frac, total = wv[4], wv[6]
    local matches = gcount * frac
    local scan = matches > 0 and need * total / matches or total
    local others = GroupOrder.other_keys(ctx.expr, gleaf)
    local gexpr = { '&', gleaf, unpack_(others) }
    -- chunkable: a conjunct of one chunked set, or one excluding a chunked set (a key IS
    -- NULL: every trace's chunk minus the key's), so the chunk walk can take the group
    local by_chunks, chunkable = math.huge, false
    if zname == 'ts' and spec[3] == 0 and ctx.plan.time_bounds and matches > 0 then
        local positive = #split_conjunction(sub, gexpr)
        chunkable = positive > 0 or #split_conjunction(sub, gexpr, true) > 0
        by_chunks = chunk_walk_cost(ctx, gcount, matches, need, total, wv[5], positive == 0)
    end
    local sources = ctx.plan.sources
    local source = gcount > wv[5] and sources and #sources == 1 and sources[1]
    local reg = zname == 'ts' and REGISTER_ENTRIES * GroupOrder.register_leaves(ctx, others, source)
        or 0
    local walk_cost = scan * (1 + reg * source_cost / math.max(total, 1))
    local collect_cost = source_cost * (1 + reg)
    if walk_cost >= collect_cost and by_chunks >= source_cost then
        return false
    end
    -- one conjunction (not nested), so that its chunked sets are tested together
    sub.expr = gexpr
    local newest = by_chunks < scan and chunkable
    if walk_cost >= collect_cost and not newest then
        return false
    end
    sub.density = matches / total
    local before = #out
    local exhausted = nil
    if newest then
        local visits = need * total / (matches * SET_CHUNK) * 1.5 + 1
        exhausted = chunk_walk_page(sub, need, out, math.max(8, math.ceil(3 * visits)))
        if exhausted == 'abandon' and walk_cost >= collect_cost then
            return false -- (chosen for its chunks alone: the group is collected)
        end
    end
    if exhausted == nil or exhausted == 'abandon' then
        exhausted = walk_page(sub, zname, spec[3] == 1, need, out)
    end
    if exhausted and #out - before < need then
        sub.plan = ctx.plan
        sub.residual = { '&', gleaf, unpack_(GroupOrder.other_keys(ctx.residual, gleaf)) }
        collect_page(sub, need - (#out - before), out, ctx.prefix .. ':' .. zname)
    end
    return true
end

-- The context a group's rows are found and ordered in: the rest of the order keys, from
-- `cursor` (nil: from the group's first row).
local function group_context(ctx, cursor)
    local sub = {
        prefix = ctx.prefix, scanned = 0, last_chunk = ctx.last_chunk, order = ctx.rest,
        cursor = cursor, value_fields = ctx.plan.value_fields,
    }
    sub.fields, sub.pos = order_fields(ctx.rest)
    return sub
end

local function group_page(ctx, gleaf, gcount, need, cursor, out)
    if GroupOrder.nested_group(ctx, gleaf, gcount, need, cursor, out) then
        return
    end
    local rest = ctx.rest
    local sub = group_context(ctx, cursor)
    local spec = rest[1]
    local cost = ctx.plan.walk_values[5]
    local enumerable = gleaf[1] == 'V'
    local source_cost = enumerable and math.min(gcount, cost) or cost
    local timed = spec[1] == 'n' and ORDER_ZSETS[spec[2]]
    if not (timed and walk_group(ctx, sub, gleaf, gcount, need, out, source_cost)) then
        if enumerable and gcount <= cost then
            sub.plan = { sources = { gleaf } }
            sub.residual = conjunction(GroupOrder.other_keys(ctx.expr, gleaf))
        else
            sub.plan = ctx.plan
            sub.residual = { '&', gleaf, unpack_(GroupOrder.other_keys(ctx.residual, gleaf)) }
        end
        collect_page(sub, need, out, nil)
    end
    ctx.scanned = ctx.scanned + sub.scanned
end

-- Feed visit(value, count) the values of the distinct zset dkey in byte order (descending
-- unless asc), stopping when it returns true (then true).  Sorting every value (tens of
-- thousands of user ids) is avoided: a sorted sample cuts the values into windows, taken in order
-- with one pass each (windows double in size); only a window's values are sorted.
-- `from`: skip windows wholly before this value (the cursor's), if given.
local WINDOW_SAMPLES = 64

local function windowed_values(dkey, asc, from, visit)
    if call('EXISTS', lex_dir(dkey)) == 1 then
        return lex_scan(dkey, asc, from, function(window)
            local scores = zmscore(dkey, window)
            for i = 1, #window do
                if visit(window[i], scores[i]) then
                    return true
                end
            end
            return false
        end)
    end
    local values = call('ZRANGE', dkey, 0, -1)
    local n = #values
    local sample = {}
    if n > 4 * WINDOW_SAMPLES then
        local stride = n / WINDOW_SAMPLES
        for k = 1, WINDOW_SAMPLES - 1 do
            sample[k] = values[floor(k * stride)]
        end
        table.sort(sample)
    end
    -- Window bounds in walk order: (lo, hi] with nil = unbounded.
    local bounds = {}
    local m = #sample
    local step, k = 1, 0
    while k < m do
        k = math.min(m, k + step)
        bounds[#bounds + 1] = asc and sample[k] or sample[m - k + 1]
        step = step * 2
    end
    bounds[#bounds + 1] = false
    local prev = false
    for w = 1, #bounds do
        local bound = bounds[w]
        local lo, hi
        if asc then
            lo, hi = prev, bound
        else
            lo, hi = bound, prev
        end
        -- skip a window wholly before the cursor value
        local skip = from and ((asc and hi and hi < from) or (not asc and lo and lo >= from))
        if not skip then
            local window = {}
            for i = 1, n do
                local v = values[i]
                if (not lo or v > lo) and (not hi or v <= hi) then
                    window[#window + 1] = v
                end
            end
            table.sort(window)
            local count = #window
            if not asc then
                for i = 1, floor(count / 2) do
                    window[i], window[count - i + 1] = window[count - i + 1], window[i]
                end
            end
            local scores = zmscore(dkey, window)
            for i = 1, count do
                if visit(window[i], scores[i]) then
                    return true
                end
            end
        end
        prev = bound
    end
    return false
end

-- Feed visit(value, count) the distinct values of dkey in the order of spec, from the
-- cursor's value `from` (nil: from the first); true when visit stopped the walk, else false
-- and the number of traces with the key when it was counted on the way (nil otherwise).
local function each_value(dkey, spec, from, visit)
    if spec[1] == 's' and (bytewise or call('EXISTS', lex_dir(dkey)) == 1) then
        return windowed_values(dkey, spec[3] == 1, from, visit), nil
    end
    local flat = call('ZRANGE', dkey, 0, -1, 'WITHSCORES')
    local values, counts = {}, {}
    local present = 0
    for i = 1, #flat, 2 do
        local n = tonumber(flat[i + 1])
        values[#values + 1] = flat[i]
        counts[flat[i]] = n
        present = present + n
    end
    table.sort(values, function(a, b)
        return cmp_value(spec, a, b) < 0
    end)
    for i = 1, #values do
        if visit(values[i], counts[values[i]]) then
            return true, nil
        end
    end
    return false, present
end

-- The traces without the walked key (nulls come last), as one more group.
local function nulls_page(ctx, need, out, present, nulls_cursor)
    local wv = ctx.plan.walk_values
    if present == nil then
        present = 0
        local flat = call('ZRANGE', wv[1], 0, -1, 'WITHSCORES')
        for i = 2, #flat, 2 do
            present = present + tonumber(flat[i])
        end
    end
    local nulls = call('HLEN', ctx.prefix .. ':ids') - present
    if nulls > 0 then
        group_page(ctx, { '!', wv[3] }, nulls, need - #out, nulls_cursor, out)
    end
end

-- Small groups (a key of many values, a few traces each) are gathered until they hold
-- SMALL_BATCH traces, then read and tested on the filter at once: a collect of each costs
-- its set-up and calls per group.  A group of at most SMALL_GROUP traces and 4 pages is
-- small (a nested walk takes larger ones only: GroupOrder.nested_group).
local SMALL_GROUP, SMALL_BATCH = 8, 64

-- add(v, count) gathers a small group (true when the batch is full); flush(need) reads the
-- gathered groups' sets, tests their members on the whole filter and appends the rows of
-- each group in turn (ordered by the rest of the order keys) until out holds `need`.
local function small_groups(ctx, out)
    local vprefix = ctx.plan.walk_values[2]
    local sub = group_context(ctx, nil)
    local pending, traces, batch = {}, 0, {}
    function batch.add(v, count)
        pending[#pending + 1] = v
        traces = traces + count
        return traces >= SMALL_BATCH
    end
    function batch.flush(need)
        if #pending == 0 then
            return
        end
        local members, owner = {}, {}
        for g = 1, #pending do
            local got = call('SMEMBERS', vprefix .. enc(pending[g]))
            for i = 1, #got do
                members[#members + 1] = got[i]
                owner[got[i]] = g -- (a trace has one value of the key: one group)
            end
        end
        local hits = eval(sub, ctx.expr, members)
        ctx.scanned = ctx.scanned + #hits
        -- (the next order key of every hit read at once: one call, not one a group)
        local values = #hits > 0 and key_values(sub, hits, 1)
        local per, per_values = {}, {}
        for i = 1, #hits do
            local g = owner[hits[i]]
            if not per[g] then
                per[g], per_values[g] = {}, {}
            end
            local list = per[g]
            list[#list + 1] = hits[i]
            per_values[g][#list] = values[i]
        end
        for g = 1, #pending do
            if #out >= need then
                break
            end
            if per[g] then
                select_rows(sub, per[g], need - #out, out, per_values[g])
            end
        end
        pending, traces = {}, 0
    end
    return batch
end

-- budget (the page's own walk only): once the groups visited hold this many traces and
-- none matched, returns 'abandon' (matches far rarer than planned: the caller collects).
local function walk_values_page(ctx, need, out, budget)
    local wv = ctx.plan.walk_values
    local dkey, vprefix = wv[1], wv[2]
    local order, cursor = ctx.order, ctx.cursor
    local spec = order[1]
    local rest, subcursor = {}, nil
    for k = 2, #order do
        rest[k - 1] = order[k]
    end
    ctx.rest = rest
    if cursor then
        subcursor = {}
        for k = 2, #cursor do
            subcursor[k - 1] = cursor[k]
        end
    end
    if cursor and cursor[1] == false then
        return nulls_page(ctx, need, out, nil, subcursor)
    end
    if wv[7] == 1 then
        return ValueWalk.table_walk(ctx, need, out, subcursor)
    end
    local visited, abandoned, groups, keyed = 0, false, 0, nil
    local judge = ValueWalk.keyed_first_judge(ctx)
    local small = small_groups(ctx, out)
    -- Once groups' rows are in out: true when the page is full (or the walk abandoned, or
    -- is to collect the key's traces instead).
    local function judged()
        if budget and #out == 0 and visited >= budget then
            abandoned = true
            return true
        end
        keyed = judge and #out < need and judge(groups, visited, #out, need)
        return keyed or #out >= need
    end
    local function visit(v, count)
        local c = cursor and cmp_value(spec, v, cursor[1]) or 1
        if c >= 0 and count and not GroupOrder.excluded(ctx, dkey, v) then
            visited, groups = visited + count, groups + 1
            if c > 0 and count <= SMALL_GROUP and count <= 4 * (need - #out) then
                if small.add(v, count) then
                    small.flush(need)
                    return judged()
                end
                return false
            end
            small.flush(need)
            if #out >= need then
                return true
            end
            local leaf = { 'V', dkey, vprefix, v }
            leaf.sets = { { vprefix .. enc(v), count > PLAIN_MAX, count } }
            group_page(ctx, leaf, count, need - #out, c == 0 and subcursor or nil, out)
            return judged()
        end
        return #out >= need
    end
    local stopped, present = each_value(dkey, spec, cursor and cursor[1], visit)
    if keyed then
        return ValueWalk.keyed_first(ctx, need, out, keyed)
    elseif stopped then
        return abandoned and 'abandon' or nil
    end
    small.flush(need)
    if #out >= need then
        return
    elseif budget and #out == 0 and visited >= budget then
        return 'abandon'
    end
    nulls_page(ctx, need, out, present, nil)
end

ValueWalk.walk_values_page = walk_values_page
ValueWalk.each_value = each_value
ValueWalk.group_page = group_page
ValueWalk.nulls_page = nulls_page
