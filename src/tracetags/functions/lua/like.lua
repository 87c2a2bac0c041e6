-- LIKE over a key's distinct values: the values that start like a pattern, sought in the
-- byte-order index (or filtered where the key has none).

local zmscore = Sets.zmscore
local lex_dir, lex_first, lex_scan = LexIndex.lex_dir, LexIndex.lex_first, LexIndex.lex_scan
local MEMBER_TABLE_MAX = Leaves.MEMBER_TABLE_MAX
local MEMBER_TABLE_MIN_SETS, TABLE_MEMBER_US = Leaves.MEMBER_TABLE_MIN_SETS, Leaves.TABLE_MEMBER_US
local TABLE_SET_US = Leaves.TABLE_SET_US

-- The smallest string above every string that starts with p (nil: none, p is all \255).
local function past_prefix(p)
    local n = #p
    while n > 0 and string.byte(p, n) == 255 do
        n = n - 1
    end
    if n == 0 then
        return nil
    end
    return sub(p, 1, n - 1) .. string.char(string.byte(p, n) + 1)
end

local utf8_width = Patterns.width -- bytes of the UTF-8 character whose first byte is b

-- Feed take(values) the values of dkey's index that start with a string matching lead
-- (literal runs, and counts of any characters: a LIKE pattern up to its first %), in byte
-- order.  Literal runs extend a prefix that is sought; at a count, the distinct
-- continuations of the prefix are visited one by one (a seek to the first value after
-- each), so 'user_12%' costs a few seeks and the values starting 'user_12', not every
-- value starting 'user'.
local function lex_lead(dkey, lead, take)
    local dir = lex_dir(dkey)
    local function from(p, k)
        while k <= #lead and type(lead[k]) == 'string' do
            p = p .. lead[k]
            k = k + 1
        end
        local np = #p
        if k > #lead then
            lex_scan(dkey, true, p, function(values)
                local keep = {}
                for i = 1, #values do
                    if sub(values[i], 1, np) ~= p then
                        take(keep)
                        return true
                    end
                    keep[i] = values[i]
                end
                take(keep)
                return false
            end)
            return
        end
        local cursor, open = p, false
        while cursor do
            local v = lex_first(dkey, dir, cursor, open)
            if not v or sub(v, 1, np) ~= p then
                return
            end
            local at, chars = np + 1, 0
            while chars < lead[k] and at <= #v do
                at = at + utf8_width(string.byte(v, at))
                chars = chars + 1
            end
            if chars < lead[k] then -- too short to match: the values after it
                cursor, open = v, true
            else
                local q = sub(v, 1, at - 1)
                from(q, k + 1)
                cursor, open = past_prefix(q), false
            end
        end
    end
    from('', 1)
end

