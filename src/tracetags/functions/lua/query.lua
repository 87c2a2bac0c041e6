-- tt_query: one plan over one partition, dispatched by mode.

local eval = Eval.eval
local buffered, enum_candidates = Enum.buffered, Enum.enum_candidates
local order_fields, select_rows = Ordering.order_fields, Ordering.select_rows
local chunk_walk_page, collect_page = Walks.chunk_walk_page, Walks.collect_page
local walk_page = Walks.walk_page
local resolve_sought, value_count_reply = Like.resolve_sought, Like.value_count_reply
local values_reply = Like.values_reply
local cards_reply, count_terms_reply = Counts.cards_reply, Counts.count_terms_reply
local stats_reply = Counts.stats_reply
local walk_values_page = ValueWalk.walk_values_page
local count_scan, stats_scan, now_us = Budget.count_scan, Budget.stats_scan, Budget.now_us
local scan = Budget.scan
local id_walk_page = IdWalk.id_walk_page

-- One msgpack string {rows found, hash...}: a reply of dozens of strings per trace costs
-- Redis more to convert than cmsgpack does to pack it, and the client decodes it in C.
-- Only the first `shown` rows are read (the extra row only tells that a next page exists).
-- With plan.keys_only, a row is only its order fields and its trace number ('#'): the
-- client merges the rows of several calls and then reads the hashes of the page's rows
-- (rows mode).
local function page_reply(ctx, rows, shown)
    local hashes = {}
    local hash_prefix = ctx.prefix .. ':t:'
    if ctx.plan.keys_only then
        local fields = ctx.fields
        for i = 1, math.min(#rows, shown) do
            local got = call('HMGET', hash_prefix .. rows[i][1], unpack_(fields))
            local flat = { '#', rows[i][1] }
            for k = 1, #fields do
                if got[k] then
                    flat[#flat + 1] = fields[k]
                    flat[#flat + 1] = got[k]
                end
            end
            hashes[i] = flat
        end
        return cmsgpack.pack({ #rows, hashes })
    end
    for i = 1, math.min(#rows, shown) do
        hashes[i] = call('HGETALL', hash_prefix .. rows[i][1])
    end
    return cmsgpack.pack({ #rows, hashes })
end

-- rows mode: {found, {hash...}} of the trace numbers plan.numbers (an empty list for a
-- trace deleted since it was matched).
local function rows_reply(ctx, numbers)
    local rows = {}
    for i = 1, #numbers do
        rows[i] = { numbers[i] }
    end
    return page_reply(ctx, rows, #rows)
end



-- values mode with plan.beside (the pattern's AND siblings, sized: {'r', zset, lo, hi} a
-- range, {'v', distinct zset, value...} value sets, {'n', count} a known bound): dkey's
-- value count and the smallest's traces when it holds at most one trace per `per` of them,
-- so that testing the pattern on each of its traces beats reading the values (the reply is
-- then a sample), else nil.
local function few_beside(dkey, beside, per)
    local rest = math.huge
    for _, term in ipairs(beside) do
        local size
        if term[1] == 'r' then
            size = call('ZCOUNT', term[2], term[3], term[4])
        elseif term[1] == 'v' then
            size = 0
            for _, count in ipairs(Sets.value_counts(term[2], { unpack_(term, 3) })) do
                size = size + count
            end
        else
            size = term[2]
        end
        rest = math.min(rest, size)
    end
    local values = call('ZCARD', dkey)
    if rest * per <= values then
        return values, rest
    end
    return nil
end

-- A sample for few_beside's answer: as large as asked (`sample` values), but no larger
-- than the smallest sibling's traces (at least FEW_SAMPLE_MIN), which bound the pattern's
-- matches whatever the sample says (ZRANDMEMBER's cost grows with the count).
local FEW_SAMPLE_MIN = 16

local function few_sample(sample, rest)
    return math.min(sample, math.max(FEW_SAMPLE_MIN, rest))
end

-- count mode without terms: the candidates that pass the residual filter.
local function count_query(ctx)
    local total = 0
    buffered(function(fn)
        return enum_candidates(ctx, fn)
    end, function(batch)
        total = total + #eval(ctx, ctx.residual, batch)
        return false
    end)
    return total
end

-- What every page needs before it looks for rows: LIKE leaves sought by their lead turned
-- into the values they match now, the order keys and the cursor.
local function page_setup(ctx, plan)
    local seen = {}
    resolve_sought(ctx, ctx.expr, seen)
    if ctx.residual ~= ctx.expr then
        resolve_sought(ctx, ctx.residual, seen)
    end
    for _, source in ipairs(plan.sources or EMPTY) do
        resolve_sought(ctx, source, seen)
    end
    local order = plan.order
    ctx.order = order
    ctx.fields, ctx.pos = order_fields(order)
    -- (keys_only) registers a key row carries besides its order fields: the client tests
    -- a pattern only it can decide on them (query/residual.py)
    for _, f in ipairs(plan.row_fields or EMPTY) do
        if not ctx.pos[f] then
            ctx.fields[#ctx.fields + 1] = f
            ctx.pos[f] = #ctx.fields
        end
    end
    if plan.cursor then
        local cursor = {}
        for k = 1, #order do
            local item = plan.cursor[k]
            cursor[k] = (item[1] == 1) and item[2] or false
        end
        ctx.cursor = cursor
    end
end

-- page mode: the rows after the cursor, by the strategy the plan names.
local function page_query(ctx, plan)
    local prefix = ctx.prefix
    page_setup(ctx, plan)
    local need = plan.limit
    local rows = {}
    local walk = plan.walk
    local done = false
    if plan.walk_values then
        -- plan.walk_budget: past this many traces of visited groups without a match, collect
        done = walk_values_page(ctx, need, rows, plan.walk_budget) ~= 'abandon'
        if not done then
            rows = {}
        end
    elseif plan.id_walk then
        -- plan.id_walk: how many id buckets to visit before falling back to collect
        done = id_walk_page(ctx, need, rows, plan.id_walk) ~= 'abandon'
    elseif plan.chunk_walk then
        -- plan.chunk_walk: how many chunks to visit before falling back to walk/collect
        local visited, held = chunk_walk_page(ctx, need, rows, plan.chunk_walk)
        if visited ~= 'abandon' then
            done = true
            if visited and #rows < need then
                collect_page(ctx, need - #rows, rows, prefix .. ':ts')
            end
        elseif held == 0 then
            -- no match in the chunks the plan expected to fill the page: correlated terms
            -- (an empty intersection, say); the newest traces a walk of ts would test were
            -- just tested
            walk = nil
        end
    end
    if done then
        -- the page is in rows
    elseif walk then
        local zname, asc = walk[1], walk[2] == 1
        ctx.density = plan.density
        if walk[3] then
            ctx.walk_range = { walk[3], walk[4] }
        end
        ctx.walk_budget = plan.walk_budget
        local exhausted = walk_page(ctx, zname, asc, need, rows)
        ctx.walk_budget = nil
        if exhausted == 'abandon' then
            ctx.collecting = true
            collect_page(ctx, need, rows, nil)
        elseif exhausted and #rows < need then
            collect_page(ctx, need - #rows, rows, prefix .. ':' .. zname)
        end
    else
        ctx.collecting = true
        collect_page(ctx, need, rows, nil)
    end
    return page_reply(ctx, rows, plan.shown or need)
end

-- Time to pick a match of a page scan (its first order value, its place among the others)
-- and to read the order fields of a row the reply shows, in microseconds.
local SELECT_US, ROW_US = 3, 6

-- page mode with plan.scan: {next trace number or -1, the page of this call's matches}: the
-- traces from plan.scan[1] on are tested in number order until the budget is spent, and
-- the first `limit` of their matches after the cursor (in order) make the page; the client
-- merges the pages of the calls (query/pages.py).
local function page_scan(ctx, plan)
    page_setup(ctx, plan)
    local need = plan.limit
    local shown = plan.shown or need
    local matches = {}
    local next_from = scan(ctx, function(got)
        local before = #matches
        for i = 1, #got do
            matches[before + i] = got[i]
        end
        local rows = math.max(0, math.min(#matches, shown) - math.min(before, shown))
        return #got * SELECT_US + rows * ROW_US
    end)
    local rows = {}
    select_rows(ctx, matches, need, rows)
    return { next_from, page_reply(ctx, rows, shown) }
end

--[[
tt_query: run one query plan over one partition (read only).
KEYS[1] ids     <prefix>:ids (declares the partition's slot; every other key is built from prefix)
ARGV[1] prefix  partition prefix ns:{pNN}
ARGV[2] plan    msgpack map: mode ('page' | 'count' | 'stats' | 'cards' | 'values' | 'ids' |
                'rows'), expr (tree),
                sources (leaves to enumerate; empty = every trace), residual (what a
                candidate from the sources must still pass), walk ({zname, asc} or
                absent), order ({kind 'n'|'s'|'x', field, asc 1|0} each), cursor ({present
                0|1, value} per order key, or absent), limit, group (hash fields), keys (cards)
                terms (count: {sign, leaf...} conjunctions to count and sum instead of the
                expr), walk_values ({dkey, vprefix, presence leaf, match fraction, candidate
                cost, traces}: walk the first order key's distinct values, or absent)
                shown (page: how many of the `limit` rows to return, default all)
                scan (count, stats, page: {from trace number, budget in microseconds}:
                test the traces from that number on, in number order, until the budget is
                spent)
                keys_only (page: rows are their order fields and '#', the trace number)
                numbers (rows: trace numbers whose hashes to return)
                deadline (page, count, stats without scan: microseconds; past them the
                call gives up and replies {-1, {}} (page; {-2, {}} when it was collecting
                every candidate) or -1: the client then runs it in budgeted calls)
                density (walk: the expected fraction of walked entries that match)
                value_fields (page: {distinct zset = hash field} of the V leaves of many
                values, which may be tested by reading the candidates' registers)
                dkey, runs, lead (values: a distinct zset and the literal runs of a LIKE
                pattern, the first one its start, and its lead); window (values: {first rank,
                count} of the values read when they are not sought); count_only (values: the
                pattern is its lead and one final %: count its values and their traces);
                dense_after (count_only over a key without the byte-order index: past this
                many matching values, the counts are extrapolated)
Returns page: one msgpack array {rows found (<= limit), {hash, ...}}: the HGETALL field/value
lists of the first `shown` rows after the cursor, in order; count: an integer; stats: groups
{values, count, duration, n, ...}; with scan, count and stats reply {next trace number or
-1 when done, the count or groups of this call}, page {next trace number or -1, the page
of this call's matches}; cards: integers; values: msgpack {sought 0|1, {value,
count, ...}, next window's first rank or -1}, or with count_only {values, traces,
estimated 0|1}.
--]]
local function tt_query(keys, argv)
    bind_runtime()
    local started = now_us() -- (a budgeted scan counts its time from here)
    local prefix = argv[1]
    if keys[1] ~= prefix .. ':ids' then
        fail('BADKEYS', 'KEYS[1] must be ' .. tostring(prefix) .. ':ids')
    end
    local ok, plan = pcall(cmsgpack.unpack, argv[2] or '')
    if not ok or type(plan) ~= 'table' then
        fail('BADPLAN', 'ARGV[2] must be a msgpack map')
    end
    local ctx = { prefix = prefix, plan = plan, expr = plan.expr or { 'A' }, scanned = 0 }
    Enum.eval_batch = plan.deadline and Enum.DEADLINE_EVAL_BATCH or Enum.EVAL_BATCH
    -- Candidates from the plan's sources need only the residual test; every trace (no
    -- sources) the whole filter.
    ctx.residual = ctx.expr
    if plan.sources and #plan.sources > 0 and plan.residual then
        ctx.residual = plan.residual
    end
    local mode = plan.mode
    if mode == 'cards' then
        return cards_reply(ctx, plan.keys or {})
    end
    if mode == 'rows' then
        return rows_reply(ctx, plan.numbers or {})
    end
    if mode == 'ids' then
        return IdWalk.ids_reply(prefix, plan.prefixes or {}, plan.suffixes or {})
    end
    if mode == 'values' then
        if plan.count_only then
            return value_count_reply(plan.dkey, plan.lead or {}, plan.dense_after)
        end
        local beside, per = plan.beside, plan.beside_per
        local few, rest = nil, nil
        if plan.sample and beside then
            few, rest = few_beside(plan.dkey, beside, per)
        end
        if few then
            return Like.sample_reply(plan.dkey, few_sample(plan.sample, rest), few)
        end
        return values_reply(plan.dkey, plan.runs or {}, plan.lead, plan.window, plan.alts, plan.sample)
    end
    if plan.scan then
        ctx.started = started
        if mode == 'page' then
            return page_scan(ctx, plan)
        end
        return mode == 'stats' and stats_scan(ctx) or count_scan(ctx)
    end
    if mode == 'count' or mode == 'stats' then
        local run = mode == 'stats' and stats_reply
            or (plan.terms and function(c)
                return count_terms_reply(c, plan.terms)
            end)
            or count_query
        if plan.deadline then
            local done, reply = with_deadline(started + plan.deadline, run, ctx)
            return done and reply or -1
        end
        return run(ctx)
    end
    if mode ~= 'page' then
        fail('BADPLAN', 'unknown mode ' .. tostring(mode))
    end
    if plan.deadline then
        -- past the deadline: -2 when it was collecting every candidate (a call for fewer
        -- rows would collect them all again), else -1
        local done, reply = with_deadline(started + plan.deadline, page_query, ctx, plan)
        return done and reply or cmsgpack.pack({ ctx.collecting and -2 or -1, {} })
    end
    return page_query(ctx, plan)
end

Query.tt_query = tt_query
