--[[ tt_apply: the batch checked, folded per trace, dead-lettered and acknowledged.

Fold semantics: every register (tag, metadata key, attribute) is last-writer-wins by stream
entry id, compared numerically as (ms, seq); a deleted tag keeps a tombstone stamp; a trace
deletion records the trace's tombstone in <prefix>:gone and drops every register older than it.
The first pass over the batch checks the ARGV structure, so that a malformed call fails before
its first write (Functions do not roll back).

Speed: a batch is folded per trace, not per event.  The tombstones and trace numbers of all
its traces are read with one HMGET each, every trace hash once (HMGET of the registers the
batch writes; HGETALL only when the batch deletes the trace), and the hash written once; index
changes are the difference between the trace's registers before and after the batch, gathered
over the whole batch so that each index key gets one SADD / SREM / ZADD per batch whatever the
number of traces touching it.  The Lua around the calls costs more than the calls themselves
(number-to-string and tonumber conversions, table allocations): a trace with one event in the
batch takes a path that builds no fold state, stamps are parsed only for the registers the
batch writes (compact stamps compared as integers), numbers are formatted at most once per
event, and index changes are gathered per field and value, their key strings built once per
batch.
--]]

local newer, parse_id, register_stamp = Stamps.newer, Stamps.parse_id, Stamps.register_stamp
local chunked, hmget = Sets.chunked, Sets.hmget
local new_batch = Batches.new_batch
local fold_trace, write_new = FoldTrace.fold_trace, FoldTrace.write_new
local apply_single, write_new_single = FoldSingle.apply_single, FoldSingle.write_new_single
local refuse_over_limit = TagLimit.refuse_over_limit
local id_order_update = IdOrder.id_order_update

local KINDS = { S = true, F = true, T = true, D = true, X = true }

