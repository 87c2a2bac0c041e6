#!lua name=tracetags_v2

--[[
tracetags fold library, version 2 (the version is in the library name: a change of the
stored layout or of the ARGV format is a new library name).

Key shapes and the per-trace hash layout mirror src/tracetags/keys.py, whose docstring is the
key table; the ARGV format is documented in src/tracetags/functions/__init__.py.  Python
validates every event; this file only applies them, after checking the ARGV structure in a
first pass so that a malformed call fails before its first write (Functions do not roll back).

Fold semantics: every register (tag, metadata key, attribute) is last-writer-wins by stream
entry id, compared numerically as (ms, seq); a deleted tag keeps a tombstone stamp; a trace
deletion records the trace's tombstone in <prefix>:gone and drops every register older than it.

Speed (each redis.call costs a few microseconds, far more than the Lua around it): a batch
is folded per trace, not per event.  The tombstones and trace numbers of all its traces are
read with one HMGET each, every trace hash once (HGETALL), its events applied in memory in
stream order, and the hash written once; index changes are the difference between the
trace's registers before and after the batch, gathered over the whole batch so that each
index key gets one SADD / SREM / ZADD per batch whatever the number of traces touching it.
--]]

-- redis.call exists only at run time (not while the library loads): bound in tt_apply.
local call

-- Compact stamps: (ms - base) * SEQ_SPAN + seq stays below 2^53, so a double holds it exactly.
local SEQ_SPAN = 1024
local MAX_DELTA = 4398046511104 -- 2^42
-- unpack() of more than a few thousand values overflows Lua's C stack: chunk long commands.
local CHUNK = 1000
-- Sets of more than 512 members stop being intsets (set-max-intset-entries) and cost ~10x
-- more per member.  A chunked set keeps chunk c = number // SET_CHUNK in <key>:<c> as the
-- offsets number % SET_CHUNK: at most 512 members, all int16, so every chunk is an intset.
local SET_CHUNK = 512
-- A value set is plain (<key>, trace numbers) while it has at most PLAIN_MAX members, and
-- chunked above; its form is a function of its member count, kept in its distinct zset.
local PLAIN_MAX = 512

local ATTRIBUTES = { e = true, s = true, d = true, S = true, c = true }
local NUMERIC = { s = true, d = true }
local KINDS = { S = true, F = true, T = true, D = true, X = true }

-- Standard-library shortcuts (globals are reachable only at run time): bound in tt_apply.
local floor, sub, find, format

local function fail(code, message)
    error({ err = 'TT_' .. code .. ' ' .. message })
end

-- Decimal texts of small numbers, made once: number-to-string conversion is the slowest
-- common Lua operation here (~0.8 us, more than a redis.call of a short command).
local DECIMAL = {}
for i = 0, 1023 do
    DECIMAL[i] = '' .. i
end

local function enc(s)
    local n = #s
    return (DECIMAL[n] or n) .. ':' .. s
end

local function int(n)
    return format('%d', n)
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

-- The (ms, seq) of a register '<stamp>[:<value>]' of a trace whose base is base.
local function register_stamp(text, base)
    local colon = find(text, ':', 1, true)
    local stamp = colon and sub(text, 1, colon - 1) or text
    local dash = find(stamp, '-', 2, true)
    if dash then
        return tonumber(sub(stamp, 1, dash - 1)), tonumber(sub(stamp, dash + 1))
    end
    local n = tonumber(stamp)
    local delta = floor(n / SEQ_SPAN)
    return base + delta, n - delta * SEQ_SPAN
end

-- The value of a register '<stamp>:<value>'; nil for a tombstone '<stamp>'.
local function register_value(text)
    local colon = find(text, ':', 1, true)
    if colon then
        return sub(text, colon + 1)
    end
    return nil
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

