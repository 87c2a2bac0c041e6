-- Query leaves: each tests a list of candidates (trace numbers) at once, a call per set or
-- chunk rather than per trace.

local register_value = Stamps.register_value
local test_pattern, test_bitmap = Patterns.test_pattern, Patterns.test_bitmap
local zmscore, in_range = Sets.zmscore, Sets.in_range
local fingerprint = Lookups.fingerprint

--[[ The query engine: tt_query evaluates one compiled plan over one partition.

The plan (built by src/tracetags/query/plan.py and its stages, one msgpack map) holds a boolean tree whose
leaves are index tests, the sources to enumerate candidates from (or a walk of an order zset),
the order keys, the cursor and the page size.  Candidates are evaluated in batches: each leaf
tests a whole batch with one SMISMEMBER per set or chunk (ZMSCORE for ranges), so a batch of
512 numbers costs one call per leaf, not one per trace.

Leaves (arrays, first element is the kind):
  {'V', dkey, vprefix, value...}  traces whose value is one of the values (value sets; their
                                  form, plain or chunked, comes from the counts in dkey)
  {'C', key}                      a chunked key set (tk / mk: traces that have the key)
  {'R', zname, lo, hi}            traces whose score in <prefix>:<zname> is within lo..hi
                                  (Redis score syntax: '(5', '-inf')
  {'E', number...}                these trace numbers
  {'B', bitmap}                   these trace numbers: bit n % 7 of byte n // 7 set
  {'P', field}                    traces whose hash has the field (an attribute is present)
  {'M', field, stamped, op, negated, pattern}  traces whose hash field (a register when
                                  stamped is 1) matches a LIKE ('L') or ILIKE ('I') pattern
                                  (negated 1: holds a value that does not): read per
                                  candidate, for a pattern over too many values to list
  {'A'} every trace;  {'Z'} none
  {'L', dkey, vprefix, lead, traces, values}  (page plans) a LIKE that is its lead and one
                                  final %: becomes the V leaf of the values it matches when the
                                  call starts (resolve_sought); traces and values are the probe's
Nodes: {'&', child...}  {'|', child...}  {'!', child}.
--]]

local QUERY_BATCH = 1024
local WALK_BATCH_MAX = 4096

local function slot(n)
    return DECIMAL[n] or int(n)
end

local function last_chunk_of(ctx)
    if not ctx.last_chunk then
        ctx.last_chunk = floor(tonumber(call('GET', ctx.prefix .. ':n') or 0) / SET_CHUNK)
    end
    return ctx.last_chunk
end

