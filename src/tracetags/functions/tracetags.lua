#!lua name=tracetags_v1

--[[
tracetags fold library, version 1 (the version is in the library name: a change of the
stored layout or of the ARGV format is a new library name).

Key shapes and the per-trace hash layout mirror src/tracetags/keys.py, whose docstring is the
key table; the ARGV format is documented in src/tracetags/functions/__init__.py.  Python
validates every event; this file only applies them, after checking the ARGV structure in a
first pass so that a malformed call fails before its first write (Functions do not roll back).

Fold semantics: every register (tag, metadata key, attribute) is last-writer-wins by stream
entry id, compared numerically as (ms, seq); a deleted tag keeps a tombstone stamp; a trace
deletion records the trace's tombstone in <prefix>:gone and drops every register older than it.
--]]

-- redis.call exists only at run time (not while the library loads): bound in tt_apply.
local call

-- Compact stamps: (ms - base) * SEQ_SPAN + seq stays below 2^53, so a double holds it exactly.
local SEQ_SPAN = 1024
local MAX_DELTA = 4398046511104 -- 2^42
-- unpack() of more than a few thousand values overflows Lua's C stack: chunk long commands.
local CHUNK = 1000

local ATTRIBUTES = { e = true, s = true, d = true, S = true, c = true }
local NUMERIC = { s = true, d = true }
local KINDS = { S = true, F = true, T = true, D = true, X = true }

local function fail(code, message)
    error({ err = 'TT_' .. code .. ' ' .. message })
end

local function enc(s)
    return #s .. ':' .. s
end

local function int(n)
    return string.format('%d', n)
end

-- An entry id as (ms, seq); nil when it is not a well-formed id small enough to be exact.
local function parse_id(id)
    local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
    if not ms or #ms > 15 or #seq > 15 then
        return nil
    end
    return tonumber(ms), tonumber(seq)
end

local function newer(ams, aseq, bms, bseq)
    return ams > bms or (ams == bms and aseq > bseq)
end

local function encode_stamp(ms, seq, base)
    local delta = ms - base
    if seq < SEQ_SPAN and delta < MAX_DELTA and delta > -MAX_DELTA then
        return int(delta * SEQ_SPAN + seq)
    end
    return int(ms) .. '-' .. int(seq)
end

local function decode_stamp(text, base)
    local dash = string.find(text, '-', 2, true)
    if dash then
        return tonumber(string.sub(text, 1, dash - 1)), tonumber(string.sub(text, dash + 1))
    end
    local n = tonumber(text)
    local delta = math.floor(n / SEQ_SPAN)
    return base + delta, n - delta * SEQ_SPAN
end

-- A register '<stamp>:<value>' as (stamp, value); value is nil for a tombstone '<stamp>'.
local function split_register(text)
    local colon = string.find(text, ':', 1, true)
    if colon then
        return string.sub(text, 1, colon - 1), string.sub(text, colon + 1)
    end
    return text, nil
end

local function is_register(field)
    return #field > 1 or ATTRIBUTES[field] ~= nil
end

local function chunked(command, key, items)
    local n = #items
    for i = 1, n, CHUNK do
        call(command, key, unpack(items, i, math.min(i + CHUNK - 1, n)))
    end
end

-- The index keys of a register's value: (value set, key set or nil, distinct-values zset or nil).
-- Registers s and d have none: they feed the sorted sets refreshed by refresh_times.
local function index_keys(prefix, field, value)
    if #field > 1 then
        local kind, key = string.sub(field, 1, 1), enc(string.sub(field, 2))
        if kind == 't' then
            return prefix .. ':tv:' .. key .. enc(value), prefix .. ':tk:' .. key, prefix .. ':td:' .. key
        end
        return prefix .. ':mv:' .. key .. enc(value), prefix .. ':mk:' .. key, prefix .. ':md:' .. key
    elseif field == 'e' then
        return prefix .. ':ex:' .. enc(value), nil, prefix .. ':exd'
    elseif field == 'S' then
        return prefix .. ':st:' .. enc(value), nil, nil
    elseif field == 'c' then
        return prefix .. ':cr:' .. enc(value), nil, prefix .. ':crd'
    end
    return nil, nil, nil