-- HMGET of many fields; missing ones come back as false.
local function hmget(key, fields)
    local out = {}
    local n = #fields
    for i = 1, n, CHUNK do
        local got = call('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, n)))
        for j = 1, #got do
            out[i + j - 1] = got[j]
        end
    end
    return out
end

--[[ Index changes of one batch, gathered before any index write.

values[vkey] = { distinct = dkey, value = v, add = {numbers}, rem = {numbers} }: value sets
(tv mv ex st cr), each counted in its distinct zset (score = member count).
keysets[kkey] = { add = {numbers}, rem = {numbers} }: always-chunked key sets (tk mk).
Every (key, number) appears at most once: a trace's change is computed once per batch, and a
number belongs to one trace.
--]]
local Batch = {}
Batch.__index = Batch

local function new_batch(prefix)
    return setmetatable({
        prefix = prefix,
        values = {},
        keysets = {},
        field_keys = {}, -- field -> { value-key prefix, distinct key, key-set key or false }
        all_add = {},
        all_rem = {},
        ts = {}, -- ZADD score/member pairs
        du = {},
        en = {},
        ts_rem = {},
        du_rem = {},
        en_rem = {},
    }, Batch)
end

-- Value-set prefix, distinct zset and key set of a register field (nil for s and d).
function Batch:keys_of(field)
    local known = self.field_keys[field]
    if known == nil then
        local prefix = self.prefix
        if #field > 1 then
            local kind, key = sub(field, 1, 1), enc(sub(field, 2))
            if kind == 't' then
                known = { prefix .. ':tv:' .. key, prefix .. ':td:' .. key, prefix .. ':tk:' .. key }
            else
                known = { prefix .. ':mv:' .. key, prefix .. ':md:' .. key, prefix .. ':mk:' .. key }
            end
        elseif field == 'e' then
            known = { prefix .. ':ex:', prefix .. ':exd', false }
        elseif field == 'S' then
            known = { prefix .. ':st:', prefix .. ':std', false }
        elseif field == 'c' then
            known = { prefix .. ':cr:', prefix .. ':crd', false }
        else
            known = false
        end
        self.field_keys[field] = known
    end
    return known
end

function Batch:value_entry(known, value)
    local vkey = known[1] .. enc(value)
    local entry = self.values[vkey]
    if not entry then
        entry = { distinct = known[2], value = value, add = {}, rem = {} }
        self.values[vkey] = entry
    end
    return entry
end

function Batch:keyset_entry(kkey)
    local entry = self.keysets[kkey]
    if not entry then
        entry = { add = {}, rem = {} }
        self.keysets[kkey] = entry
    end
    return entry
end

-- Trace no's register field goes from old_value to new_value (nil = absent or tombstone).
function Batch:change(field, old_value, new_value, no)
    if old_value == new_value then
        return
    end
    local known = self:keys_of(field)
    if not known then
        return
    end
    if old_value then
        local rem = self:value_entry(known, old_value).rem
        rem[#rem + 1] = no
    end
    if new_value then
        local add = self:value_entry(known, new_value).add
        add[#add + 1] = no
    end
    local kkey = known[3]
    if kkey and (old_value == nil) ~= (new_value == nil) then
        local entry = self:keyset_entry(kkey)
        local list = new_value and entry.add or entry.rem
        list[#list + 1] = no
    end
end

-- Trace no's timestamp / duration registers are now ts, du (strings or nil).
function Batch:times(no, ts, du)
    if ts then
        local n = #self.ts
        self.ts[n + 1], self.ts[n + 2] = ts, no
        n = #self.en
        self.en[n + 1], self.en[n + 2] = du and int(tonumber(ts) + tonumber(du)) or ts, no
    else
        self.ts_rem[#self.ts_rem + 1] = no
        self.en_rem[#self.en_rem + 1] = no
    end
    if du then
        local n = #self.du
        self.du[n + 1], self.du[n + 2] = du, no
    else
        self.du_rem[#self.du_rem + 1] = no
    end
end

-- Numbers grouped by chunk: { [chunk] = {offsets} }.
local function by_chunk(numbers)
    local out = {}
    for i = 1, #numbers do
        local no = tonumber(numbers[i])
        local c = floor(no / SET_CHUNK)
        local list = out[c]
        if not list then
            list = {}
            out[c] = list
        end
        list[#list + 1] = DECIMAL[no - c * SET_CHUNK]
    end
    return out
end

local function chunked_write(command, key, numbers)
    for c, offsets in pairs(by_chunk(numbers)) do
        chunked(command, key .. ':' .. (DECIMAL[c] or int(c)), offsets)
    end
end

-- Every member (trace number) of a chunked set whose chunks are 0..last_chunk; deletes it.
local function take_chunked(key, last_chunk)
    local members = {}
    for c = 0, last_chunk do
        local chunk_key = key .. ':' .. (DECIMAL[c] or int(c))
        local got = call('SMEMBERS', chunk_key)
        if #got > 0 then
            local base = c * SET_CHUNK
            for i = 1, #got do
                members[#members + 1] = int(base + tonumber(got[i]))
            end
            call('DEL', chunk_key)
        end
    end
    return members
end

local function set_of(list)
    local out = {}
    for i = 1, #list do
        out[list[i]] = true
    end
    return out
end

-- Rewrite a value set whose form changes: every current member, minus rem, plus add.
local function members_after(current, rem, add)
    local removed = set_of(rem)
    local out = {}
    for i = 1, #current do
        if not removed[current[i]] then
            out[#out + 1] = current[i]
        end
    end
    for i = 1, #add do
        out[#out + 1] = add[i]
    end
    return out
end

-- Write the gathered index changes.
function Batch:flush()
    local prefix = self.prefix
    -- Value sets: read the counts of every touched value, one ZMSCORE per distinct zset.
    local by_distinct = {}
    for vkey, entry in pairs(self.values) do
        local group = by_distinct[entry.distinct]
        if not group then
            group = { vkeys = {}, values = {} }
            by_distinct[entry.distinct] = group
        end
        group.vkeys[#group.vkeys + 1] = vkey
        group.values[#group.values + 1] = entry.value
    end
    local last_chunk = nil
    for dkey, group in pairs(by_distinct) do
        local counts = {}
        local n = #group.values
        for i = 1, n, CHUNK do
            local got = call('ZMSCORE', dkey, unpack(group.values, i, math.min(i + CHUNK - 1, n)))
            for j = 1, #got do
                counts[i + j - 1] = got[j] and tonumber(got[j]) or 0
            end
        end
        local zadd, zrem = {}, {}
        for i = 1, n do
            local vkey = group.vkeys[i]
            local entry = self.values[vkey]
            local add, rem = entry.add, entry.rem
            local before = counts[i]
            local after = before + #add - #rem
            if before <= PLAIN_MAX and after <= PLAIN_MAX then
                if #rem > 0 then
                    chunked('SREM', vkey, rem)
                end
                if #add > 0 then
                    chunked('SADD', vkey, add)
                end
            elseif before > PLAIN_MAX and after > PLAIN_MAX then
                if #rem > 0 then
                    chunked_write('SREM', vkey, rem)
                end
                if #add > 0 then
                    chunked_write('SADD', vkey, add)
                end
            elseif after > PLAIN_MAX then -- plain -> chunked
                local current = {}
                if before > 0 then
                    current = call('SMEMBERS', vkey)
                    call('DEL', vkey)
                end
                chunked_write('SADD', vkey, members_after(current, rem, add))
            else -- chunked -> plain
                if not last_chunk then
                    last_chunk = floor(tonumber(call('GET', prefix .. ':n') or 0) / SET_CHUNK)
                end
                local members = members_after(take_chunked(vkey, last_chunk), rem, add)
                if #members > 0 then
                    chunked('SADD', vkey, members)
                end
            end
            if after > 0 then
                zadd[#zadd + 1] = after
                zadd[#zadd + 1] = entry.value
            else
                zrem[#zrem + 1] = entry.value
            end
        end
        if #zadd > 0 then
            chunked('ZADD', dkey, zadd)
        end
        if #zrem > 0 then
            chunked('ZREM', dkey, zrem)
        end
    end
    for kkey, entry in pairs(self.keysets) do
        if #entry.rem > 0 then
            chunked_write('SREM', kkey, entry.rem)
        end
        if #entry.add > 0 then
            chunked_write('SADD', kkey, entry.add)
        end
    end
    if #self.all_rem > 0 then
        chunked('SREM', prefix .. ':all', self.all_rem)
    end
    if #self.all_add > 0 then
        chunked('SADD', prefix .. ':all', self.all_add)
    end
    for _, name in ipairs({ 'ts', 'du', 'en' }) do
        local rem = self[name .. '_rem']
        if #rem > 0 then
            chunked('ZREM', prefix .. ':' .. name, rem)
        end
        if #self[name] > 0 then
            chunked('ZADD', prefix .. ':' .. name, self[name])
        end
    end
end

--[[ One trace's fold over one batch.

st = { trace_id, no (number before the batch, a decimal string, or nil), raw (field -> text:
the fields of its hash the batch needs, or all of them when it deletes the trace), base (stamp
base), gms, gseq (tombstone), exists, xms, xseq, x_ev (latest event applied), new (field ->
the event that wrote it in this batch), value (field -> that write's value or false),
dropped (field -> true: removed by a trace deletion), wiped (the hash of no is gone) }
Events are { ms, seq, fields, values } (no fields for a trace deletion), stamp cached per base.
--]]
local function event_stamp(ev, base)
    if ev.base ~= base then
        ev.base = base
        ev.stamp = encode_stamp(ev.ms, ev.seq, base)
    end
    return ev.stamp
end

local function current_stamp(st, field)
    local ev = st.new[field]
    if ev then
        return ev.ms, ev.seq
    end
    if st.dropped[field] then
        return nil
    end
    local raw = st.raw[field]
    if raw then
        return register_stamp(raw, st.base)
    end
    return nil
end

local function apply_deletion(st, ms, seq)
    st.gms, st.gseq, st.gone_dirty = ms, seq, true
    if not st.exists then
        return
    end
    if newer(ms, seq, st.xms, st.xseq) then
        st.exists = false
        st.wiped = st.no ~= nil
        st.raw, st.new, st.value, st.dropped = {}, {}, {}, {}
        return
    end
    for field, ev in pairs(st.new) do
        if newer(ms, seq, ev.ms, ev.seq) then
            st.new[field] = nil
            st.dropped[field] = true
        end
    end
    for field, raw in pairs(st.raw) do
        if is_register(field) and not st.new[field] and not st.dropped[field]
            and newer(ms, seq, register_stamp(raw, st.base)) then
            st.dropped[field] = true
        end
    end
end

local function apply_event(st, ev)
    local ms, seq = ev.ms, ev.seq
    if not st.exists then
        st.exists = true
        st.xms, st.xseq, st.x_ev = ms, seq, ev
        if st.no == nil or st.wiped then
            st.base = ms
        end
    elseif newer(ms, seq, st.xms, st.xseq) then
        st.xms, st.xseq, st.x_ev = ms, seq, ev
    end
    local new, value, dropped = st.new, st.value, st.dropped
    local fields, values = ev.fields, ev.values
    for i = 1, #fields do
        local field = fields[i]
        local rms, rseq = current_stamp(st, field)
        if not rms or newer(ms, seq, rms, rseq) then
            new[field] = ev
            value[field] = values[i]
            dropped[field] = nil
        end
    end
end

local function by_stamp(a, b)
    return newer(b.ms, b.seq, a.ms, a.seq)
end

local function fold_events(st, events)
    local n = #events
    for i = 2, n do
        if not newer(events[i].ms, events[i].seq, events[i - 1].ms, events[i - 1].seq) then
            table.sort(events, by_stamp) -- equal stamps are duplicates: their order is moot
            break
        end
    end
    for i = 1, n do
        local ev = events[i]
        if not st.gms or newer(ev.ms, ev.seq, st.gms, st.gseq) then
            if ev.fields then
                apply_event(st, ev)
            else
                apply_deletion(st, ev.ms, ev.seq)
            end
        end
    end
end

local function register_text(st, field, base)
    local stamp = event_stamp(st.new[field], base)
    local value = st.value[field]
    if value then
        return stamp .. ':' .. value
    end
    return stamp
end

-- The final value of a register field (raw untouched, new, or dropped) as a string or nil.
local function final_value(st, field)
    if st.new[field] then
        return st.value[field] or nil
    end
    if st.dropped[field] then
        return nil
    end
    local raw = st.raw[field]
    return raw and register_value(raw)
end

-- Write a trace that keeps its number: changed registers, dropped ones, and their indexes.
local function write_in_place(batch, st, hash_prefix)
    local no = st.no
    local hash = hash_prefix .. no
    local writes = {}
    local n = 0
    local times = false
    local base = st.base
    local raw = st.raw
    for field in pairs(st.new) do
        writes[n + 1] = field
        writes[n + 2] = register_text(st, field, base)
        n = n + 2
        local old = raw[field]
        batch:change(field, old and register_value(old), st.value[field] or nil, no)
        if NUMERIC[field] then
            times = true
        end
    end
    if st.x_ev then
        writes[n + 1] = 'x'
        writes[n + 2] = event_stamp(st.x_ev, base)
        n = n + 2
    end
    if n > 0 then
        chunked('HSET', hash, writes)
    end
    local dropped = {}
    for field in pairs(st.dropped) do
        local old = raw[field]
        if old then
            dropped[#dropped + 1] = field
            batch:change(field, register_value(old), nil, no)
            if NUMERIC[field] then
                times = true
            end
        end
    end
    if #dropped > 0 then
        chunked('HDEL', hash, dropped)
    end
    if times then
        batch:times(no, final_value(st, 's'), final_value(st, 'd'))
    end
end

-- Remove a trace deleted whole: its hash and every index membership of its number.
local function remove_trace(batch, no, raw, hash_prefix)
    for field, text in pairs(raw) do
        if is_register(field) then
            local value = register_value(text)
            if value then
                batch:change(field, value, nil, no)
            end
        end
    end
    batch.all_rem[#batch.all_rem + 1] = no
    batch.ts_rem[#batch.ts_rem + 1] = no
    batch.du_rem[#batch.du_rem + 1] = no
    batch.en_rem[#batch.en_rem + 1] = no
    call('DEL', hash_prefix .. no)
end

-- Write a trace that got a new number in this batch (first event, or recreated).
local function write_new(batch, st, no, hash_prefix)
    local base = st.base
    local writes = { 'i', st.trace_id, 'b', int(base), 'x', event_stamp(st.x_ev, base) }
    local n = 6
    for field in pairs(st.new) do
        writes[n + 1] = field
        writes[n + 2] = register_text(st, field, base)
        n = n + 2
        local value = st.value[field]
        if value then
            batch:change(field, nil, value, no)
        end
    end
    chunked('HSET', hash_prefix .. no, writes)
    batch.all_add[#batch.all_add + 1] = no
    local ts, du = final_value(st, 's'), final_value(st, 'd')
    if ts or du then
        batch:times(no, ts, du)
    end
end

local function is_millis(v)
    return type(v) == 'number' and v >= 0 and v == math.floor(v) and v < 9007199254740992
end

local function is_decimal_millis(v)
    return type(v) == 'string' and #v > 0 and #v < 17 and not find(v, '[^0-9]')
        and (#v == 1 or sub(v, 1, 1) ~= '0') and tonumber(v) < 9007199254740992
end

-- First pass: check the layout of the whole batch and of the dead letters; fills
-- stamps_ms / stamps_seq with each event's parsed entry id.
local function check_args(args, n_events, argv, stamps_ms, stamps_seq)
    local p = 2
    local n_args = #args
    for _ = 1, n_events do
        if p + 5 > n_args then
            fail('BADARGS', 'event header at batch[' .. p .. '] runs past the end')
        end
        local ms, seq
        if type(args[p]) == 'string' then
            ms, seq = parse_id(args[p])
        end
        if not ms then
            fail('BADARGS', 'bad entry id at batch[' .. p .. ']: ' .. tostring(args[p]))
        end
        local kind = args[p + 1]
        if not KINDS[kind] or type(args[p + 2]) ~= 'string' then
            fail('BADARGS', 'bad kind or trace id at batch[' .. (p + 1) .. ']: ' .. tostring(kind))
        end
        stamps_ms[#stamps_ms + 1], stamps_seq[#stamps_seq + 1] = ms, seq
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
            if not ATTRIBUTES[code] or (NUMERIC[code] and not is_decimal_millis(value))
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
  n_meta, n_attrs (code, value) pairs (codes e s d S c; s and d as decimal strings), n_tags (key, value)
  pairs (keys only for D), n_meta (key, value) pairs
ARGV[4...]          dead letters, three values each: entry_id, payload, reason
Returns {events applied, dead letters written, entries acked}.
--]]
local function tt_apply(keys, argv)
    call = redis.call
    floor, sub, find, format = math.floor, string.sub, string.find, string.format
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
    local stamps_ms, stamps_seq = {}, {}
    check_args(args, n_events, argv, stamps_ms, stamps_seq)
    local n_dead = (#argv - 3) / 3

    -- Events grouped by trace, in first-seen order.
    local acks = {}
    local by_trace = {}
    local trace_ids = {}
    local p = 2
    for e = 1, n_events do
        local entry_id, kind, trace_id = args[p], args[p + 1], args[p + 2]
        local n_attrs, n_tags, n_meta = args[p + 3], args[p + 4], args[p + 5]
        local ms, seq = stamps_ms[e], stamps_seq[e]
        acks[e] = entry_id
        p = p + 6
        local ev = { ms = ms, seq = seq, base = false, stamp = false }
        if kind ~= 'X' then
            local fields, values = {}, {}
            local n = 0
            for i = p, p + 2 * n_attrs - 1, 2 do
                local code, value = args[i], args[i + 1]
                n = n + 1
                fields[n] = code
                values[n] = value
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
            ev.fields, ev.values = fields, values
        end
        local events = by_trace[trace_id]
        if not events then
            events = {}
            by_trace[trace_id] = events
            trace_ids[#trace_ids + 1] = trace_id
        end
        events[#events + 1] = ev
    end

    local ids_key, gone_key = prefix .. ':ids', prefix .. ':gone'
    local hash_prefix = prefix .. ':t:'
    local n_traces = #trace_ids
    local batch = new_batch(prefix)
    local created = {} -- states that need a new number
    local gone_writes, ids_removed = {}, {}
    if n_traces > 0 then
        local tombstones = hmget(gone_key, trace_ids)
        local numbers = hmget(ids_key, trace_ids)
        for t = 1, n_traces do
            local trace_id = trace_ids[t]
            local events = by_trace[trace_id]
            local st = {
                trace_id = trace_id, raw = {}, new = {}, value = {}, dropped = {}, exists = false,
            }
            if tombstones[t] then
                st.gms, st.gseq = parse_id(tombstones[t])
            end
            local no = numbers[t]
            if no then
                local hash = hash_prefix .. no
                local raw = st.raw
                -- Read only the registers this batch writes, unless it may delete the trace.
                local wanted = { 'b', 'x' }
                local whole = false
                local times = false
                for i = 1, #events do
                    local fields = events[i].fields
                    if not fields then
                        whole = true
                        break
                    end
                    for j = 1, #fields do
                        local field = fields[j]
                        if not raw[field] then
                            raw[field] = true
                            wanted[#wanted + 1] = field
                            if NUMERIC[field] then
                                times = true
                            end
                        end
                    end
                end
                if whole then
                    local flat = call('HGETALL', hash)
                    raw = {}
                    for i = 1, #flat, 2 do
                        raw[flat[i]] = flat[i + 1]
                    end
                else
                    if times then
                        wanted[#wanted + 1] = 's'
                        wanted[#wanted + 1] = 'd'
                    end
                    local got = hmget(hash, wanted)
                    raw = {}
                    for i = 1, #wanted do
                        if got[i] then
                            raw[wanted[i]] = got[i]
                        end
                    end
                end
                st.raw = raw
                st.no = no
                st.exists = true
                st.base = tonumber(raw['b'])
                st.xms, st.xseq = register_stamp(raw['x'], st.base)
            end
            local before = st.raw
            fold_events(st, events)
            if st.gone_dirty then
                gone_writes[#gone_writes + 1] = trace_id
                gone_writes[#gone_writes + 1] = int(st.gms) .. '-' .. int(st.gseq)
            end
            if st.no and not st.wiped then
                write_in_place(batch, st, hash_prefix)
            else
                if st.wiped then
                    remove_trace(batch, st.no, before, hash_prefix)
                    if not st.exists then
                        ids_removed[#ids_removed + 1] = trace_id
                    end
                end
                if st.exists then
                    created[#created + 1] = st
                end
            end
        end
    end
    if #created > 0 then
        local last = call('INCRBY', prefix .. ':n', #created)
        local ids = {}
        for i = 1, #created do
            local st = created[i]
            local no = int(last - #created + i)
            write_new(batch, st, no, hash_prefix)
            ids[#ids + 1] = st.trace_id
            ids[#ids + 1] = no
        end
        chunked('HSET', ids_key, ids)
    end
    if #ids_removed > 0 then
        chunked('HDEL', ids_key, ids_removed)
    end
    if #gone_writes > 0 then
        chunked('HSET', gone_key, gone_writes)
    end
    batch:flush()

    if n_dead > 0 then
        local now = call('TIME')
        local time_ms = int(tonumber(now[1]) * 1000 + floor(tonumber(now[2]) / 1000))
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
