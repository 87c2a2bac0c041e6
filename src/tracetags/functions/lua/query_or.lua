-- A wide OR made linear: its children that test the same index are tested together.
--
-- Children of one OR that are ranges of the same zset ({'R', zname, lo, hi}) become one
-- union of disjoint intervals: one ZMSCORE per candidate list and a binary search per
-- candidate, instead of one ZMSCORE per child.  Children that are value sets of the same key
-- ({'V', dkey, vprefix, value...}) become one V leaf of all their values (a trace holds one
-- value per key, so the OR of `k = a` and `k = b` is `k IN (a, b)`).  Other children stay.

local score_bound, zmscore = Sets.score_bound, Sets.zmscore

-- Whether a starts before b (at the same score a closed bound starts first).
local function starts_before(a, b)
    if a.lo ~= b.lo then
        return a.lo < b.lo
    end
    return (not a.lo_open) and b.lo_open
end

local function empty(iv)
    return iv.lo > iv.hi or (iv.lo == iv.hi and (iv.lo_open or iv.hi_open))
end

-- The union of the ranges' intervals as disjoint intervals sorted by their start.
local function union_of(ranges)
    local all = {}
    for r = 1, #ranges do
        local iv = {}
        iv.lo, iv.lo_open = score_bound(ranges[r][3])
        iv.hi, iv.hi_open = score_bound(ranges[r][4])
        if iv.lo and iv.hi and not empty(iv) then
            all[#all + 1] = iv
        end
    end
    table.sort(all, starts_before)
    local out = {}
    local cur = nil
    for i = 1, #all do
        local iv = all[i]
        if cur and (iv.lo < cur.hi or (iv.lo == cur.hi and not (iv.lo_open and cur.hi_open))) then
            if iv.hi > cur.hi then
                cur.hi, cur.hi_open = iv.hi, iv.hi_open
            elseif iv.hi == cur.hi then
                cur.hi_open = cur.hi_open and iv.hi_open
            end
        else
            cur = { lo = iv.lo, lo_open = iv.lo_open, hi = iv.hi, hi_open = iv.hi_open }
            out[#out + 1] = cur
        end
    end
    return out
end

-- Whether score lies in one of the disjoint sorted intervals (binary search).
local function in_union(intervals, score)
    local a, b = 1, #intervals
    local at = 0
    while a <= b do
        local m = floor((a + b) / 2)
        local iv = intervals[m]
        if iv.lo < score or (iv.lo == score and not iv.lo_open) then
            at = m
            a = m + 1
        else
            b = m - 1
        end
    end
    if at == 0 then
        return false
    end
    local iv = intervals[at]
    return score < iv.hi or (score == iv.hi and not iv.hi_open)
end

-- The members of list whose score in the union's zset lies in one of its intervals.
local function test_union(ctx, union, list)
    local scores = zmscore(ctx.prefix .. ':' .. union.zname, list)
    local out = {}
    local intervals = union.intervals
    for i = 1, #list do
        local s = scores[i]
        if s and in_union(intervals, s) then
            out[#out + 1] = list[i]
        end
    end
    return out
end

-- Whether a V leaf is a plain one (only its array part: no fields a plan or a call added).
local function plain_values(node)
    return node[1] == 'V' and next(node, #node > 0 and #node or nil) == nil
end

-- The children of an OR node with ranges of one zset and value sets of one key merged
-- (kept on the node for the rest of the call); a merged range group is {union = true,
-- zname, intervals}.
local function or_children(node)
    if node.merged then
        return node.merged
    end
    local ranges, values, order, out = {}, {}, {}, {}
    for i = 2, #node do
        local child = node[i]
        local kind = child[1]
        local group = nil
        if kind == 'R' then
            group = 'R' .. child[2]
            ranges[group] = ranges[group] or {}
            table.insert(ranges[group], child)
        elseif plain_values(child) then
            group = 'V' .. child[2] .. '\0' .. child[3]
            values[group] = values[group] or {}
            table.insert(values[group], child)
        end
        if not group then
            out[#out + 1] = child
        elseif #(ranges[group] or values[group]) == 1 then
            order[#order + 1] = group
        end
    end
    for g = 1, #order do
        local group = order[g]
        local members = ranges[group] or values[group]
        if #members == 1 then
            out[#out + 1] = members[1]
        elseif ranges[group] then
            out[#out + 1] = { union = true, zname = members[1][2], intervals = union_of(members) }
        else
            local leaf, seen = { 'V', members[1][2], members[1][3] }, {}
            for m = 1, #members do
                for i = 4, #members[m] do
                    local v = members[m][i]
                    if not seen[v] then
                        seen[v] = true
                        leaf[#leaf + 1] = v
                    end
                end
            end
            out[#out + 1] = leaf
        end
    end
    node.merged = out
    return out
end

OrGroups.or_children = or_children
OrGroups.test_union = test_union
