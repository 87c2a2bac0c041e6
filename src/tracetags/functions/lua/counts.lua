-- Counts (by set algebra), duration stats, and key set sizes for the planner.

local zmscore, chunk_numbers = Sets.zmscore, Sets.chunk_numbers
local last_chunk_of, slot, value_sets = Leaves.last_chunk_of, Leaves.slot, Leaves.value_sets
local eval = Eval.eval
local buffered, enum_all, enum_candidates = Enum.buffered, Enum.enum_all, Enum.enum_candidates
local enum_source = Enum.enum_source
local plain_register = Ordering.plain_register

-- Durations grouped by the values of the group fields, gathered batch by batch (stats_add)
-- into state, then as reply rows (stats_rows): {values, count, d1, n1, d2, n2, ...}.
local function stats_state(ctx)
    return {
        fields = ctx.plan.group or {}, groups = {}, names = {},
        du = ctx.prefix .. ':du', hash_prefix = ctx.prefix .. ':t:',
    }
end

local function stats_add(state, got)
    if #got == 0 then
        return
    end
    local fields, groups, names = state.fields, state.groups, state.names
    local durations = zmscore(state.du, got)
    for i = 1, #got do
        local values, name = {}, ''
        if #fields > 0 then
            local raw = call('HMGET', state.hash_prefix .. got[i], unpack_(fields))
            for k = 1, #fields do
                local v = plain_register(raw[k], fields[k])
                values[k] = v
                name = name .. (v and enc(v) or '-') .. '|'
            end
        end
        local group = groups[name]
        if not group then
            group = { values = values, count = 0, by_duration = {} }
            groups[name] = group
            names[#names + 1] = name
        end
        group.count = group.count + 1
        local d = durations[i]
        if d then
            group.by_duration[d] = (group.by_duration[d] or 0) + 1
        end
    end
end

local function stats_rows(state)
    local fields, groups, names = state.fields, state.groups, state.names
    local reply = {}
    for g = 1, #names do
        local group = groups[names[g]]
        local values = {}
        for k = 1, #fields do
            values[k] = group.values[k] and { 1, group.values[k] } or { 0 }
        end
        local distinct = {}
        for d in pairs(group.by_duration) do
            distinct[#distinct + 1] = d
        end
        table.sort(distinct)
        local row = { values, group.count }
        for i = 1, #distinct do
            row[#row + 1] = int(distinct[i])
            row[#row + 1] = group.by_duration[distinct[i]]
        end
        reply[g] = row
    end
    return reply
end

local function stats_reply(ctx)
    local state = stats_state(ctx)
    enum_candidates(ctx, function(batch)
        stats_add(state, eval(ctx, ctx.residual, batch))
        return false
    end)
    return stats_rows(state)
end

-- Sizes of key sets for the planner.  A key (entry {key set, distinct zset}) is on every
-- trace that has one of its values, so its size is the sum of the distinct zset's scores:
-- O(distinct values), far cheaper than SCARD over every chunk for a low-cardinality key.
-- Otherwise (or a bare key set name) the sum of SCARD over the chunks.
local function cards_reply(ctx, keys)
    local out = {}
    for k = 1, #keys do
        local key, dkey = keys[k], nil
        if type(key) == 'table' then
            key, dkey = key[1], key[2]
        end
        local total = 0
        if dkey and call('ZCARD', dkey) * 4 <= last_chunk_of(ctx) + 1 then
            local flat = call('ZRANGE', dkey, 0, -1, 'WITHSCORES')
            for i = 2, #flat, 2 do
                total = total + tonumber(flat[i])
            end
        else
            for c = 0, last_chunk_of(ctx) do
                total = total + call('SCARD', key .. ':' .. slot(c))
            end
        end
        out[k] = total
    end
    return out
end


-- --- counting by set algebra ------------------------------------------------------------
-- A count plan is a signed sum of conjunctions (the planner expands NOT and OR by
-- inclusion-exclusion).  A conjunction of chunked sets is counted with one SINTERCARD per
-- chunk (chunks hold <= 512 offsets, so no large intersection is ever built); a plain set
-- (<= 512 members) or a small range/id list is enumerated and the rest tested.

local function set_leaf(set)
    local leaf = { 'V' }
    leaf.sets = { set }
    return leaf
end

local function leaf_size(ctx, leaf)
    local kind = leaf[1]
    if kind == 'R' then
        if not leaf.size then
            leaf.size = call('ZCOUNT', ctx.prefix .. ':' .. leaf[2], leaf[3], leaf[4])
        end
        return leaf.size
    elseif kind == 'E' then
        return #leaf - 1
    end
    return math.huge
end

local function count_and(ctx, list, rest)
    if #rest == 0 then
        return #list
    end
    return #eval(ctx, { '&', unpack_(rest) }, list)
end

-- The count of sets and others by one SCARD / SINTERCARD per chunk (no other leaf), or the
-- chunk's intersection tested against the other leaves.
local function count_by_chunks(ctx, sets, others)
    local total = 0
    local names = {}
    for c = 0, last_chunk_of(ctx) do
        local suffix = ':' .. slot(c)
        for i = 1, #sets do
            names[i] = sets[i][1] .. suffix
        end
        if #others == 0 then
            if #sets == 1 then
                total = total + call('SCARD', names[1])
            else
                total = total + call('SINTERCARD', #sets, unpack_(names))
            end
        else
            local got
            if #sets == 1 then
                got = call('SMEMBERS', names[1])
            else
                got = call('SINTER', unpack_(names))
            end
            if #got > 0 then
                total = total + count_and(ctx, chunk_numbers(got, c), others)
            end
        end
    end
    return total
end

-- The count of the candidates of source (a leaf) that are in every set and other leaf.
local function count_from(ctx, source, sets, others)
    if #sets == 0 and #others == 0 and source[1] == 'R' then
        return leaf_size(ctx, source)
    end
    local rest = {}
    for i = 1, #sets do
        rest[#rest + 1] = set_leaf(sets[i])
    end
    for i = 1, #others do
        rest[#rest + 1] = others[i]
    end
    local total = 0
    buffered(function(fn)
        return enum_source(ctx, source, fn)
    end, function(batch)
        total = total + count_and(ctx, batch, rest)
        return false
    end)
    return total
end

-- Count the traces in every set of `sets` ({key, chunked, count}) and every leaf of `others`.
local function count_sets(ctx, sets, others)
    local small, small_n = nil, math.huge
    for i = 1, #others do
        local n = leaf_size(ctx, others[i])
        if n < small_n then
            small, small_n = i, n
        end
    end
    local plain = nil
    for i = 1, #sets do
        if not sets[i][2] and (plain == nil or sets[i][3] < sets[plain][3]) then
            plain = i
        end
    end
    if plain and sets[plain][3] <= small_n * 4 then
        local rest = {}
        for i = 1, #sets do
            if i ~= plain then
                rest[#rest + 1] = set_leaf(sets[i])
            end
        end
        for i = 1, #others do
            rest[#rest + 1] = others[i]
        end
        return count_and(ctx, call('SMEMBERS', sets[plain][1]), rest)
    end
    local min_set = math.huge
    for i = 1, #sets do
        min_set = math.min(min_set, sets[i][3] or math.huge)
    end
    -- (a plain set always leaves this branch or the one above: the chunk walk is for
    -- chunked sets only)
    if small and (plain or #sets == 0 or small_n < min_set) then
        local rest = {}
        for i = 1, #others do
            if i ~= small then
                rest[#rest + 1] = others[i]
            end
        end
        return count_from(ctx, others[small], sets, rest)
    end
    if #sets == 0 then
        local total = 0
        enum_all(ctx, function(batch)
            total = total + count_and(ctx, batch, others)
            return false
        end, false)
        return total
    end
    if #sets == 1 and #others == 0 and sets[1][3] then
        return sets[1][3]
    end
    return count_by_chunks(ctx, sets, others)
end

-- A conjunction of leaves; a V leaf of several values is a disjoint sum over its values.
local function count_term(ctx, leaves)
    local sets, others, multi = {}, {}, {}
    for i = 1, #leaves do
        local leaf = leaves[i]
        local kind = leaf[1]
        if kind == 'Z' then
            return 0
        elseif kind == 'V' then
            local found = value_sets(leaf)
            if #found == 0 then
                return 0
            elseif #found == 1 then
                sets[#sets + 1] = found[1]
            else
                multi[#multi + 1] = found
            end
        elseif kind == 'C' then
            sets[#sets + 1] = { leaf[2], true, false }
        elseif kind ~= 'A' then
            others[#others + 1] = leaf
        end
    end
    local function choose(m)
        if m > #multi then
            return count_sets(ctx, sets, others)
        end
        local total, seen = 0, {}
        for _, set in ipairs(multi[m]) do
            if not seen[set[1]] then
                seen[set[1]] = true
                sets[#sets + 1] = set
                total = total + choose(m + 1)
                sets[#sets] = nil
            end
        end
        return total
    end
    return choose(1)
end

local function count_terms_reply(ctx, terms)
    local total = 0
    for t = 1, #terms do
        local term = terms[t]
        local leaves = {}
        for i = 2, #term do
            leaves[#leaves + 1] = term[i]
        end
        total = total + term[1] * count_term(ctx, leaves)
    end
    return total
end

Counts.cards_reply = cards_reply
Counts.count_terms_reply = count_terms_reply
Counts.stats_reply = stats_reply
Counts.stats_state = stats_state
Counts.stats_add = stats_add
Counts.stats_rows = stats_rows
