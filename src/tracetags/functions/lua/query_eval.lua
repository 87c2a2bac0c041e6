-- The boolean tree of a plan evaluated over a list of candidates, chunked sets of a
-- conjunction tested together.

local slot, test_leaf, value_sets = Leaves.slot, Leaves.test_leaf, Leaves.value_sets
local REGISTERS_ONLY_VALUES = Leaves.REGISTERS_ONLY_VALUES
local or_children, test_union = OrGroups.or_children, OrGroups.test_union

-- Whether the V leaf holds every trace of the partition (experiment_ids naming every
-- experiment): a trace has at most one value per key and the sets hold live traces only, so
-- the leaf's counts summing to the number of traces means that no test is needed.
local function covers_all(ctx, leaf)
    if leaf.all == nil and #leaf - 3 > REGISTERS_ONLY_VALUES then
        leaf.all = false -- (not sized: tested by registers, see query_leaves.lua)
    end
    if leaf.all == nil then
        if not ctx.traces then
            ctx.traces = call('HLEN', ctx.prefix .. ':ids')
        end
        local total, seen = 0, {}
        local sets = value_sets(leaf)
        for s = 1, #sets do
            local set = sets[s]
            if not set[3] then -- a set of the count algebra (size unknown)
                total = -1
                break
            end
            if not seen[set[1]] then
                seen[set[1]] = true
                total = total + set[3]
            end
        end
        leaf.all = total > 0 and total == ctx.traces
    end
    return leaf.all
end

-- The key of the one chunked set a C leaf or a V leaf of one dense value tests (false for
-- any other node, and for a V leaf that holds every trace: it needs no test).
local function chunked_key(ctx, node)
    local key = node.ckey
    if key == nil then
        key = false
        local kind = node[1]
        if kind == 'C' then
            key = node[2]
        elseif kind == 'V' and #node - 3 <= REGISTERS_ONLY_VALUES and not covers_all(ctx, node) then
            local sets = value_sets(node)
            if #sets == 1 and sets[1][2] then
                key = sets[1][1]
            end
        end
        node.ckey = key
    end
    return key
end

-- A chunk holding this many candidates of a conjunction is tested against the chunk's
-- intersection (one SINTER, kept for the rest of the call) instead of by SMISMEMBER per set.
local SINTER_GROUP_MIN = 128

-- The offsets in chunk c of every chunked set of keys, as a lookup table: one SINTER,
-- kept in hits (a per-call cache) for the rest of the call.
local function chunk_intersection(keys, c, hits)
    local inter = hits[c]
    if not inter then
        inter = {}
        local suffix = ':' .. slot(c)
        local names = {}
        for t = 1, #keys do
            names[t] = keys[t] .. suffix
        end
        local got = call('SINTER', unpack_(names))
        for j = 1, #got do
            inter[got[j]] = true
        end
        hits[c] = inter
    end
    return inter
end

-- Mark in ok the positions of the offsets (count of them, of one chunk: key suffix) that
-- are in every set of keys: one SMISMEMBER per set, of the offsets still alive.
local function mark_in_chunk(keys, suffix, offsets, count, ok)
    local alive = nil -- positions in offsets still matching (nil: all of them)
    for t = 1, #keys do
        local members = offsets
        if alive then
            members = {}
            for a = 1, #alive do
                members[a] = offsets[alive[a]]
            end
        end
        local survivors, m = {}, 0
        local total = alive and #alive or count
        for from = 1, total, CHUNK do
            local got = call('SMISMEMBER', keys[t] .. suffix,
                unpack_(members, from, math.min(from + CHUNK - 1, total)))
            for j = 1, #got do
                if got[j] == 1 then
                    m = m + 1
                    local at = from + j - 1
                    survivors[m] = alive and alive[at] or at
                end
            end
        end
        alive = survivors
        if m == 0 then
            break
        end
    end
    for a = 1, #alive do
        ok[alive[a]] = true
    end
    return #alive
end

-- A chunk met again is read as its intersection when the candidates tested so far passed
-- rarely: the intersection is then small (it costs a member each) and the walk long.
local REREAD_MAX_PASS = 0.1

local function sparse(touched)
    return touched.passed <= REREAD_MAX_PASS * touched.tested
end