local function is_decimal_millis(v)
    return type_(v) == 'string' and #v > 0 and #v < 17 and not find(v, '[^0-9]')
        and (#v == 1 or sub(v, 1, 1) ~= '0') and tonumber(v) < 9007199254740992
end

local function is_count(n)
    return type_(n) == 'number' and n >= 0 and n % 1 == 0
end

local function not_a_string(i)
    fail('BADARGS', 'tag or metadata at batch[' .. i .. '] is not a string')
end

-- Copy count (key, value) pairs from args[p...] into fv after position n as
-- (<kind><key>, value), checking that both are strings; returns the new n.
local function copy_pairs(args, p, count, kind, fv, n)
    for i = p, p + 2 * count - 1, 2 do
        local key, value = args[i], args[i + 1]
        if type_(key) ~= 'string' then
            not_a_string(i)
        elseif type_(value) ~= 'string' then
            not_a_string(i + 1)
        end
        fv[n + 1], fv[n + 2] = kind .. key, value
        n = n + 2
    end
    return n
end

-- The fields of an event that sets registers, {field, value, ...}, and the position after
-- it.  One copy of the event's slice sizes the table once (growing one is dear here); tag and
-- metadata keys then get their field prefix in place.
local function slice_fields(args, p, n_args, n_attrs, n_tags, n_meta)
    local last = p + 2 * (n_attrs + n_tags + n_meta) - 1
    if last > n_args then
        fail('BADARGS', 'event fields run past the end of the batch')
    end
    local fv = { unpack_(args, p, last) }
    local i = 1
    for _ = 1, n_attrs do
        local code, value = fv[i], fv[i + 1]
        if not ATTRIBUTES[code] or (NUMERIC[code] and not is_decimal_millis(value))
            or (not NUMERIC[code] and type_(value) ~= 'string') then
            fail('BADARGS', 'bad attribute at batch[' .. (p + i - 1) .. ']')
        end
        i = i + 2
    end
    for _ = 1, n_tags + n_meta do
        local key, value = fv[i], fv[i + 1]
        if type_(key) ~= 'string' then
            not_a_string(p + i - 1)
        elseif type_(value) ~= 'string' then
            not_a_string(p + i)
        end
        fv[i] = (i <= 2 * (n_attrs + n_tags) and 't' or 'm') .. key
        i = i + 2
    end
    return fv, last + 1
end

-- The fields of a tags_deleted event (each key once, value false: a tombstone) or of an event
-- too large for one unpack, copied pair by pair; and the position after the event.
local function copy_fields(args, p, n_args, kind, n_attrs, n_tags, n_meta)
    local fv = {}
    local n = 0
    for i = p, p + 2 * n_attrs - 1, 2 do
        local code, value = args[i], args[i + 1]
        if not ATTRIBUTES[code] or (NUMERIC[code] and not is_decimal_millis(value))
            or (not NUMERIC[code] and type_(value) ~= 'string') then
            fail('BADARGS', 'bad attribute at batch[' .. i .. ']')
        end
        fv[n + 1], fv[n + 2] = code, value
        n = n + 2
    end
    p = p + 2 * n_attrs
    if p + (kind == 'D' and n_tags or 2 * n_tags) + 2 * n_meta - 1 > n_args then
        fail('BADARGS', 'event fields run past the end of the batch')
    end
    if kind == 'D' then
        -- A key deleted twice in one event is one change (index counts must not drift).
        local seen = n_tags > 1 and {}
        for i = p, p + n_tags - 1 do
            local key = args[i]
            if type_(key) ~= 'string' then
                not_a_string(i)
            end
            if not seen or not seen[key] then
                fv[n + 1], fv[n + 2] = 't' .. key, false
                n = n + 2
                if seen then
                    seen[key] = true
                end
            end
        end
        p = p + n_tags
    else
        n = copy_pairs(args, p, n_tags, 't', fv, n)
        p = p + 2 * n_tags
    end
    n = copy_pairs(args, p, n_meta, 'm', fv, n)
    p = p + 2 * n_meta
    return fv, p
end

-- One pass checks the layout (no write happens before it ends) and groups the events by
-- trace in first-seen order: first[trace_id] is its first event, multi[trace_id] the list
-- of its events when it has several.  Returns acks (entry ids), first, multi, trace_ids.
local function read_batch(args, n_events)
    local n_args = #args
    local acks = {}
    local first, multi = {}, {}
    local trace_ids = {}
    local n_traces = 0
    local p = 2
    for e = 1, n_events do
        if p + 5 > n_args then
            fail('BADARGS', 'event header at batch[' .. p .. '] runs past the end')
        end
        local entry_id, kind, trace_id = args[p], args[p + 1], args[p + 2]
        local n_attrs, n_tags, n_meta = args[p + 3], args[p + 4], args[p + 5]
        local ms_text, seq_text
        if type_(entry_id) == 'string' then
            ms_text, seq_text = match(entry_id, '^(%d+)%-(%d+)$')
        end
        if not ms_text or #ms_text > 15 or #seq_text > 15 then
            fail('BADARGS', 'bad entry id at batch[' .. p .. ']: ' .. tostring(entry_id))
        end
        if not KINDS[kind] or type_(trace_id) ~= 'string' then
            fail('BADARGS', 'bad kind or trace id at batch[' .. (p + 1) .. ']: ' .. tostring(kind))
        end
        if not (is_count(n_attrs) and is_count(n_tags) and is_count(n_meta)) then
            fail('BADARGS', 'bad counts at batch[' .. (p + 3) .. ']')
        end
        if (kind ~= 'S' and kind ~= 'F' and (n_attrs > 0 or n_meta > 0))
            or (kind == 'X' and n_tags > 0) then
            fail('BADARGS', 'fields not allowed for kind ' .. kind .. ' at batch[' .. p .. ']')
        end
        acks[e] = entry_id
        p = p + 6
        local ev = {
            ms = tonumber(ms_text), seq = tonumber(seq_text), ms_text = ms_text,
            base = false, stamp = false, id = entry_id,
        }
        if kind ~= 'X' then
            if kind ~= 'D' and 2 * (n_attrs + n_tags + n_meta) <= CHUNK then
                ev.fv, p = slice_fields(args, p, n_args, n_attrs, n_tags, n_meta)
            else
                ev.fv, p = copy_fields(args, p, n_args, kind, n_attrs, n_tags, n_meta)
            end
        end
        local prev = first[trace_id]
        if prev == nil then
            first[trace_id] = ev
            n_traces = n_traces + 1
            trace_ids[n_traces] = trace_id
        else
            local events = multi[trace_id]
            if events then
                events[#events + 1] = ev
            else
                multi[trace_id] = { prev, ev }
            end
        end
    end
    if p - 1 ~= n_args then
        fail('BADARGS', 'the batch has ' .. n_args .. ' values, its counts describe ' .. (p - 1))
    end
    return acks, first, multi, trace_ids
end

-- The number of dead letters in argv (triples from ARGV[5]), checked.
local function count_dead_letters(argv)
    if (#argv - 4) % 3 ~= 0 then
        fail('BADARGS', 'dead letters must come as (entry_id, payload, reason) triples')
    end
    for i = 5, #argv, 3 do
        if not parse_id(argv[i]) then
            fail('BADARGS', 'bad dead-letter entry id at ARGV[' .. i .. ']')
        end
    end
    return (#argv - 4) / 3
end

-- Fold every trace of the batch: a trace with one event that is not a deletion takes the
-- single-event path (no fold state); the others are folded whole (fold_trace.lua).
-- Returns what the writes after the fold need: out.created (states, or {trace_id, ev} of a
-- single event, that need a new number), out.gone (tombstone writes), out.ids_removed.
local function fold_traces(batch, prefix, first, multi, trace_ids)
    local hash_prefix = prefix .. ':t:'
    local out = { created = {}, gone = {}, ids_removed = {}, unordered = {} }
    local n_traces = #trace_ids
    if n_traces == 0 then
        return out
    end
    local created = out.created
    local tombstones = hmget(prefix .. ':gone', trace_ids)
    local numbers = hmget(prefix .. ':ids', trace_ids)
    for t = 1, n_traces do
        local trace_id = trace_ids[t]
        local events = multi[trace_id]
        local ev = first[trace_id]
        local no = numbers[t]
        if not events and ev.fv then
            local tombstone = tombstones[t]
            local live = true
            if tombstone then
                local gms, gseq = parse_id(tombstone)
                live = newer(ev.ms, ev.seq, gms, gseq)
            end
            if live then
                if no then
                    apply_single(batch, ev, no, hash_prefix)
                else
                    created[#created + 1] = { trace_id = trace_id, ev = ev }
                end
            end
        else
            fold_trace(batch, trace_id, events or { ev }, no, tombstones[t], hash_prefix, out)
        end
    end
    return out
end

-- Number the traces created by the batch, write them, and record their ids; returns
-- {trace_id, number} of each.
local function write_created(batch, prefix, created)
    local ids_key, hash_prefix = prefix .. ':ids', prefix .. ':t:'
    local n_created = #created
    local added = {}
    if n_created > 0 then
        local last = call('INCRBY', prefix .. ':n', n_created)
        batch.born = last == n_created -- the partition's first traces: it gets a tsx
        local ids = {}
        local chunks, offsets = batch.pos.chunk, batch.pos.offset
        for i = 1, n_created do
            local st = created[i]
            local number = last - n_created + i
            local no = int(number)
            local c = floor(number / SET_CHUNK)
            chunks[no], offsets[no] = c, DECIMAL[number - c * SET_CHUNK]
            if st.ev then
                write_new_single(batch, st.trace_id, st.ev, no, hash_prefix)
            else
                write_new(batch, st, no, hash_prefix)
            end
            ids[2 * i - 1], ids[2 * i] = st.trace_id, no
            added[i] = { st.trace_id, no }
        end
        chunked('HSET', ids_key, ids)
    end
    return added
end

-- Dead-letter the bad entries (those of argv, acked here, and the events refused over the
-- tag limit, in acks already), then XACK every entry of the batch; returns the acks counted.
local function dead_letter_and_ack(stream, dead, group, argv, acks, refused)
    if #argv > 4 or #refused > 0 then
        local now = call('TIME')
        local time_ms = int(tonumber(now[1]) * 1000 + floor(tonumber(now[2]) / 1000))
        for i = 5, #argv, 3 do
            call('XADD', dead, '*', 'entry_id', argv[i], 'payload', argv[i + 1],
                'reason', argv[i + 2], 'time_ms', time_ms)
            acks[#acks + 1] = argv[i]
        end
        for r = 1, #refused do
            local item = refused[r]
            call('XADD', dead, '*', 'entry_id', item[1], 'payload', 'trace ' .. item[2],
                'reason', item[3], 'time_ms', time_ms)
        end
    end
    local acked = 0
    for i = 1, #acks, CHUNK do
        local last = math.min(i + CHUNK - 1, #acks)
        acked = acked + call('XACK', stream, group, unpack_(acks, i, last))
    end
    return acked
end

--[[
tt_apply: fold one batch of one partition, dead-letter its bad entries and XACK them all.
KEYS[1] stream      <prefix>:log (the partition's stream; every other key is built from prefix)
KEYS[2] dead        <prefix>:dead
ARGV[1] group       consumer group to XACK in
ARGV[2] prefix      partition prefix ns:{pNN}
ARGV[3] batch       one msgpack array (one argument is far cheaper to send than thousands;
                    only msgpack str, int and array: Redis 7.0's cmsgpack has no bin type):
  n_events, then n_events events: entry_id, kind (S F T D X), trace_id, n_attrs, n_tags,
  n_meta, n_attrs (code, value) pairs (codes e s d S c; s and d as decimal strings),
  n_tags (key, value) pairs (keys only for D), n_meta (key, value) pairs
ARGV[4] max_tags    live tags a trace may hold (decimal; 0: no limit): an event that would
                    leave its trace with more is dead-lettered instead of folded
ARGV[5...]          dead letters, three values each: entry_id, payload, reason
Returns {events applied, dead letters written, entries acked}.
--]]
local function tt_apply(keys, argv)
    bind_runtime()
    local stream, dead = keys[1], keys[2]
    local group, prefix = argv[1], argv[2]
    if stream ~= prefix .. ':log' or dead ~= prefix .. ':dead' then
        fail('BADKEYS', 'KEYS must be ' .. prefix .. ':log and ' .. prefix .. ':dead')
    end
    -- A cluster slot being migrated refuses a key missing here (moved already, or not yet
    -- made) only when the script touches it, after earlier writes: reading a key that never
    -- exists first makes such a call refuse whole, before it writes anything.
    redis.call('EXISTS', prefix .. ':absent')
    local ok, args = pcall(cmsgpack.unpack, argv[3] or '')
    if not ok or type(args) ~= 'table' then
        fail('BADARGS', 'ARGV[3] must be a msgpack array')
    end
    local n_events = args[1]
    if not is_count(n_events) then
        fail('BADARGS', 'the batch must start with its event count')
    end

    local acks, first, multi, trace_ids = read_batch(args, n_events)
    local n_dead = count_dead_letters(argv)
    local max_tags = tonumber(argv[4])
    if not max_tags or max_tags < 0 or max_tags % 1 ~= 0 then
        fail('BADARGS', 'ARGV[4] must be the tag limit per trace (a whole number >= 0)')
    end
    local refused = refuse_over_limit(prefix, first, multi, trace_ids, max_tags)
    local batch = new_batch(prefix)
    local out = fold_traces(batch, prefix, first, multi, trace_ids)
    local added = write_created(batch, prefix, out.created)
    if #out.ids_removed > 0 then
        chunked('HDEL', prefix .. ':ids', out.ids_removed)
    end
    id_order_update(prefix, out.unordered, added, batch.born)
    if #out.gone > 0 then
        chunked('HSET', prefix .. ':gone', out.gone)
    end
    batch:flush()
    local acked = dead_letter_and_ack(stream, dead, group, argv, acks, refused)
    return { n_events - #refused, n_dead + #refused, acked }
end

Apply.tt_apply = tt_apply
