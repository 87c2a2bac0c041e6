-- Pages ordered by request_id: walking the byte order of the trace ids (id_order.lua).

local eval = Eval.eval
local id_dir, id_bucket, id_head = IdOrder.id_dir, IdOrder.id_bucket, IdOrder.id_head
local id_rows, id_lt = IdOrder.id_rows, IdOrder.id_lt

-- The head after `head` in walk order, reading the directory 16 heads at a time (nil at the
-- end); `ahead` = {heads, at} carries what was read.
local function next_head(dir, head, asc, ahead)
    if ahead.at > #ahead.heads then
        if asc then
            ahead.heads = call('ZRANGE', dir, '(' .. head, '+', 'BYLEX', 'LIMIT', 0, 16)
        elseif head == '' then
            ahead.heads = EMPTY
        else
            ahead.heads = call('ZRANGE', dir, '(' .. head, '-', 'BYLEX', 'REV', 'LIMIT', 0, 16)
        end
        ahead.at = 1
    end
    local h = ahead.heads[ahead.at]
    ahead.at = ahead.at + 1
    return h
end

-- Append the matches of one bucket's sorted rows past the cursor id `from` to rows, in walk
-- order, until `need`; true once the page is full.
local function take_sorted(sorted, asc, from, need, rows)
    local n = #sorted
    for k = 1, n do
        local row = asc and sorted[k] or sorted[n - k + 1]
        local id = row[1]
        if not from or (asc and id_lt(from, id)) or (not asc and id_lt(id, from)) then
            rows[#rows + 1] = { row[2] }
            if #rows >= need then
                return true
            end
        end
    end
    return false
end

-- Walk the id buckets in request_id order from the cursor, testing each bucket's traces
-- against the filter, until `need` rows.  Rows are unique by id, so no tie reads the later
-- order keys.  'abandon' (nothing written to out) when the partition has no id index or
-- past `budget` buckets: the planner expected far fewer, and collecting is cheaper then.
local function id_walk_page(ctx, need, out, budget)
    local prefix = ctx.prefix
    local dir = id_dir(prefix)
    if call('EXISTS', dir) == 0 then
        return 'abandon'
    end
    -- plan.id_table: the matches collected first (a few thousand), each bucket's traces
    -- then looked up among them: no id read for the matches a collect would sort
    local matched = nil
    if ctx.plan.id_table then
        matched = {}
        local found = Walks.collect_matches(ctx)
        for i = 1, #found do
            matched[found[i]] = true
        end
    end
    local asc = ctx.order[1][3] == 1
    local from = ctx.cursor and ctx.cursor[1] or nil
    local head
    if from then
        head = id_head(dir, from)
    elseif asc then
        head = ''
    else
        head = call('ZRANGE', dir, '+', '-', 'BYLEX', 'REV', 'LIMIT', 0, 1)[1] or ''
    end
    local rows, visited, ahead = {}, 0, { heads = EMPTY, at = 1 }
    while head do
        visited = visited + 1
        if visited > budget then
            return 'abandon'
        end
        local members = call('SMEMBERS', id_bucket(prefix, head))
        ctx.scanned = ctx.scanned + #members
        local got
        if matched then
            got = {}
            for i = 1, #members do
                if matched[members[i]] then
                    got[#got + 1] = members[i]
                end
            end
        else
            ctx.walking = true
            got = eval(ctx, ctx.expr, members)
            ctx.walking = false
        end
        if #got > 0 and take_sorted(id_rows(prefix, got, EMPTY), asc, from, need, rows) then
            break
        end
        head = next_head(dir, head, asc, ahead)
    end
    for i = 1, #rows do
        out[#out + 1] = rows[i]
    end
    return true
end

-- Past this many buckets an affix is dense: the client reads every id instead.
local SEEK_BUCKETS = 24

-- The heads of the buckets that may hold ids starting (rev: ending) with one of affixes,
-- each once (an ILIKE's case variants mostly fall in one bucket, or none); nil past
-- SEEK_BUCKETS.  Buckets are contiguous ranges: the one holding the affix itself, then those
-- whose heads start with it.
local function affix_heads(dir, affixes, rev)
    local heads, seen = {}, {}
    local function add(head)
        if not seen[head] then
            seen[head] = true
            heads[#heads + 1] = head
        end
    end
    for _, p in ipairs(affixes) do
        local key = rev and string.reverse(p) or p
        add(id_head(dir, key))
        local past = Like.past_prefix(key)
        local stop = past and ('(' .. past) or '+'
        local after = call('ZRANGE', dir, '(' .. key, stop, 'BYLEX', 'LIMIT', 0, SEEK_BUCKETS + 1)
        for i = 1, #after do
            add(after[i])
        end
        if #heads > SEEK_BUCKETS then
            return nil
        end
    end
    return heads
end

-- Whether id starts (rev: ends) with one of the affixes, given as a set by their lengths.
local function affixed(id, by_length, rev)
    for n, set in pairs(by_length) do
        if n <= #id and set[rev and sub(id, #id - n + 1) or sub(id, 1, n)] then
            return true
        end
    end
    return false
end

-- {id, number, ...} of the ids starting (rev: ending) with one of affixes, reading each
-- bucket of `heads` once.
local function seek_all(prefix, affixes, heads, rev)
    local by_length = {}
    for _, p in ipairs(affixes) do
        by_length[#p] = by_length[#p] or {}
        by_length[#p][p] = true
    end
    local flat = {}
    local hash_prefix = prefix .. ':t:'
    for _, head in ipairs(heads) do
        local members = call('SMEMBERS', id_bucket(prefix, head, rev))
        for i = 1, #members do
            local id = call('HGET', hash_prefix .. members[i], 'i')
            if id and affixed(id, by_length, rev) then
                flat[#flat + 1] = id
                flat[#flat + 1] = members[i]
            end
        end
    end
    return flat
end

-- The heads of the buckets affixes span in the ids' order (rev: the reversed ids'); nil
-- when there are none, the partition has no such order, or they span more than
-- SEEK_BUCKETS.
local function span(prefix, affixes, rev)
    local dir = id_dir(prefix, rev)
    if #affixes == 0 or call('EXISTS', dir) == 0 then
        return nil
    end
    return affix_heads(dir, affixes, rev)
end

-- ids mode: {1, {id, number, ...}} of the trace ids that start with one of the prefixes or
-- end with one of the suffixes (a request_id LIKE/ILIKE's literal lead and end, with their
-- case variants), whichever spans fewer buckets, sought in the byte orders of the ids and
-- of the reversed ids; {0} when both are dense or the partition has no such order (folded
-- before it existed): the client then samples or reads every id itself (HGETALL's native
-- reply holds Redis far shorter than reading them into Lua).  The client applies the exact
-- pattern.
local function ids_reply(prefix, prefixes, suffixes)
    local by_lead, by_end = span(prefix, prefixes, false), span(prefix, suffixes, true)
    local flat = nil
    if by_end and (not by_lead or #by_end < #by_lead) then
        flat = seek_all(prefix, suffixes, by_end, true)
    elseif by_lead then
        flat = seek_all(prefix, prefixes, by_lead, false)
    end
    if not flat then
        return cmsgpack.pack({ 0 })
    end
    return cmsgpack.pack({ 1, flat })
end

IdWalk.id_walk_page = id_walk_page
IdWalk.ids_reply = ids_reply