local function pending_of(list, mask)
    local members, idx = {}, {}
    for i = 1, #list do
        if not mask[i] then
            members[#members + 1] = list[i]
            idx[#idx + 1] = i
        end
    end
    return members, idx
end

local function smismember_into(key, members, idx, mask)
    local n = #members
    for i = 1, n, CHUNK do
        local got = call('SMISMEMBER', key, unpack_(members, i, math.min(i + CHUNK - 1, n)))
        for j = 1, #got do
            if got[j] == 1 then
                mask[idx[i + j - 1]] = true
            end
        end
    end
end

-- Mark in mask the members of list (those not marked yet) in any of the chunked sets keys:
-- the candidates are grouped by chunk once, then per chunk each set is asked (SMISMEMBER)
-- about the offsets no earlier set held.
local function test_chunked_any(keys, list, mask)
    local groups, order = {}, {}
    for i = 1, #list do
        if not mask[i] then
            local no = tonumber(list[i])
            local c = floor(no / SET_CHUNK)
            local g = groups[c]
            if not g then
                g = { {}, {} }
                groups[c] = g
                order[#order + 1] = c
            end
            local offsets, idx = g[1], g[2]
            offsets[#offsets + 1] = DECIMAL[no - c * SET_CHUNK]
            idx[#idx + 1] = i
        end
    end
    for k = 1, #order do
        local c = order[k]
        local offsets, idx = groups[c][1], groups[c][2]
        local suffix = ':' .. slot(c)
        for t = 1, #keys do
            smismember_into(keys[t] .. suffix, offsets, idx, mask)
            if t < #keys then
                local left, at = {}, {}
                for j = 1, #offsets do
                    if not mask[idx[j]] then
                        left[#left + 1] = offsets[j]
                        at[#at + 1] = idx[j]
                    end
                end
                if #left == 0 then
                    break
                end
                offsets, idx = left, at
            end
        end
    end
end

-- The value sets of a V leaf: { {key, chunked, count}, ... } (values with no trace skipped).
local function value_sets(leaf)
    if leaf.sets then
        return leaf.sets
    end
    local sets = {}
    local n = #leaf
    for i = 4, n, CHUNK do
        local got = call('ZMSCORE', leaf[2], unpack_(leaf, i, math.min(i + CHUNK - 1, n)))
        for j = 1, #got do
            if got[j] then
                local count = tonumber(got[j])
                sets[#sets + 1] = { leaf[3] .. enc(leaf[i + j - 1]), count > PLAIN_MAX, count }
            end
        end
    end
    leaf.sets = sets
    return sets
end


-- A V leaf of many plain sets (LIKE 'user_12%': a thousand small user-id sets) would cost one
-- SMISMEMBER per set and batch: read their members once (the counts bound the work) into a
-- Lua table and test by lookup; a leaf of a few plain sets too, once the candidates asked of
-- them (ASK_US each and set) have cost what the table does (a walk's batches add up).
-- Chunked sets of the leaf are still tested per chunk.  Costs in microseconds.
local MEMBER_TABLE_MIN_SETS = 8
local MEMBER_TABLE_MAX = 200000
local TABLE_SET_US, TABLE_MEMBER_US, ASK_US = 3, 0.7, 0.3

-- How many of a leaf's sets are plain, and their members in all.
local function plain_sets_size(sets)
    local plain, members = 0, 0
    for s = 1, #sets do
        if not sets[s][2] then
            plain = plain + 1
            members = members + sets[s][3]
        end
    end
    return plain, members
end

local function plain_member_table(leaf, sets, asking)
    if leaf.members == nil then
        leaf.members = false
        local plain, total = plain_sets_size(sets)
        local fits = plain >= 2 and total <= MEMBER_TABLE_MAX
        leaf.nplain, leaf.asked = plain, 0
        leaf.table_cost = fits and plain * TABLE_SET_US + total * TABLE_MEMBER_US or math.huge
        if plain >= MEMBER_TABLE_MIN_SETS and fits then
            leaf.asked = leaf.table_cost -- (built at once)
        end
    end
    if leaf.members then
        return leaf.members
    end
    leaf.asked = leaf.asked + asking * leaf.nplain * ASK_US
    if leaf.asked >= leaf.table_cost then
        local members = {}
        for s = 1, #sets do
            if not sets[s][2] then
                local got = call('SMEMBERS', sets[s][1])
                for i = 1, #got do
                    members[got[i]] = true
                end
            end
        end
        leaf.members = members
    end
    return leaf.members
end

-- The other way to test a V leaf of many sets: read each candidate's own register (HGET of
-- the key's field) and look its value up.  Chosen while it costs less than the member table
-- of the plain sets (a cost per set and per member, paid once; a walk may meet only a
-- fraction of the members), or than SMISMEMBER per plain set and list when the table would
-- be too large, plus the chunked sets' tests (per candidate and set: its chunk found, then
-- SMISMEMBER per chunk).  The costs are estimates of Redis time in microseconds.  The field
-- comes with the plan (value_fields: distinct zset -> hash field; a walked value group's
-- context carries its page's); true when it marked mask.
local HASH_TEST_US = 2
local CHUNKED_TEST_US = 0.7

-- The lookup fingerprints of field when they are ready (see fingerprint): {strings = chunk ->
-- its string (read once per call), key = their key prefix}; false when not ready.
local LOOKUP_TEST_US = 0.4

local function lookup_of(ctx, field)
    ctx.lookups = ctx.lookups or {}
    local known = ctx.lookups[field]
    if known == nil then
        known = false
        if call('HGET', ctx.prefix .. ':lk', field) == 'ready' then
            known = { strings = {}, key = ctx.prefix .. ':lf:' .. enc(field) .. ':' }
        end
        ctx.lookups[field] = known
    end
    return known
end

-- A V leaf of more values than this is always tested by the candidates' registers when its
-- field is known (a pattern matching most of a key of 100k values, under NOT): sizing its
-- sets (a ZMSCORE score each) would take a budgeted call's whole budget, every call.
local REGISTERS_ONLY_VALUES = 2048

local function test_by_registers(ctx, leaf, list, mask)
    local fields = ctx.value_fields or (ctx.plan and ctx.plan.value_fields)
    local field = fields and fields[leaf[2]]
    if not field or leaf.members then
        return false
    end
    local lookup = lookup_of(ctx, field)
    local per_test = lookup and LOOKUP_TEST_US or HASH_TEST_US
    if not leaf.table_us then -- (a LIKE sought by this call has it from the probe's counts)
        if #leaf - 3 > REGISTERS_ONLY_VALUES then
            -- sizing the sets (a ZMSCORE score each) would cost more than a budgeted call:
            -- registers it is, whatever the sets hold
            leaf.registers_only, leaf.table_us = true, 0
        else
            local sets = value_sets(leaf)
            local plain, members = plain_sets_size(sets)
            leaf.plain, leaf.chunked = plain, #sets - plain
            leaf.table_us = plain * TABLE_SET_US + members * TABLE_MEMBER_US
            leaf.table_ok = plain >= MEMBER_TABLE_MIN_SETS and members <= MEMBER_TABLE_MAX
        end
        leaf.hashed = 0
    end
    if leaf.registers_only then -- luacheck: ignore 542 (no other way is priced)
    elseif leaf.table_ok then
        local tested = leaf.hashed + #list
        if tested * per_test >= leaf.table_us + tested * leaf.chunked * CHUNKED_TEST_US then
            return false
        end
    elseif #list * per_test
        >= leaf.plain * (TABLE_SET_US + 0.1 * #list) + #list * leaf.chunked * CHUNKED_TEST_US then
        return false
    end
    leaf.hashed = leaf.hashed + #list
    local wanted = leaf.wanted
    if not wanted then
        wanted = {}
        for i = 4, #leaf do
            wanted[leaf[i]] = true
        end
        leaf.wanted = wanted
    end
    local fps = lookup and leaf.fingerprints
    if lookup and not fps then
        fps = {}
        for v in pairs(wanted) do
            fps[fingerprint(v)] = true
        end
        leaf.fingerprints = fps
    end
    local hash_prefix = ctx.prefix .. ':t:'
    local strings, key = lookup and lookup.strings, lookup and lookup.key
    for i = 1, #list do
        if not mask[i] then
            local test = true
            if fps then -- only a wanted fingerprint needs the register read
                local no = tonumber(list[i])
                local c = floor(no / SET_CHUNK)
                local text = strings[c]
                if not text then
                    text = call('GET', key .. c) or ''
                    strings[c] = text
                end
                local o = 2 * (no - c * SET_CHUNK)
                local a, b = string.byte(text, o + 1, o + 2)
                test = a ~= nil and fps[a * 256 + b] ~= nil
            end
            if test then
                local raw = call('HGET', hash_prefix .. list[i], field)
                if raw and wanted[register_value(raw)] then
                    mask[i] = true
                end
            end
        end
    end
    return true
end

-- Whether every live trace holds a P leaf's field: client_request_id's count (batch.lua's
-- <prefix>:cn, kept by partitions born with it) equal to the number of traces.
local function every_trace_has(ctx, leaf)
    if leaf.all == nil then
        local n = leaf[2] == 'c' and call('GET', ctx.prefix .. ':cn')
        if n then
            ctx.traces = ctx.traces or call('HLEN', ctx.prefix .. ':ids')
        end
        leaf.all = n and tonumber(n) == ctx.traces or false
    end
    return leaf.all
end

-- Mark in mask the members of list that the leaf holds.
local function test_leaf(ctx, leaf, list, mask)
    local kind = leaf[1]
    if kind == 'V' then
        if test_by_registers(ctx, leaf, list, mask) then
            return
        end
        local sets = value_sets(leaf)
        local members = plain_member_table(leaf, sets, #list)
        if members then
            for i = 1, #list do
                if members[list[i]] then
                    mask[i] = true
                end
            end
        end
        local chunked = {}
        for s = 1, #sets do
            if sets[s][2] then
                chunked[#chunked + 1] = sets[s][1]
            end
        end
        if #chunked > 0 then
            test_chunked_any(chunked, list, mask)
        end
        for s = 1, #sets do
            local set = sets[s]
            if not set[2] and not members then
                local pending, idx = pending_of(list, mask)
                if #pending == 0 then
                    break
                end
                smismember_into(set[1], pending, idx, mask)
            end
        end
    elseif kind == 'C' then
        test_chunked_any({ leaf[2] }, list, mask)
    elseif kind == 'R' then
        local scores = zmscore(ctx.prefix .. ':' .. leaf[2], list)
        for i = 1, #list do
            if scores[i] and in_range(leaf, scores[i]) then
                mask[i] = true
            end
        end
    elseif kind == 'E' then
        if not leaf.set then
            leaf.set = {}
            for i = 2, #leaf do
                leaf.set[tostring(leaf[i])] = true
            end
        end
        for i = 1, #list do
            if leaf.set[list[i]] then
                mask[i] = true
            end
        end
    elseif kind == 'P' then
        local all = every_trace_has(ctx, leaf)
        local hash_prefix = ctx.prefix .. ':t:'
        for i = 1, #list do
            if all or call('HEXISTS', hash_prefix .. list[i], leaf[2]) == 1 then
                mask[i] = true
            end
        end
    elseif kind == 'M' then
        test_pattern(ctx, leaf, list, mask)
    elseif kind == 'B' then
        test_bitmap(leaf[2], list, mask)
    elseif kind == 'A' then
        for i = 1, #list do
            mask[i] = true
        end
    elseif kind ~= 'Z' then
        fail('BADPLAN', 'unknown leaf kind ' .. tostring(kind))
    end
end

Leaves.slot = slot
Leaves.test_leaf = test_leaf
Leaves.value_sets = value_sets
Leaves.QUERY_BATCH = QUERY_BATCH
Leaves.last_chunk_of = last_chunk_of
Leaves.WALK_BATCH_MAX = WALK_BATCH_MAX
Leaves.MEMBER_TABLE_MAX = MEMBER_TABLE_MAX
Leaves.MEMBER_TABLE_MIN_SETS = MEMBER_TABLE_MIN_SETS
Leaves.TABLE_MEMBER_US = TABLE_MEMBER_US
Leaves.TABLE_SET_US = TABLE_SET_US
Leaves.REGISTERS_ONLY_VALUES = REGISTERS_ONLY_VALUES
