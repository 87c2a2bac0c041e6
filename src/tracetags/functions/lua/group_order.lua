-- Pages ordered by several keys: the groups of a walk of values ordered by the next key
-- without sorting them (value_walk.lua calls in here).

local order_fields = Ordering.order_fields
local id_walk_page = IdWalk.id_walk_page
local conjuncts, conjunction = Enum.conjuncts, Enum.conjunction

-- True when the filter's conjunction holds a value set of dkey that lacks v: the group of
-- value v holds no match (ordering by experiment_id within experiment_ids=[...], or by a
-- key the filter pins), so the walk skips it instead of testing the group's traces.
local function excluded(ctx, dkey, v)
    local pinned = ctx.pinned
    if pinned == nil then
        pinned = {}
        for _, node in ipairs(conjuncts(ctx.expr)) do
            if node[1] == 'V' then
                local allowed = pinned[node[2]] or {}
                for i = 4, #node do
                    allowed[node[i]] = true
                end
                pinned[node[2]] = allowed
            end
        end
        ctx.pinned = pinned
    end
    local allowed = pinned[dkey]
    return allowed ~= nil and not allowed[v]
end

-- The conjuncts of expr but the value sets of the group's own key that allow the group's
-- value: they hold for every trace of the group (experiment_ids=[...] ordered by
-- experiment_id), so testing them on each candidate is waste.
local function other_keys(expr, gleaf)
    local parts = conjuncts(expr)
    if gleaf[1] ~= 'V' then
        return parts
    end
    local out = {}
    for _, node in ipairs(parts) do
        local implied = false
        if node[1] == 'V' and node[2] == gleaf[2] then
            if not node.allows then
                node.allows = {}
                for k = 4, #node do
                    node.allows[node[k]] = true
                end
            end
            implied = node.allows[gleaf[4]] == true
        end
        if not implied then
            out[#out + 1] = node
        end
    end
    return out
end

--[[ A large group (value v of the walked key) ordered by the next order key, when that
key has an index in order: a string key with a distinct zset (plan.walk_next entry {dkey,
vprefix, presence}): the group is walked by that key's values in turn (a nested walk of
values, whose own groups may nest again); request_id ('i'): the group is walked in id order.
The group's conjunction (its leaf AND the filter) is the nested walk's filter.  Returns
false when the group is better collected and sorted (small, or the next key has too many
values, or no such index), and the caller does that. ]]
local function nested_group(ctx, gleaf, gcount, need, cursor, out)
    local nexts = ctx.plan.walk_next
    local depth = ctx.depth or 1
    local spec = nexts and nexts[depth]
    if not spec or gcount <= 4 * need then
        return false
    end
    local wv = ctx.plan.walk_values
    local frac, cost, total = wv[4], wv[5], wv[6]
    local rest = ctx.rest
    local sub = {
        prefix = ctx.prefix, scanned = 0, last_chunk = ctx.last_chunk, order = rest,
        cursor = cursor, depth = depth + 1,
        expr = { '&', gleaf, unpack_(other_keys(ctx.expr, gleaf)) },
        -- (leaves of many values are tested by registers in the nested walk too)
        value_fields = ctx.value_fields or ctx.plan.value_fields,
    }
    sub.fields, sub.pos = order_fields(rest)
    local sources = ctx.plan.sources
    local residual = { '&', gleaf, unpack_(other_keys(ctx.residual, gleaf)) }
    if gleaf[1] == 'V' and gcount <= cost then
        sources, residual = { gleaf }, conjunction(other_keys(ctx.expr, gleaf))
    end
    sub.residual = residual
    local matches = gcount * frac
    if spec == 'i' then
        sub.plan = { sources = sources }
        -- the whole partition's ids are walked: the group's matches are this dense there
        local entries = matches > 0 and need * total / matches or total
        -- Walk only when far cheaper than collecting the candidates and sorting the
        -- matches by id (the costs of query/id_walk.py's choose, in walked-entry units).
        local candidates = gleaf[1] == 'V' and math.min(gcount, cost) or cost
        local walk = entries / 300 * 20 + entries + math.min(matches, entries) * 2
        if walk * 3 >= 0.75 * candidates + 4.25 * matches then
            return false
        end
        local done = id_walk_page(sub, need, out, math.max(8, math.ceil(3 * entries / 300)))
        ctx.scanned = ctx.scanned + sub.scanned
        return done ~= 'abandon'
    end
    local dkey = spec[1]
    if call('ZCARD', dkey) * 4 > gcount then
        return false
    end
    sub.plan = {
        sources = sources,
        walk_values = { dkey, spec[2], spec[3], total > 0 and matches / total or 0,
            math.min(gcount, cost), total },
        walk_next = nexts,
        time_bounds = ctx.plan.time_bounds,
        value_fields = ctx.plan.value_fields,
    }
    -- (a walk of values counts its page from an empty list)
    local rows = {}
    ValueWalk.walk_values_page(sub, need, rows)
    for i = 1, #rows do
        out[#out + 1] = rows[i]
    end
    ctx.scanned = ctx.scanned + sub.scanned
    return true
end

-- How many of parts are value leaves tested by each candidate's register (three or more
-- values, the field in the plan's value_fields), but a leaf of the key of `source` (the
-- value leaf a collect enumerates instead, if any).
local function register_leaves(ctx, parts, source)
    local fields = ctx.value_fields or ctx.plan.value_fields
    local skip = source and source[1] == 'V' and source[2]
    local n = 0
    for _, node in ipairs(parts) do
        if fields and node[1] == 'V' and #node - 3 >= 3 and fields[node[2]] and node[2] ~= skip then
            n = n + 1
        end
    end
    return n
end

GroupOrder.excluded = excluded
GroupOrder.register_leaves = register_leaves
GroupOrder.other_keys = other_keys
GroupOrder.nested_group = nested_group