end

-- key_too: the trace gains (or loses) the key itself, not only this value of it.
local function index_add(prefix, field, value, no, key_too)
    local value_set, key_set, distinct = index_keys(prefix, field, value)
    if value_set then
        -- SCARD is cheaper than a ZADD, and a value set rarely goes from 0 to 1 member.
        if call('SADD', value_set, no) == 1 and distinct and call('SCARD', value_set) == 1 then
            call('ZADD', distinct, 0, value)
        end
        if key_set and key_too then
            call('SADD', key_set, no)
        end
    end
end

local function index_remove(prefix, field, value, no, key_too)
    local value_set, key_set, distinct = index_keys(prefix, field, value)
    if value_set then
        if call('SREM', value_set, no) == 1 and distinct and call('EXISTS', value_set) == 0 then
            call('ZREM', distinct, value)
        end
        if key_set and key_too then
            call('SREM', key_set, no)
        end
    end
end

-- Re-place a trace in the timestamp / duration / end-time sorted sets from its registers.
local function refresh_times(prefix, hash, no)
    local got = call('HMGET', hash, 's', 'd')
    local ts = got[1] and select(2, split_register(got[1]))
    local du = got[2] and select(2, split_register(got[2]))
    if ts then
        call('ZADD', prefix .. ':ts', ts, no)
        call('ZADD', prefix .. ':en', int(tonumber(ts) + (du and tonumber(du) or 0)), no)
    else
        call('ZREM', prefix .. ':ts', no)
        call('ZREM', prefix .. ':en', no)
    end
    if du then
        call('ZADD', prefix .. ':du', du, no)
    else
        call('ZREM', prefix .. ':du', no)
    end
end

-- The trace's tombstone (latest trace_deleted) as (ms, seq), or nil.
local function tombstone(prefix, trace_id)
    local gone = call('HGET', prefix .. ':gone', trace_id)
    if gone then
        return parse_id(gone)
    end
    return nil
end

