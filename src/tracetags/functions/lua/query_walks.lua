-- Page strategies: collect every match, walk an order zset from the cursor, or walk the
-- chunks newest first by their time bounds.

local zmscore, unscored = Sets.zmscore, Sets.unscored
local WALK_BATCH_MAX = Leaves.WALK_BATCH_MAX
local eval = Eval.eval
local buffered, chunk_join, chunk_members = Enum.buffered, Enum.chunk_join, Enum.chunk_members
local enum_all, enum_candidates = Enum.enum_all, Enum.enum_candidates
local split_conjunction = Enum.split_conjunction
local cmp_keys, full_key, select_rows = Ordering.cmp_keys, Ordering.full_key, Ordering.select_rows
local take_tied = Ordering.take_tied

-- Every match of the candidates (only those without a score in unscored_in, when given:
-- the traces a walk of that zset could not reach).
local function collect_matches(ctx, unscored_in)
    local matches = {}
    local residual = ctx.residual
    local function take(batch)
        if unscored_in then
            batch = unscored(unscored_in, batch)
        end
        local got = eval(ctx, residual, batch)
        for i = 1, #got do
            matches[#matches + 1] = got[i]
        end
        return false
    end
    local sources = ctx.plan.sources
    local timeless = unscored_in == ctx.prefix .. ':ts' or unscored_in == ctx.prefix .. ':en'
    if timeless and (not sources or #sources == 0) then
        -- Traces without a timestamp are not in ts: only the chunk walk can find them.
        enum_all(ctx, take, true)
    else
        local join, rest = chunk_join(ctx)
        if join then
            residual = rest
            join(take)
        else
            buffered(function(fn)
                return enum_candidates(ctx, fn)
            end, take)
        end
    end
    ctx.scanned = ctx.scanned + #matches
    return matches
end

-- Collect every match, then select the page.
local function collect_page(ctx, need, out, unscored_in)
    select_rows(ctx, collect_matches(ctx, unscored_in), need, out)
end

-- --- the chunk walk: newest first, chunk by chunk ----------------------------------------
-- A timestamp_ms DESC page of a conjunction holding chunked sets visits the chunks in the
-- order of their time bounds (tsx, highest first): in each, one SINTER of the chunked sets
-- (SMEMBERS for one) gives the candidates, the rest of the filter is tested on them and the
-- survivors' timestamps read; it stops once `need` matches are newer than the next chunk's
-- bound, since no trace there can beat them.  Traces are numbered as they are first folded,
-- so a chunk holds traces of neighbouring times and a page visits a few chunks where the ts
-- walk would test thousands of entries one by one.  Rows come out by select_rows (ties,
-- cursor).  True when every chunk was visited: traces without a timestamp may be owed.
-- 'abandon' (nothing written to out) past `budget` chunks, and how many matches the visited
-- chunks held: the planner expected far fewer chunks, so either times and numbers do not go
-- together here (the caller walks ts instead) or the matches are far rarer than planned
-- (none found: a walk of ts would test the same newest traces again, so the caller
-- collects).
local function chunk_walk_page(ctx, need, out, budget)
    local keys, residual = split_conjunction(ctx, ctx.expr)
    local minus
    if #keys <= 1 then
        -- the chunked sets the filter excludes (a key IS NULL) are taken out of the one
        -- chunked set's chunk, or out of every trace's (SDIFF)
        minus, residual = split_conjunction(ctx, residual, true)
        if #minus == 0 then
            minus = nil
        elseif #keys == 0 then
            keys[1] = ctx.prefix .. ':all'
        end
    end
    if #keys == 0 then
        -- the planner's dense set is not chunked here (its count fell since the probe, or
        -- it holds every trace): nothing to intersect, so walk or collect instead
        return 'abandon'
    end
    local ts = ctx.prefix .. ':ts'
    local tsx = ctx.prefix .. ':tsx'
    local order, cursor = ctx.order, ctx.cursor
    local cursor_ts = cursor and cursor[1]
    if cursor_ts == false then -- the cursor is among the traces without a timestamp
        return true
    end
    local matches, top = {}, {} -- top: the best `need` timestamps so far, descending
    local names = {}
    local offset = 0
    while true do
        local got = call('ZRANGE', tsx, '+inf', '(-inf', 'BYSCORE', 'REV', 'LIMIT', offset, 16,
            'WITHSCORES')
        if #got == 0 then
            select_rows(ctx, matches, need, out)
            return true
        end
        offset = offset + #got / 2
        for g = 1, #got, 2 do
            if #top >= need and top[need] > tonumber(got[g + 1]) then
                select_rows(ctx, matches, need, out)
                return false
            end
            budget = budget - 1
            if budget < 0 then
                return 'abandon', #matches
            end
            local candidates = chunk_members(keys, tonumber(got[g]), names, minus)
            ctx.scanned = ctx.scanned + #candidates
            if #candidates > 0 then
                local survivors = eval(ctx, residual, candidates)
                local scores = zmscore(ts, survivors)
                for i = 1, #survivors do
                    local t = scores[i]
                    local keep = t ~= false
                    if keep and cursor_ts then
                        keep = t < cursor_ts
                            or (t == cursor_ts and cmp_keys(order, full_key(ctx, survivors[i]),
                                cursor) > 0)
                    end
                    if keep then
                        matches[#matches + 1] = survivors[i]
                        -- insert t into top (descending, at most need long)
                        local n = #top
                        if n < need or t > top[n] then
                            local at = n < need and n + 1 or n
                            while at > 1 and top[at - 1] < t do
                                top[at] = top[at - 1]
                                at = at - 1
                            end
                            top[at] = t
                        end
                    end
                end
            end
        end
    end
end

-- The ranks of the order zset zkey a walk visits: from the cursor's (nil when the cursor is
-- among the traces without a score: nothing to walk) up to stop (excluded).
local function walk_bounds(ctx, zkey, asc)
    local cursor = ctx.cursor
    local rank = 0
    if cursor then
        local v = cursor[1]
        if v == false then
            return nil
        end
        local text = format('%.17g', v)
        if asc then
            rank = call('ZCOUNT', zkey, '-inf', '(' .. text)
        else
            rank = call('ZCOUNT', zkey, '(' .. text, '+inf')
        end
    end
    -- A conjunct range on the walked zset itself ({lo, hi}): only its ranks can match.
    local stop = math.huge
    local range = ctx.walk_range
    if range then
        local lo, hi = range[1], range[2]
        local outside
        if asc then
            outside = lo == '-inf' and 0
                or call('ZCOUNT', zkey, '-inf', sub(lo, 1, 1) == '(' and sub(lo, 2) or '(' .. lo)
        else
            outside = hi == '+inf' and 0
                or call('ZCOUNT', zkey, sub(hi, 1, 1) == '(' and sub(hi, 2) or '(' .. hi, '+inf')
        end
        stop = outside + call('ZCOUNT', zkey, lo, hi)
        if rank < outside then
            rank = outside
        end
    end
    return rank, stop
end

-- Append to out the first `need` rows of found (in walk order, with their scores): the walk
-- already gives the first key's order, so only runs of equal scores (ties) are ordered by
-- the next keys.
local function walk_rows(ctx, found, found_scores, need, out)
    local target = #out + need
    local i = 1
    while i <= #found and #out < target do
        local j = i
        while j < #found and found_scores[j + 1] == found_scores[i] do
            j = j + 1
        end
        if j == i then
            out[#out + 1] = { found[i] }
        else
            local run = {}
            for k = i, j do
                run[#run + 1] = found[k]
            end
            take_tied(ctx, run, 1, target, out)
        end
        i = j + 1
    end
end

-- The size of a walk's next batch: enough for the matches still missing at the density seen
-- so far (walked entries, kept of them); `boundary`: only the last row's tie group is left.
local function next_batch(batch, boundary, missing, walked, kept)
    if boundary then
        batch = 64
    elseif kept == 0 then
        batch = batch * 2
    else
        batch = math.ceil(missing * walked / kept * 1.2) + 16
    end
    return math.max(64, math.min(batch, WALK_BATCH_MAX))
end

-- No match yet: a batch sized to fill the page is not to carry the walk past its give-up
-- point (budget).
local function within_give_up(budget, batch, walked, kept)
    if budget and kept == 0 and walked + batch > budget then
        return math.max(64, budget - walked)
    end
    return batch
end

-- Walk the order zset from the cursor, testing batches, until `need` matches and the tie
-- group of the last one are complete; true when the zset ran out first.
local function walk_page(ctx, zname, asc, need, out)
    local zkey = ctx.prefix .. ':' .. zname
    local order, cursor = ctx.order, ctx.cursor
    local rank, stop = walk_bounds(ctx, zkey, asc)
    if not rank then
        return true
    end
    local found, found_scores = {}, {}
    local boundary = nil
    local exhausted = false
    -- Batches sized by the density of matches (the planner's estimate, then what the walk
    -- has seen): every walked entry costs its membership tests, so overshooting the page
    -- by a doubled batch is what to avoid.
    local density = ctx.density or 0.5
    local batch = math.ceil(need / math.max(density, 0.001) * 1.1) + 8
    batch = math.max(64, math.min(batch, WALK_BATCH_MAX))
    local walked, kept = 0, 0
    while true do
        if rank >= stop then
            exhausted = true
            break
        end
        batch = within_give_up(ctx.walk_budget, batch, walked, kept)
        if rank + batch > stop then
            batch = stop - rank
        end
        local members
        if asc then
            members = call('ZRANGE', zkey, rank, rank + batch - 1)
        else
            members = call('ZRANGE', zkey, rank, rank + batch - 1, 'REV')
        end
        rank = rank + #members
        ctx.scanned = ctx.scanned + #members
        walked = walked + #members
        ctx.walking = true
        local survivors = eval(ctx, ctx.expr, members)
        ctx.walking = false
        kept = kept + #survivors
        if ctx.walk_budget and kept == 0 and walked >= ctx.walk_budget then
            return 'abandon' -- matches far rarer than planned: the caller collects instead
        end
        -- Scores of the survivors only: WITHSCORES would make Redis format, and Lua parse,
        -- the score of every walked entry, most of which fail the filter.
        local scores = zmscore(zkey, survivors)
        local done = false
        for i = 1, #survivors do
            local no = survivors[i]
            local score = scores[i]
            if boundary and score ~= boundary then
                done = true
                break
            end
            local keep = true
            if cursor and score == cursor[1] then
                keep = cmp_keys(order, full_key(ctx, no), cursor) > 0
            end
            if keep then
                found[#found + 1] = no
                found_scores[#found] = score
                if #found == need then
                    boundary = score
                end
            end
        end
        if #members < batch then
            exhausted = true
            break
        end
        if done then
            break
        end
        if boundary and tonumber(call('ZSCORE', zkey, members[#members])) ~= boundary then
            break
        end
        batch = next_batch(batch, boundary, need - #found, walked, kept)
    end
    walk_rows(ctx, found, found_scores, need, out)
    return exhausted
end

Walks.chunk_walk_page = chunk_walk_page
Walks.collect_matches = collect_matches
Walks.collect_page = collect_page
Walks.walk_page = walk_page