-- The members of list in every chunked set of keys, in list order.  Each number is split
-- into (chunk, offset) once for all the sets; per chunk touched, one SMISMEMBER per set tests
-- the offsets still alive (the per-candidate Lua work, not Redis, is the cost here).  With
-- several sets and `hits` (a per-call cache of chunk intersections), a chunk with many
-- candidates (a walk: recent traces share chunks), or one this call has tested before (a
-- walk of the ids: every bucket's candidates spread over every chunk), is tested by lookup
-- in its intersection, which a conjunction keeps small; `touched` marks the chunks tested
-- and counts the candidates tested and passed.
local function in_chunked_sets(keys, list, hits, touched)
    local n = #list
    local chunk_of, pos_of = {}, {}
    local groups, counts, order, norder = {}, {}, {}, 0
    local lastc, g, gn = -1, nil, 0
    for i = 1, n do
        local no = tonumber(list[i])
        local c = floor(no / SET_CHUNK)
        if c ~= lastc then
            if lastc >= 0 then
                counts[lastc] = gn
            end
            g = groups[c]
            if g then
                gn = counts[c]
            else
                g, gn = {}, 0
                groups[c] = g
                norder = norder + 1
                order[norder] = c
            end
            lastc = c
        end
        gn = gn + 1
        g[gn] = DECIMAL[no - c * SET_CHUNK]
        chunk_of[i] = c
        pos_of[i] = gn
    end
    counts[lastc] = gn
    local passed = {}
    for o = 1, norder do
        local c = order[o]
        local offsets, count = groups[c], counts[c]
        local suffix = ':' .. slot(c)
        local ok = {}
        if hits and (hits[c] or count >= SINTER_GROUP_MIN or touched[c] and sparse(touched)) then
            local inter = chunk_intersection(keys, c, hits)
            for k = 1, count do
                if inter[offsets[k]] then
                    ok[k] = true
                end
            end
        else
            local in_all = mark_in_chunk(keys, suffix, offsets, count, ok)
            if touched then
                touched[c] = true
                touched.tested = touched.tested + count
                touched.passed = touched.passed + in_all
            end
        end
        passed[c] = ok
    end
    local out, m = {}, 0
    for i = 1, n do
        if passed[chunk_of[i]][pos_of[i]] then
            m = m + 1
            out[m] = list[i]
        end
    end
    return out
end

-- A walk's candidates (recent traces: a few chunks) in the chunked sets of keys: each
-- chunk's intersection is read once (one SINTER, kept in hits for the call) and the
-- candidates tested by lookup, in one pass.  nil when the candidates spread over too many
-- chunks for that (the caller then tests them per chunk with SMISMEMBER).
local function in_chunked_sets_walked(keys, list, hits)
    local n = #list
    local budget = floor(n / 64) + 2
    local out, m = {}, 0
    local lastc, inter = -1, nil
    for i = 1, n do
        local no = tonumber(list[i])
        local c = floor(no / SET_CHUNK)
        if c ~= lastc then
            if not hits[c] then
                budget = budget - 1
                if budget < 0 then
                    return nil
                end
            end
            inter = chunk_intersection(keys, c, hits)
            lastc = c
        end
        if inter[DECIMAL[no - c * SET_CHUNK]] then
            m = m + 1
            out[m] = list[i]
        end
    end
    return out
end

local function test_chunked_sets(ctx, node, keys, list)
    if not node.hits then
        node.hits, node.touched = {}, { tested = 0, passed = 0 }
    end
    if ctx.walking then
        local out = in_chunked_sets_walked(keys, list, node.hits)
        if out then
            return out
        end
    end
    if #keys > 1 then
        return in_chunked_sets(keys, list, node.hits, node.touched)
    end
    return in_chunked_sets(keys, list, nil, nil)
end

local eval -- (recursive: the node kinds below call it on their children)

-- A conjunction: the chunked sets of its children are tested together, where the first of
-- them stands (children come most selective first).
local function eval_and(ctx, node, list)
    local keys = {}
    for i = 2, #node do
        keys[#keys + 1] = chunked_key(ctx, node[i]) or nil
    end
    if ctx.walking and #keys > 0 then
        -- A walk tests its recent candidates by lookup in each chunk's intersection first,
        -- so that a range (ZMSCORE, dearer per candidate) or a plain set only sees the
        -- survivors.
        list = test_chunked_sets(ctx, node, keys, list)
        keys = {}
        if #list == 0 then
            return list
        end
    end
    for i = 2, #node do
        local child = node[i]
        if not chunked_key(ctx, child) then
            list = eval(ctx, child, list)
        elseif #keys > 0 then
            list = test_chunked_sets(ctx, node, keys, list)
            keys = {}
        end
        if #list == 0 then
            break
        end
    end
    return list
end

-- The members of list for which hit[member] is (or, with negate, is not) set, in order.
local function kept(list, hit, negate)
    local out = {}
    for j = 1, #list do
        if (hit[list[j]] == nil) == negate then
            out[#out + 1] = list[j]
        end
    end
    return out
end

-- A disjunction: each child tests the candidates no earlier child matched (the list of them
-- is rebuilt once a quarter of it has matched, so a wide OR costs a pass per child, not
-- two); children on the same index are tested together (query_or.lua).
local function eval_or(ctx, node, list)
    local hit = {}
    local rest, fresh = list, 0
    local children = or_children(node)
    for i = 1, #children do
        local child = children[i]
        local got = child.union and test_union(ctx, child, rest) or eval(ctx, child, rest)
        for j = 1, #got do
            if not hit[got[j]] then
                hit[got[j]] = true
                fresh = fresh + 1
            end
        end
        if fresh * 4 >= #rest then
            rest, fresh = kept(rest, hit, true), 0
            if #rest == 0 then
                break
            end
        end
    end
    return kept(list, hit, false)
end

local function eval_not(ctx, node, list)
    local hit = {}
    local got = eval(ctx, node[2], list)
    for j = 1, #got do
        hit[got[j]] = true
    end
    return kept(list, hit, true)
end

local function eval_leaf(ctx, node, list)
    local mask = {}
    test_leaf(ctx, node, list, mask)
    local out = {}
    for j = 1, #list do
        if mask[j] then
            out[#out + 1] = list[j]
        end
    end
    return out
end

-- The members of list (trace numbers as decimal strings) that satisfy node, in list order.
eval = function(ctx, node, list)
    if #list == 0 then
        return list
    end
    local kind = node[1]
    if kind == 'V' and covers_all(ctx, node) then
        return list
    end
    local key = chunked_key(ctx, node)
    if key then
        return test_chunked_sets(ctx, node, { key }, list)
    end
    if kind == '&' then
        return eval_and(ctx, node, list)
    elseif kind == '|' then
        return eval_or(ctx, node, list)
    elseif kind == '!' then
        return eval_not(ctx, node, list)
    end
    return eval_leaf(ctx, node, list)
end

Eval.chunked_key = chunked_key
Eval.covers_all = covers_all
Eval.eval = eval