-- Apply one non-deleting event: write each register whose stamp it beats.
-- fields[i] is a hash field, values[i] its new value or false (tombstone).
local function apply_event(prefix, trace_id, ms, seq, fields, values)
    local gone_ms, gone_seq = tombstone(prefix, trace_id)
    if gone_ms and not newer(ms, seq, gone_ms, gone_seq) then
        return
    end
    local ids = prefix .. ':ids'
    local no = call('HGET', ids, trace_id)
    local n = #fields
    local hash, base, stamp, current
    local writes = {}
    if no then
        hash = prefix .. ':t:' .. no
        local wanted = { 'b', 'x' }
        for i = 1, n do
            wanted[i + 2] = fields[i]
        end
        current = {}
        for i = 1, n + 2, CHUNK do
            local got = call('HMGET', hash, unpack(wanted, i, math.min(i + CHUNK - 1, n + 2)))
            for j = 1, #got do
                current[i + j - 1] = got[j]
            end
        end
        base = tonumber(current[1])
        stamp = encode_stamp(ms, seq, base)
        local seen_ms, seen_seq = decode_stamp(current[2], base)
        if newer(ms, seq, seen_ms, seen_seq) then
            writes[1] = 'x'
            writes[2] = stamp
        end
    else
        no = int(call('INCR', prefix .. ':n'))
        call('HSET', ids, trace_id, no)
        call('SADD', prefix .. ':all', no)
        hash = prefix .. ':t:' .. no
        base = ms
        stamp = encode_stamp(ms, seq, base)
        writes = { 'i', trace_id, 'b', int(base), 'x', stamp }
        current = {}
    end
    local written = {} -- registers this event already wrote (a key listed twice)
    local times = false
    for i = 1, n do
        local field, value = fields[i], values[i]
        local old = written[field] or current[i + 2]
        local old_value = nil
        local wins = true
        if old then
            local old_stamp
            old_stamp, old_value = split_register(old)
            local old_ms, old_seq = decode_stamp(old_stamp, base)
            wins = newer(ms, seq, old_ms, old_seq)
        end
        if wins then
            local text = value and (stamp .. ':' .. value) or stamp
            written[field] = text
            writes[#writes + 1] = field
            writes[#writes + 1] = text
            if old_value ~= (value or nil) then
                if old_value then
                    index_remove(prefix, field, old_value, no, not value)
                end
                if value then
                    index_add(prefix, field, value, no, old_value == nil)
                end
                if NUMERIC[field] then
                    times = true
                end
            end
        end
    end
    if #writes > 0 then
        chunked('HSET', hash, writes)
    end
    if times then
        refresh_times(prefix, hash, no)
    end
end

-- Apply a trace_deleted: record the tombstone, drop every register older than it, and the
-- whole trace (state and index memberships) if no event newer than the deletion was applied.
local function apply_deletion(prefix, trace_id, ms, seq)
    local gone_ms, gone_seq = tombstone(prefix, trace_id)
    if gone_ms and not newer(ms, seq, gone_ms, gone_seq) then
        return
    end
    call('HSET', prefix .. ':gone', trace_id, int(ms) .. '-' .. int(seq))
    local ids = prefix .. ':ids'
    local no = call('HGET', ids, trace_id)
    if not no then
        return
    end
    local hash = prefix .. ':t:' .. no
    local flat = call('HGETALL', hash)
    local state = {}
    for i = 1, #flat, 2 do
        state[flat[i]] = flat[i + 1]
    end
    local base = tonumber(state['b'])
    local whole = newer(ms, seq, decode_stamp(state['x'], base))
    local dropped = {}
    local times = false
    for i = 1, #flat, 2 do
        local field = flat[i]
        if is_register(field) then
            local stamp, value = split_register(flat[i + 1])
            if whole or newer(ms, seq, decode_stamp(stamp, base)) then
                if value then
                    index_remove(prefix, field, value, no, true)
                end
                if NUMERIC[field] then
                    times = true
                end
                dropped[#dropped + 1] = field
            end
        end
    end
    if whole then
        call('SREM', prefix .. ':all', no)
        call('ZREM', prefix .. ':ts', no)
        call('ZREM', prefix .. ':du', no)
        call('ZREM', prefix .. ':en', no)
        call('DEL', hash)
        call('HDEL', ids, trace_id)
    elseif #dropped > 0 then
        chunked('HDEL', hash, dropped)
        if times then
            refresh_times(prefix, hash, no)
        end
    end
end

local function is_millis(v)
    return type(v) == 'number' and v >= 0 and v == math.floor(v) and v < 9007199254740992
end

-- First pass: check the layout of the whole batch and of the dead letters.
local function check_args(args, n_events, argv)
    local p = 2
    local n_args = #args
    for _ = 1, n_events do
        if p + 5 > n_args then
            fail('BADARGS', 'event header at batch[' .. p .. '] runs past the end')
        end
        if type(args[p]) ~= 'string' or not parse_id(args[p]) then
            fail('BADARGS', 'bad entry id at batch[' .. p .. ']: ' .. tostring(args[p]))
        end
        local kind = args[p + 1]
        if not KINDS[kind] or type(args[p + 2]) ~= 'string' then
            fail('BADARGS', 'bad kind or trace id at batch[' .. (p + 1) .. ']: ' .. tostring(kind))
        end
        local n_attrs, n_tags, n_meta = tonumber(args[p + 3]), tonumber(args[p + 4]), tonumber(args[p + 5])
        if not (n_attrs and n_tags and n_meta and n_attrs >= 0 and n_tags >= 0 and n_meta >= 0) then
            fail('BADARGS', 'bad counts at batch[' .. (p + 3) .. ']')
        end
        if (kind ~= 'S' and kind ~= 'F' and (n_attrs > 0 or n_meta > 0))
            or (kind == 'X' and n_tags > 0) then
            fail('BADARGS', 'fields not allowed for kind ' .. kind .. ' at batch[' .. p .. ']')
        end
        p = p + 6
        for i = p, p + 2 * n_attrs - 1, 2 do
            local code, value = args[i], args[i + 1]
            if not ATTRIBUTES[code] or (NUMERIC[code] and not is_millis(value))
                or (not NUMERIC[code] and type(value) ~= 'string') then
                fail('BADARGS', 'bad attribute at batch[' .. i .. ']')
            end
        end
        p = p + 2 * n_attrs
        local last = p + (kind == 'D' and n_tags or 2 * n_tags) + 2 * n_meta - 1
        if last > n_args then
            fail('BADARGS', 'event fields run past the end of the batch')
        end
        for i = p, last do
            if type(args[i]) ~= 'string' then
                fail('BADARGS', 'tag or metadata at batch[' .. i .. '] is not a string')
            end
        end
        p = last + 1
    end
    if p - 1 ~= n_args then
        fail('BADARGS', 'the batch has ' .. n_args .. ' values, its counts describe ' .. (p - 1))
    end
    if (#argv - 3) % 3 ~= 0 then
        fail('BADARGS', 'dead letters must come as (entry_id, payload, reason) triples')
    end
    for i = 4, #argv, 3 do
        if not parse_id(argv[i]) then
            fail('BADARGS', 'bad dead-letter entry id at ARGV[' .. i .. ']')
        end
    end
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
  n_meta, n_attrs (code, value) pairs (codes e s d S c; s and d are ints), n_tags (key, value)
  pairs (keys only for D), n_meta (key, value) pairs
ARGV[4...]          dead letters, three values each: entry_id, payload, reason
Returns {events applied, dead letters written, entries acked}.
--]]
local function tt_apply(keys, argv)
    call = redis.call
    local stream, dead = keys[1], keys[2]
    local group, prefix = argv[1], argv[2]
    if stream ~= prefix .. ':log' or dead ~= prefix .. ':dead' then
        fail('BADKEYS', 'KEYS must be ' .. prefix .. ':log and ' .. prefix .. ':dead')
    end
    local ok, args = pcall(cmsgpack.unpack, argv[3] or '')
    if not ok or type(args) ~= 'table' then
        fail('BADARGS', 'ARGV[3] must be a msgpack array')
    end
    local n_events = args[1]
    if not is_millis(n_events) then
        fail('BADARGS', 'the batch must start with its event count')
    end
    check_args(args, n_events, argv)
    local n_dead = (#argv - 3) / 3

    local acks = {}
    local p = 2
    for e = 1, n_events do
        local entry_id, kind, trace_id = args[p], args[p + 1], args[p + 2]
        local n_attrs, n_tags, n_meta = tonumber(args[p + 3]), tonumber(args[p + 4]), tonumber(args[p + 5])
        local ms, seq = parse_id(entry_id)
        acks[e] = entry_id
        p = p + 6
        if kind == 'X' then
            apply_deletion(prefix, trace_id, ms, seq)
        else
            local fields, values = {}, {}
            local n = 0
            for i = p, p + 2 * n_attrs - 1, 2 do
                local code, value = args[i], args[i + 1]
                n = n + 1
                fields[n] = code
                values[n] = NUMERIC[code] and int(value) or value
            end
            p = p + 2 * n_attrs
            if kind == 'D' then
                for i = p, p + n_tags - 1 do
                    n = n + 1
                    fields[n] = 't' .. args[i]
                    values[n] = false
                end
                p = p + n_tags
            else
                for i = p, p + 2 * n_tags - 1, 2 do
                    n = n + 1
                    fields[n] = 't' .. args[i]
                    values[n] = args[i + 1]
                end
                p = p + 2 * n_tags
            end
            for i = p, p + 2 * n_meta - 1, 2 do
                n = n + 1
                fields[n] = 'm' .. args[i]
                values[n] = args[i + 1]
            end
            p = p + 2 * n_meta
            apply_event(prefix, trace_id, ms, seq, fields, values)
        end
    end

    if n_dead > 0 then
        local now = call('TIME')
        local time_ms = int(tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
        for i = 4, #argv, 3 do
            call('XADD', dead, '*', 'entry_id', argv[i], 'payload', argv[i + 1],
                'reason', argv[i + 2], 'time_ms', time_ms)
            acks[#acks + 1] = argv[i]
        end
    end
    local acked = 0
    for i = 1, #acks, CHUNK do
        acked = acked + call('XACK', stream, group, unpack(acks, i, math.min(i + CHUNK - 1, #acks)))
    end
    return { n_events, n_dead, acked }
end

redis.register_function('tt_apply', tt_apply)