-- Whether v starts with a string matching lead (literal runs, and counts of any one
-- character), as lex_lead seeks them.
local function lead_match(v, lead)
    local at = 1
    for k = 1, #lead do
        local item = lead[k]
        if type(item) == 'string' then
            if sub(v, at, at + #item - 1) ~= item then
                return false
            end
            at = at + #item
        else
            for _ = 1, item do
                if at > #v then
                    return false
                end
                at = at + utf8_width(string.byte(v, at))
            end
        end
    end
    return true
end

-- The values of dkey that start like lead, exactly (for a LIKE pattern that is its lead and
-- one final %, its matches): sought in the byte-order index, or, where the key has none,
-- filtered from every value.
local function lead_values(dkey, lead)
    local found, n = {}, 0
    if #lead > 0 and call('EXISTS', lex_dir(dkey)) == 1 then
        lex_lead(dkey, lead, function(values)
            for i = 1, #values do
                n = n + 1
                found[n] = values[i]
            end
        end)
    else
        local all = call('ZRANGE', dkey, 0, -1)
        for i = 1, #all do
            if lead_match(all[i], lead) then
                n = n + 1
                found[n] = all[i]
            end
        end
    end
    return found
end

local COUNT_WINDOW = 2000

-- {number of values, their traces} of the values found.
local function counted(dkey, found)
    local counts = zmscore(dkey, found)
    local values, traces = 0, 0
    for i = 1, #counts do
        if counts[i] then
            values = values + 1
            traces = traces + counts[i]
        end
    end
    return values, traces
end

-- count_only over a key with the byte-order index, a literal lead p: the values starting
-- with p, bucket by bucket; past dense_after of them, the counts are extrapolated by the
-- share of p's buckets read (the directory's heads in [p, last value read] against those
-- in p's range), so a dense lead reads a few buckets, not every value.
local function lex_count_reply(dkey, p, dense_after)
    local np, found, last, dense = #p, {}, nil, false
    lex_scan(dkey, true, p, function(values)
        for i = 1, #values do
            if sub(values[i], 1, np) ~= p then
                return true
            end
            found[#found + 1] = values[i]
        end
        last = values[#values]
        dense = #found > dense_after
        return dense
    end)
    local values, traces = counted(dkey, found)
    if not dense then
        return { values, traces, 0 }
    end
    local dir, past = lex_dir(dkey), past_prefix(p)
    local heads = call('ZLEXCOUNT', dir, '[' .. p, past and ('(' .. past) or '+')
    local read = call('ZLEXCOUNT', dir, '[' .. p, '[' .. last)
    local share = (read + 1) / (heads + 1)
    return { floor(values / share), floor(traces / share), 1 }
end

-- values mode with count_only: {number of values, their traces, estimated 0|1} of
-- lead_values (the probe of a page, whose plan then carries the pattern, not the values:
-- see resolve_sought).  A key without the byte-order index is read COUNT_WINDOW values at
-- a time; once more than dense_after match, the counts are extrapolated from the values
-- read (estimated 1): the planner then tests each candidate's value and only needs sizes.
local function value_count_reply(dkey, lead, dense_after)
    local indexed = #lead > 0 and call('EXISTS', lex_dir(dkey)) == 1
    if indexed and dense_after and #lead == 1 and type(lead[1]) == 'string' then
        return lex_count_reply(dkey, lead[1], dense_after)
    end
    if not dense_after or indexed then
        local values, traces = counted(dkey, lead_values(dkey, lead))
        return { values, traces, 0 }
    end
    local card = call('ZCARD', dkey)
    local found, read = {}, 0
    while true do
        local got = call('ZRANGE', dkey, read, read + COUNT_WINDOW - 1)
        for i = 1, #got do
            if lead_match(got[i], lead) then
                found[#found + 1] = got[i]
            end
        end
        read = read + #got
        if #got < COUNT_WINDOW or read >= card then
            local values, traces = counted(dkey, found)
            return { values, traces, 0 }
        end
        if #found > dense_after then
            local values, traces = counted(dkey, found)
            return { floor(values * card / read), floor(traces * card / read), 1 }
        end
    end
end

-- A page plan's leaf {'L', dkey, vprefix, lead, traces, values} (a LIKE that is its lead and
-- one final %, sized by the probe's value_count_reply) becomes the V leaf of the values it
-- matches now, sought once per call (seen: lead text -> values); a thousand values then
-- cross neither the network nor the planner.  The probe's sizes only set costs: a skipped
-- test would need a count read now, so the leaf is never taken to hold every trace.
local function resolve_sought(ctx, node, seen)
    local kind = node[1]
    if kind == '&' or kind == '|' then
        for i = 2, #node do
            resolve_sought(ctx, node[i], seen)
        end
    elseif kind == '!' then
        resolve_sought(ctx, node[2], seen)
    elseif kind == 'L' then
        local dkey, lead, traces, count = node[2], node[4], node[5], node[6]
        local text = dkey .. '\0' .. cmsgpack.pack(lead)
        local values = seen[text]
        if not values then
            values = lead_values(dkey, lead)
            seen[text] = values
        end
        node[4], node[5], node[6] = nil, nil, nil
        if #values == 0 then
            node[1], node[2], node[3] = 'Z', nil, nil
            return
        end
        node[1] = 'V'
        for i = 1, #values do
            node[3 + i] = values[i]
        end
        node.all = false
        if #values > 1 then
            node.ckey = false -- (one dense value would be a chunked set: read its count)
        end
        node.plain, node.chunked = count, 0 -- (set sizes unread: priced as plain sets)
        node.table_us = count * TABLE_SET_US + traces * TABLE_MEMBER_US
        node.table_ok = count >= MEMBER_TABLE_MIN_SETS and traces <= MEMBER_TABLE_MAX
        node.hashed = 0
    end
end

-- The values found with their trace counts, packed as values_reply answers them.
local function counted_reply(dkey, sought, found, next_rank)
    local counts = zmscore(dkey, found)
    local flat = {}
    for i = 1, #found do
        flat[2 * i - 1], flat[2 * i] = found[i], counts[i]
    end
    -- msgpack: the client decodes a thousand values in C (not one RESP string each)
    return cmsgpack.pack({ sought and 1 or 0, flat, next_rank })
end

-- An ILIKE's lead in each of its case variants (or an anchored RLIKE's lead), sought in
-- the byte-order index: only the values starting so.
local function alts_sought(dkey, alts)
    local found = {}
    for _, alt in ipairs(alts) do
        lex_lead(dkey, { alt }, function(values)
            for i = 1, #values do
                found[#found + 1] = values[i]
            end
        end)
    end
    return counted_reply(dkey, true, found, -1)
end

-- About how many values start with one of the alts: the byte-order index's buckets in
-- their ranges (a directory read per alt), each of ~LEX_VALUES values, plus the one before.
local LEX_VALUES = 96
local function alts_span(dkey, alts)
    local dir, buckets = lex_dir(dkey), 0
    for _, alt in ipairs(alts) do
        local past = past_prefix(alt)
        buckets = buckets + 1 + call('ZLEXCOUNT', dir, '[' .. alt, past and ('(' .. past) or '+')
    end
    return buckets * LEX_VALUES
end

-- The same without a byte-order index: the values of a window of ranks (all without one)
-- that start with an alt.
local function alts_by_window(dkey, alts, window)
    local got
    local next_rank = -1
    if window then
        got = call('ZRANGE', dkey, window[1], window[1] + window[2] - 1)
        if #got == window[2] then
            next_rank = window[1] + window[2]
        end
    else
        got = call('ZRANGE', dkey, 0, -1)
    end
    local found = {}
    for i = 1, #got do
        local v = got[i]
        for _, alt in ipairs(alts) do
            if sub(v, 1, #alt) == alt then
                found[#found + 1] = v
                break
            end
        end
    end
    return counted_reply(dkey, true, found, next_rank)
end

-- `sample` random values of the distinct zset dkey of `values` with their counts, packed
-- as {2, {value, count, ...}, values}: the client tells from them how to plan the pattern.
local function sample_reply(dkey, sample, values)
    return cmsgpack.pack({ 2, call('ZRANDMEMBER', dkey, sample, 'WITHSCORES'), values })
end

-- The values of the distinct zset dkey that start with runs[1] and contain the other runs in
-- that order (the literal runs of a LIKE pattern, so a superset of its matches; the planner
-- applies the pattern), as msgpack {sought, {value, count, ...}}: sought = 1 when they came
-- from the byte-order index by `lead`, so exactly those that start like the pattern, or
-- were kept by `alts` (the literal leads one of which every match starts with).
-- ZSCAN MATCH would format the score of every value, matching or not; here only the
-- candidates' scores are read.  With window {first rank, count}, values not sought are read
-- that window of ranks at a time, and the reply's third item is the next window's first
-- rank (-1: none), so no call reads a million values.
local function values_reply(dkey, runs, lead, window, alts, sample)
    if alts and #alts > 0 then
        if call('EXISTS', lex_dir(dkey)) == 1 then
            -- (leads of more values than a window, 'cr' of 'CR_096867' over client
            -- request ids: a sample instead, for the client to choose, as for a key
            -- without the index)
            if not (sample and window and alts_span(dkey, alts) > window[2]) then
                return alts_sought(dkey, alts)
            end
        end
        if not sample then
            -- (a sampled pattern's M leaf test beats reading a dense lead's values)
            return alts_by_window(dkey, alts, window)
        end
    end
    local sought = #runs > 0 and #runs[1] > 0 and call('EXISTS', lex_dir(dkey)) == 1
    if sample and window and not sought then
        -- more than a window of values to read: a sample instead, for the client to choose
        local values = call('ZCARD', dkey)
        if values > window[2] then
            return sample_reply(dkey, sample, values)
        end
    end
    if #runs == 0 then
        -- every value (ILIKE, RLIKE, numbers): one packed reply the client decodes in C,
        -- scores as Redis formats them; a window of ranks per call when given
        if window then
            local got = call('ZRANGE', dkey, window[1], window[1] + window[2] - 1, 'WITHSCORES')
            local next_rank = #got == 2 * window[2] and window[1] + window[2] or -1
            return cmsgpack.pack({ 0, got, next_rank })
        end
        return cmsgpack.pack({ 0, call('ZRANGE', dkey, 0, -1, 'WITHSCORES'), -1 })
    end
    local prefix = runs[1] or ''
    local np = #prefix
    local found, n = {}, 0
    local function take(values)
        for i = 1, #values do
            local v = values[i]
            local ok = np == 0 or find(v, prefix, 1, true) == 1
            local at = np + 1
            for r = 2, #runs do
                if not ok then
                    break
                end
                local s = find(v, runs[r], at, true)
                ok = s ~= nil
                at = ok and s + #runs[r]
            end
            if ok then
                n = n + 1
                found[n] = v
            end
        end
    end
    local next_rank = -1
    if sought then
        -- only the values starting like the pattern, sought in byte order
        lex_lead(dkey, (lead and #lead > 0) and lead or { prefix }, take)
    elseif window then
        -- every value, a window of ranks per call (the client asks for the next one)
        local got = call('ZRANGE', dkey, window[1], window[1] + window[2] - 1)
        take(got)
        if #got == window[2] then
            next_rank = window[1] + window[2]
        end
    else
        take(call('ZRANGE', dkey, 0, -1))
    end
    return counted_reply(dkey, sought, found, next_rank)
end

Like.resolve_sought = resolve_sought
Like.value_count_reply = value_count_reply
Like.values_reply = values_reply
Like.sample_reply = sample_reply
Like.past_prefix = past_prefix
