-- Pages ordered by a string key, two ways around visiting its groups one by one
-- (value_walk.lua calls in here): a table of the filter's matches that each group is looked
-- up in, and the traces holding the key collected first when the matches are spread thin.

local cmp_value, order_fields = Ordering.cmp_value, Ordering.order_fields
local collect_matches, collect_page = Walks.collect_matches, Walks.collect_page
local select_rows = Ordering.select_rows
local enum_source = Enum.enum_source
local each_value, nulls_page = ValueWalk.each_value, ValueWalk.nulls_page

-- Costs of a walk over a table of the matches (microseconds, as query/costs.py's): a group
-- visited (its set read), a trace of it looked up, and a match's order key read to sort it
-- (HGET) instead.
local GROUP_VISIT, TRACE_VISIT, KEY_READ = 5, 0.5, 3.5

-- The members of a group (its set key; leaf: its V leaf, when chunked) that are in left,
-- taken out of it.
local function group_hits(ctx, left, key, leaf)
    local hits = {}
    local function look(batch)
        for i = 1, #batch do
            local no = batch[i]
            if left[no] then
                hits[#hits + 1] = no
                left[no] = nil
            end
        end
        return false
    end
    if leaf then
        enum_source(ctx, leaf, look)
    else
        look(call('SMEMBERS', key))
    end
    return hits
end

-- plan.walk_values[7] = 1: the filter's matches are collected first (as a collect does, but
-- without reading each one's order key), then the groups are walked with their members
-- looked up in that table, where a group otherwise costs calls on the filter's sets for
-- each member.  Few matches for the groups a page would visit are ordered at once instead
-- (their order keys read), and so are all of them once the walk has cost as much (the
-- matches gather in groups far down the order: a filter on the walked key, say).
local function table_walk(ctx, need, out, subcursor)
    local wv = ctx.plan.walk_values
    local dkey, vprefix = wv[1], wv[2]
    local spec, cursor, rest = ctx.order[1], ctx.cursor, ctx.rest
    ctx.collecting = true
    local matches = collect_matches(ctx, nil)
    ctx.collecting = nil
    local m = #matches
    -- (a group's set is read whole: at least one group is visited)
    local distinct = math.max(call('ZCARD', dkey), 1)
    local groups = math.min(distinct, math.max(1, distinct * need / math.max(m, 1)))
    local walk = groups * (GROUP_VISIT + wv[6] / distinct * TRACE_VISIT)
    if m * KEY_READ <= walk then
        select_rows(ctx, matches, need, out)
        return
    end
    local left = {}
    for i = 1, m do
        left[matches[i]] = true
    end
    -- tracked: every match not yet met is in `left` (no group skipped by the cursor or
    -- ordered by a nested walk), so the walk ends when none is left, and the nulls' matches
    -- are what is left at the end
    local remaining, tracked, groups, visited = m, cursor == nil, 0, 0
    local sub = { prefix = ctx.prefix, order = rest }
    sub.fields, sub.pos = order_fields(rest)
    local nested = ctx.plan.walk_next
    local function visit(v, count)
        local c = cursor and cmp_value(spec, v, cursor[1]) or 1
        if c < 0 or not count or GroupOrder.excluded(ctx, dkey, v) then
            return false
        end
        local key = vprefix .. enc(v)
        local gcursor = c == 0 and subcursor or nil
        local leaf = nil
        if count > PLAIN_MAX or (nested and count > 4 * (need - #out)) then
            leaf = { 'V', dkey, vprefix, v }
            leaf.sets = { { key, count > PLAIN_MAX, count } }
        end
        if nested and leaf and GroupOrder.nested_group(ctx, leaf, count, need - #out, gcursor, out)
        then
            tracked = false -- (a large group ordered by a nested walk of the next key)
        else
            local hits = group_hits(ctx, left, key, leaf)
            if #hits > 0 then
                remaining = remaining - #hits
                sub.cursor = gcursor
                select_rows(sub, hits, need - #out, out)
            end
        end
        groups, visited = groups + 1, visited + count
        if #out < need and groups * GROUP_VISIT + visited * TRACE_VISIT > m * KEY_READ then
            for i = #out, 1, -1 do
                out[i] = nil
            end
            select_rows(ctx, matches, need, out)
            return true
        end
        return #out >= need or (tracked and remaining == 0)
    end
    if each_value(dkey, spec, cursor and cursor[1], visit) or #out >= need then
        return
    end
    if not tracked then
        return nulls_page(ctx, need, out, nil, nil)
    end
    local nulls = {}
    for no in pairs(left) do
        nulls[#nulls + 1] = no
    end
    if #nulls > 0 then
        sub.cursor = nil
        select_rows(sub, nulls, need - #out, out)
    end
end

-- --- the key's traces first ----------------------------------------------------------------
-- A walk of values visits a group for each value: when the key is sparse (its traces few,
-- most values held by one or two) and the filter keeps a small share of them, the page's
-- rows lie thinly over hundreds of groups.  Collecting the key's traces (its presence set,
-- enumerated chunk by chunk and intersected with the filter's chunked sets) and ordering the
-- matches by their value then costs a trace where the walk costs a group; the traces
-- without the key follow as the walk's nulls group.

-- Microseconds: a group the walk visits (its set read, its members tested on the filter's
-- sets, the calls around), a trace of the key's presence set enumerated and tested, and a
-- match's order key read.
local GROUP_PAGE_US, KEYED_TRACE_US, KEY_READ_US = 30, 2, 3.5
-- The walk is judged after this many groups, then after four times as many, and so on.
local FIRST_JUDGED = 32

-- A judge of the walk for walk_values_page, or nil when the key has no presence set to
-- collect (an attribute): judge(groups, traces visited, rows found, need) gives the
-- estimated number of the key's traces when collecting them costs less than half of the
-- walk's expected rest, else false.
local function keyed_first_judge(ctx)
    local wv = ctx.plan.walk_values
    if wv[3][1] ~= 'C' then
        return nil
    end
    local judged_at = FIRST_JUDGED
    return function(groups, visited, found, need)
        if groups < judged_at then
            return false
        end
        judged_at = judged_at * 4
        local distinct = call('ZCARD', wv[1])
        local left = distinct - groups
        if left <= 0 or visited <= 0 then
            return false
        end
        local rest = left
        if found > 0 then
            rest = math.min(left, (need - found) * groups / found)
        end
        local keyed = distinct * visited / groups
        local collect_us = keyed * KEYED_TRACE_US + keyed * found / visited * KEY_READ_US
        return 2 * collect_us < rest * GROUP_PAGE_US and keyed
    end
end

-- The page from the key's traces (`keyed`: about how many), then the nulls group: the rows
-- the walk found so far are dropped and found again in order.
local function keyed_first(ctx, need, out, keyed)
    for i = #out, 1, -1 do
        out[i] = nil
    end
    local plan, residual = ctx.plan, ctx.residual
    local keyed_plan = {}
    for k, v in pairs(plan) do
        keyed_plan[k] = v
    end
    keyed_plan.sources = { plan.walk_values[3] }
    ctx.plan, ctx.residual = keyed_plan, ctx.expr
    collect_page(ctx, need, out, nil)
    ctx.plan, ctx.residual = plan, residual
    if #out < need then
        nulls_page(ctx, need, out, floor(keyed), nil)
    end
end

ValueWalk.keyed_first = keyed_first
ValueWalk.keyed_first_judge = keyed_first_judge
ValueWalk.table_walk = table_walk
