#!lua name=tracetags_v5

--[[
tracetags fold library, version 5 (the version is in the library name: a change of the
stored layout or of the ARGV format is a new library name; v3 chunked the set of all traces,
v4 keeps a byte-order index of each tag and metadata key's distinct values, v5 keeps lookup
fingerprints of listed keys: a v4 fold would leave them stale).

Key shapes and the per-trace hash layout mirror src/tracetags/keys.py, whose docstring is the
key table; the ARGV format is documented in src/tracetags/functions/__init__.py.  Python
validates every event; this file only applies them.  Its first pass over the batch (which
groups the events by trace) also checks the ARGV structure, so that a malformed call fails
before its first write (Functions do not roll back).

Fold semantics: every register (tag, metadata key, attribute) is last-writer-wins by stream
entry id, compared numerically as (ms, seq); a deleted tag keeps a tombstone stamp; a trace
deletion records the trace's tombstone in <prefix>:gone and drops every register older than it.

Speed: a batch is folded per trace, not per event.  The tombstones and trace numbers of all
its traces are read with one HMGET each, every trace hash once (HMGET of the registers the
batch writes; HGETALL only when the batch deletes the trace), and the hash written once;
index changes are the difference between the trace's registers before and after the batch,
gathered over the whole batch so that each index key gets one SADD / SREM / ZADD per batch
whatever the number of traces touching it.  Here the Lua around the calls costs more than
the calls themselves (number-to-string ~0.5-1 us, tonumber ~0.3 us, a table ~0.1-0.3 us):
a trace with one event in the batch (the common case) takes a path that builds no fold
state, stamps are parsed only for the registers the batch writes (compact stamps compared
as integers), numbers are formatted at most once per event, and index changes are gathered
per field and value, their key strings built once per batch.
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
local EMPTY = {}

-- Standard-library shortcuts (globals are reachable only at run time): bound in tt_apply.
local floor, sub, find, format, match, unpack_, type_

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

--[[ Lookup fingerprints (opt-in per tag or metadata key, TRACETAGS_LOOKUP_KEYS): for a
key whose values are many and sparse (user ids), a walk that tests the newest traces'
values (LIKE 'user_12%' over a thousand small value sets) would read each trace's hash
(~1-2 us, a key lookup and a cache miss each).  Instead:
  <prefix>:lk                      hash: register field ('tuser_id') -> 'building' | 'ready'
  <prefix>:lf:<enc field>:<c>      string: for the numbers of chunk c (SET_CHUNK of them), a
                                   big-endian u16 each at byte 2 * offset: fingerprint(value),
                                   0 when the trace has no value (or no trace has the number)
The fold keeps the strings of every field listed in lk (BITFIELD SET u16, one call per
chunk and batch); ensure_lookups (functions/__init__.py) lists a field, builds its strings
from the key set (tk/mk) chunk by chunk with tt_lookup, then marks it ready.  tt_query
trusts only a ready field: a trace whose fingerprint is not wanted does not match; one
whose fingerprint is wanted is checked on its register (1 in ~65k values collide).
~2.7 B per trace number ever used per listed key (1 KiB strings). ]]
local function fingerprint(v)
    local h = 5381
    for i = 1, #v do
        h = (h * 33 + string.byte(v, i)) % 65521
    end
    return h + 1
end

local function int(n)
    return DECIMAL[n] or format('%d', n)
end

-- An entry id as (ms, seq); nil when it is not a well-formed id small enough to be exact.
local function parse_id(id)
    local ms, seq = match(id, '^(%d+)%-(%d+)$')
    if not ms or #ms > 15 or #seq > 15 then
        return nil
    end
    return tonumber(ms), tonumber(seq)
end

local function newer(ams, aseq, bms, bseq)
    return ams > bms or (ams == bms and aseq > bseq)
end

-- The compact form (a number) of the stamp (ms, seq) for base, or nil when it has none.
local function compact(ms, seq, base)
    local delta = ms - base
    if seq < SEQ_SPAN and delta < MAX_DELTA and delta > -MAX_DELTA then
        return delta * SEQ_SPAN + seq
    end
    return nil
end

local function encode_stamp(ms, seq, base)
    local n = compact(ms, seq, base)
    if n then
        return int(n)
    end
    return int(ms) .. '-' .. int(seq)
end

-- The (ms, seq) of a stored stamp text of a trace whose base is base.
local function decode_stamp(stamp, base)
    local n = tonumber(stamp) -- nil for the verbatim form 'ms-seq'
    if n then
        local delta = floor(n / SEQ_SPAN)
        return base + delta, n - delta * SEQ_SPAN
    end
    local dash = find(stamp, '-', 2, true)
    return tonumber(sub(stamp, 1, dash - 1)), tonumber(sub(stamp, dash + 1))
end

-- The (ms, seq) of a register '<stamp>[:<value>]' of a trace whose base is base.
local function register_stamp(text, base)
    local colon = find(text, ':', 1, true)
    return decode_stamp(colon and sub(text, 1, colon - 1) or text, base)
end

-- Whether the stamp text was written before the entry (ms, seq), whose compact form for the
-- trace's base is cn (or nil): two compact stamps of one trace compare as integers.
local function stamp_older(stamp, base, ms, seq, cn)
    local n = cn and tonumber(stamp)
    if n then
        return n < cn
    end
    local sms, sseq = decode_stamp(stamp, base)
    return newer(ms, seq, sms, sseq)
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
    if n <= CHUNK then
        call(command, key, unpack_(items))
        return
    end
    for i = 1, n, CHUNK do
        call(command, key, unpack_(items, i, math.min(i + CHUNK - 1, n)))
    end
end

-- HMGET of many fields; missing ones come back as false.
local function hmget(key, fields)
    local n = #fields
    if n <= CHUNK then
        return call('HMGET', key, unpack_(fields))
    end
    local out = {}
    for i = 1, n, CHUNK do
        local got = call('HMGET', key, unpack_(fields, i, math.min(i + CHUNK - 1, n)))
        for j = 1, #got do
            out[i + j - 1] = got[j]
        end
    end
    return out
end

--[[ Index changes of one batch, gathered before any index write.

fields[field] = { vprefix, dkey, kkey or false, add = {[value] = {numbers}}, rem = {…},
kadd = {numbers}, krem = {numbers} } for every indexed register field (false for s and d):
value sets (tv mv ex st cr, key <vprefix><enc value>) counted in their distinct zset dkey
(score = member count), and for tags and metadata the always-chunked key set kkey (tk mk).
Every (key, number) appears at most once: a trace's change is computed once per batch, and a
number belongs to one trace.  Numbers are decimal strings.
--]]
local Batch = {}
Batch.__index = Batch

local function new_batch(prefix)
    return setmetatable({
        prefix = prefix,
        fields = {},
        pos = { chunk = {}, offset = {} },
        all_add = {},
        all_rem = {},
        ts = {}, -- ZADD score/member pairs
        du = {},
        en = {},
        ts_rem = {},
        du_rem = {},
        en_rem = {},
        lookups = call('HGETALL', prefix .. ':lk'), -- (field, state) pairs; see fingerprint
        lk = {}, -- field -> { [number] = fingerprint } (0: no value)
    }, Batch)
end

-- The index entry of a register field (false for s and d), made once per batch.
function Batch:field(field)
    local known = self.fields[field]
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
        if known then
            known.add, known.rem, known.kadd, known.krem = {}, {}, {}, {}
        end
        self.fields[field] = known
    end
    return known
end

-- Trace no's register field goes from old_value to new_value (nil = absent or tombstone).
function Batch:change(field, old_value, new_value, no)
    if old_value == new_value then
        return
    end
    local lookups = self.lookups
    if #lookups > 0 then
        local lk = self.lk[field]
        if lk == nil then
            lk = false
            for i = 1, #lookups, 2 do
                if lookups[i] == field then
                    lk = {}
                end
            end
            self.lk[field] = lk
        end
        if lk then
            lk[no] = new_value and fingerprint(new_value) or 0
        end
    end
    local known = self.fields[field]
    if known == nil then
        known = self:field(field)
    end
    if not known then
        return
    end
    if old_value then
        local list = known.rem[old_value]
        if list then
            list[#list + 1] = no
        else
            known.rem[old_value] = { no }
        end
    end
    if new_value then
        local list = known.add[new_value]
        if list then
            list[#list + 1] = no
        else
            known.add[new_value] = { no }
        end
    end
    if known[3] and (old_value == nil) ~= (new_value == nil) then
        local list = new_value and known.kadd or known.krem
        list[#list + 1] = no
    end
end

-- Trace no's timestamp / duration registers went from old_ts, old_du to ts, du (strings or
-- nil); only the sorted sets whose score changes are written.
function Batch:times(no, old_ts, old_du, ts, du)
    if ts ~= old_ts or (ts and du ~= old_du) then
        if ts then
            if ts ~= old_ts then
                local n = #self.ts
                self.ts[n + 1], self.ts[n + 2] = ts, no
            end
            local n = #self.en
            -- A number, formatted exactly (%.17g) by redis.call in C.
            self.en[n + 1], self.en[n + 2] = du and tonumber(ts) + tonumber(du) or ts, no
        else
            self.ts_rem[#self.ts_rem + 1] = no
            self.en_rem[#self.en_rem + 1] = no
        end
    end
    if du ~= old_du then
        if du then
            local n = #self.du
            self.du[n + 1], self.du[n + 2] = du, no
        else
            self.du_rem[#self.du_rem + 1] = no
        end
    end
end

-- Numbers grouped by chunk: { [chunk] = {offsets} }.  pos = { chunk = {}, offset = {} }
-- caches each number's chunk and offset text (a number's sets are many, its parse one).
local function by_chunk(numbers, pos)
    local out = {}
    local chunks, offsets = pos.chunk, pos.offset
    for i = 1, #numbers do
        local no = numbers[i]
        local c = chunks[no]
        if not c then
            local n = tonumber(no)
            c = floor(n / SET_CHUNK)
            chunks[no], offsets[no] = c, DECIMAL[n - c * SET_CHUNK]
        end
        local list = out[c]
        if not list then
            list = {}
            out[c] = list
        end
        list[#list + 1] = offsets[no]
    end
    return out
end

local function chunked_write(command, key, numbers, pos)
    for c, offsets in pairs(by_chunk(numbers, pos)) do
        chunked(command, key .. ':' .. int(c), offsets)
    end
end

-- Every member (trace number) of a chunked set whose chunks are 0..last_chunk; deletes it.
local function take_chunked(key, last_chunk)
    local members = {}
    for c = 0, last_chunk do
        local chunk_key = key .. ':' .. int(c)
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

--[[ The byte-order index of a tag or metadata key's distinct values (dkey td:/md:), so that
LIKE prefixes and ordering by the key read only the values they need.  The distinct zset is
scored by count, so it cannot give byte order; one zset of every value at score 0 would
(ZRANGE BYLEX) but costs ~100 B a value once past 128 members.  Instead the values are cut
into buckets of at most LEX_BUCKET values at score 0, small enough to stay listpacks
(~15 B a value):
  dkey..':L'                 zset, score 0: the head of every bucket, '' included
  dkey..':L:'..enc(head)     zset, score 0: the values v with head <= v < the next head
The first head is '' (below every value), so every value has a bucket: the largest head
<= v.  A bucket that empties leaves the directory (except ''); when the distinct zset
empties, the directory goes too.  A bucket past LEX_BUCKET values is rewritten as buckets
of at most LEX_FILL.  The index exists exactly when its directory does: data folded before it
existed gets it the next time the fold touches the key (built from the distinct zset), and
readers fall back to reading the distinct zset while it is missing.
--]]
local LEX_BUCKET = 128 -- zset-max-listpack-entries' default: beyond it a zset is a skiplist
local LEX_FILL = 96 -- a rewritten bucket holds at most this many (room to grow)

local function lex_dir(dkey)
    return dkey .. ':L'
end

local function lex_bucket(dkey, head)
    return dkey .. ':L:' .. enc(head)
end

-- The head of the bucket that holds (or would hold) v.
local function lex_head(dir, v)
    return call('ZRANGE', dir, '[' .. v, '-', 'BYLEX', 'REV', 'LIMIT', 0, 1)[1] or ''
end

local function zadd_zero(key, values)
    local items = {}
    for i = 1, #values do
        items[2 * i - 1], items[2 * i] = 0, values[i]
    end
    chunked('ZADD', key, items)
end

-- Write sorted values (all >= head, below the next head) as buckets of equal sizes up to
-- LEX_FILL, the first under head.  key holds the values already (possibly as a big zset):
-- it is rewritten.
local function lex_split(dkey, dir, head, key, sorted)
    call('DEL', key)
    local n = #sorted
    local size = math.ceil(n / math.ceil(n / LEX_FILL))
    for i = 1, n, size do
        local piece = { unpack_(sorted, i, math.min(i + size - 1, n)) }
        local h = i == 1 and head or piece[1]
        zadd_zero(lex_bucket(dkey, h), piece)
        if i > 1 then
            call('ZADD', dir, 0, h)
        end
    end
end

-- Build the index of dkey from its distinct zset (Redis sorts: every value at score 0 in
-- one scratch bucket, then cut).
local function lex_build(dkey)
    local values = call('ZRANGE', dkey, 0, -1)
    if #values == 0 then
        return
    end
    local dir = lex_dir(dkey)
    local first = lex_bucket(dkey, '')
    call('ZADD', dir, 0, '')
    zadd_zero(first, values)
    if #values > LEX_BUCKET then
        lex_split(dkey, dir, '', first, call('ZRANGE', first, 0, -1))
    end
end

-- Values of buckets, grouped by head: {head = {values}}.
local function lex_by_head(dir, values)
    local by = {}
    for i = 1, #values do
        local head = lex_head(dir, values[i])
        local list = by[head]
        if not list then
            list = {}
            by[head] = list
        end
        list[#list + 1] = values[i]
    end
    return by
end

-- Keep the index of dkey in step with its distinct zset, after the fold wrote the zset:
-- added = values new to it, removed = values gone from it.
local function lex_update(dkey, added, removed)
    local dir = lex_dir(dkey)
    if call('EXISTS', dir) == 0 then
        lex_build(dkey)
        return
    end
    if #removed > 0 then
        if call('EXISTS', dkey) == 0 then -- the key's last value went
            for head in pairs(lex_by_head(dir, removed)) do
                call('DEL', lex_bucket(dkey, head))
            end
            call('DEL', dir)
            return
        end
        for head, values in pairs(lex_by_head(dir, removed)) do
            local key = lex_bucket(dkey, head)
            chunked('ZREM', key, values)
            if head ~= '' and call('EXISTS', key) == 0 then
                call('ZREM', dir, head)
            end
        end
    end
    for head, values in pairs(lex_by_head(dir, added)) do
        local key = lex_bucket(dkey, head)
        zadd_zero(key, values)
        if call('ZCARD', key) > LEX_BUCKET then
            lex_split(dkey, dir, head, key, call('ZRANGE', key, 0, -1))
        end
    end
end

-- The member counts of values in the distinct zset dkey (0 when absent).
local function value_counts(dkey, values)
    local counts = {}
    local n = #values
    for i = 1, n, CHUNK do
        local got = call('ZMSCORE', dkey, unpack_(values, i, math.min(i + CHUNK - 1, n)))
        for j = 1, #got do
            counts[i + j - 1] = got[j] and tonumber(got[j]) or 0
        end
    end
    return counts
end

-- Write the gathered index changes.
function Batch:flush()
    local prefix = self.prefix
    local pos = self.pos
    local last_chunk = nil
    for _, known in pairs(self.fields) do
        if known then
            local adds, rems = known.add, known.rem
            -- The counts of every touched value: one ZMSCORE per distinct zset.
            local values = {}
            for value in pairs(adds) do
                values[#values + 1] = value
            end
            for value in pairs(rems) do
                if not adds[value] then
                    values[#values + 1] = value
                end
            end
            local n = #values
            local dkey, vprefix = known[2], known[1]
            local counts = n > 0 and value_counts(dkey, values) or EMPTY
            local zadd, zrem, added = {}, {}, {}
            for i = 1, n do
                local value = values[i]
                local vkey = vprefix .. enc(value)
                local add, rem = adds[value] or EMPTY, rems[value] or EMPTY
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
                        chunked_write('SREM', vkey, rem, pos)
                    end
                    if #add > 0 then
                        chunked_write('SADD', vkey, add, pos)
                    end
                elseif after > PLAIN_MAX then -- plain -> chunked
                    local current = {}
                    if before > 0 then
                        current = call('SMEMBERS', vkey)
                        call('DEL', vkey)
                    end
                    chunked_write('SADD', vkey, members_after(current, rem, add), pos)
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
                    zadd[#zadd + 1] = value
                    if before == 0 then
                        added[#added + 1] = value
                    end
                else
                    zrem[#zrem + 1] = value
                end
            end
            if #zadd > 0 then
                chunked('ZADD', dkey, zadd)
            end
            if #zrem > 0 then
                chunked('ZREM', dkey, zrem)
            end
            local kkey = known[3]
            if kkey then
                if #added > 0 or #zrem > 0 then
                    lex_update(dkey, added, zrem)
                end
                if #known.krem > 0 then
                    chunked_write('SREM', kkey, known.krem, pos)
                end
                if #known.kadd > 0 then
                    chunked_write('SADD', kkey, known.kadd, pos)
                end
            end
        end
    end
    if #self.all_rem > 0 then
        chunked_write('SREM', prefix .. ':all', self.all_rem, self.pos)
    end
    if #self.all_add > 0 then
        chunked_write('SADD', prefix .. ':all', self.all_add, self.pos)
    end
    for field, lk in pairs(self.lk) do
        if lk then
            self:write_lookups(field, lk)
        end
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
    self:time_bounds()
end

local LOOKUP_ZEROS -- 2 * SET_CHUNK zero bytes (made at the first call: no string.rep at load)

-- Write fingerprints { [number] = fingerprint } of field (see fingerprint): one BITFIELD per
-- chunk (at most SET_CHUNK offsets: 4 * 512 arguments).
local function write_fingerprints(prefix, field, numbers, pos)
    local list = {}
    for no in pairs(numbers) do
        list[#list + 1] = no
    end
    by_chunk(list, pos) -- (for its cache: every number's chunk and offset, parsed once)
    local chunks, offsets = pos.chunk, pos.offset
    local ops = {}
    for no, fp in pairs(numbers) do
        local args = ops[chunks[no]]
        if not args then
            args = {}
            ops[chunks[no]] = args
        end
        local k = #args
        args[k + 1], args[k + 2], args[k + 3], args[k + 4] = 'SET', 'u16', '#' .. offsets[no], fp
    end
    local key = prefix .. ':lf:' .. enc(field) .. ':'
    LOOKUP_ZEROS = LOOKUP_ZEROS or string.rep('\0', 2 * SET_CHUNK)
    for c, args in pairs(ops) do
        local chunk_key = key .. int(c)
        -- made at its full size: grown by BITFIELD, a string keeps ~2x its length allocated
        call('SET', chunk_key, LOOKUP_ZEROS, 'NX')
        call('BITFIELD', chunk_key, unpack_(args))
    end
end

function Batch:write_lookups(field, numbers)
    write_fingerprints(self.prefix, field, numbers, self.pos)
end

--[[ <prefix>:tsx (zset: chunk number -> a timestamp_ms >= that of every trace in the chunk)
lets a newest-first page visit chunks instead of walking ts entry by entry (tt_query's
chunk walk): a chunk whose bound is below the page's last row holds no better row.  Bounds
only rise (ZADD GT): a trace deleted or moved to an earlier time leaves its chunk's bound
high, which costs a visit, never a row.  It is kept only for partitions born with it: the
batch that creates the partition's first trace adds the member -1 at -inf (so the key
exists before any timestamp); an older partition has no tsx, and queries walk ts there. ]]
function Batch:time_bounds()
    local ts = self.ts
    local key = self.prefix .. ':tsx'
    if self.born then
        call('ZADD', key, '-inf', -1)
    end
    if #ts == 0 or (not self.born and call('EXISTS', key) == 0) then
        return
    end
    local top = {}
    local chunks = self.pos.chunk
    for i = 1, #ts, 2 do
        local no = ts[i + 1]
        local c = chunks[no] or floor(tonumber(no) / SET_CHUNK)
        local t = tonumber(ts[i])
        if not top[c] or t > top[c] then
            top[c] = t
        end
    end
    local items = {}
    for c, t in pairs(top) do
        items[#items + 1] = t
        items[#items + 1] = c
    end
    call('ZADD', key, 'GT', unpack_(items))
end

--[[ One trace's fold over one batch, when the batch holds several of its events or deletes it.

st = { trace_id, no (number before the batch, a decimal string, or nil), raw (field -> text:
the fields of its hash the batch needs, or all of them when it deletes the trace), base (stamp
base) and base_text, gms, gseq (tombstone), exists, xms, xseq, x_ev (latest event applied),
new (field -> the event that wrote it in this batch), value (field -> that write's value or
false), dropped (field -> true: removed by a trace deletion), wiped (the hash of no is gone) }
Events are { ms, seq, ms_text, fv = {field, value, …} } (no fv for a trace deletion), stamp
cached per base.
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
            st.base, st.base_text = ms, ev.ms_text
        end
    elseif newer(ms, seq, st.xms, st.xseq) then
        st.xms, st.xseq, st.x_ev = ms, seq, ev
    end
    local new, value, dropped = st.new, st.value, st.dropped
    local fv = ev.fv
    for i = 1, #fv, 2 do
        local field = fv[i]
        local rms, rseq = current_stamp(st, field)
        if not rms or newer(ms, seq, rms, rseq) then
            new[field] = ev
            value[field] = fv[i + 1]
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
            if ev.fv then
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

local function old_value(st, field)
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
        batch:times(no, old_value(st, 's'), old_value(st, 'd'), final_value(st, 's'),
            final_value(st, 'd'))
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

-- The text of the base ms of a new trace (the entry id's own digits, unless not canonical).
local function base_text(text, base)
    if #text > 1 and sub(text, 1, 1) == '0' then
        return int(base)
    end
    return text
end

-- Write a trace that got a new number in this batch (first event, or recreated).
local function write_new(batch, st, no, hash_prefix)
    local base = st.base
    local writes = {
        'i', st.trace_id, 'b', base_text(st.base_text, base), 'x', event_stamp(st.x_ev, base),
    }
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
        batch:times(no, nil, nil, ts, du)
    end
end

--[[ The common case: a trace with one event in the batch (not a deletion) that is newer than
the trace's tombstone.  No fold state: each register the event writes is compared with the
stored one (read with one HMGET) and written when older or absent. ]]

-- The event ev applied to the existing trace numbered no.
local function apply_single(batch, ev, no, hash_prefix)
    local fv = ev.fv
    local nf = #fv
    -- b x s d, then the fields (a table constructor sizes the array once).
    local want = { 'b', 'x', 's', 'd', nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil }
    for i = 1, nf, 2 do
        want[i / 2 + 4.5] = fv[i]
    end
    local got = hmget(hash_prefix .. no, want)
    local base = tonumber(got[1])
    local ms, seq = ev.ms, ev.seq
    local cn = compact(ms, seq, base)
    local stamp = nil
    local writes = { nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil }
    local n = 0
    if stamp_older(got[2], base, ms, seq, cn) then
        stamp = cn and int(cn) or int(ms) .. '-' .. int(seq)
        writes[1], writes[2] = 'x', stamp
        n = 2
    end
    local ts, du = nil, nil -- new values of s and d, when the event writes them
    local changed_times = false
    for i = 1, nf, 2 do
        local field, value = fv[i], fv[i + 1]
        local raw = got[i / 2 + 4.5]
        local write, old = true, nil
        if raw then
            local colon = find(raw, ':', 1, true)
            write = stamp_older(colon and sub(raw, 1, colon - 1) or raw, base, ms, seq, cn)
            if write and colon then
                old = sub(raw, colon + 1)
            end
        end
        if write then
            if not stamp then
                stamp = cn and int(cn) or int(ms) .. '-' .. int(seq)
            end
            writes[n + 1] = field
            writes[n + 2] = value and stamp .. ':' .. value or stamp
            n = n + 2
            value = value or nil
            batch:change(field, old, value, no)
            if field == 's' then
                ts, changed_times = value, true
            elseif field == 'd' then
                du, changed_times = value, true
            end
        end
    end
    if n > 0 then
        chunked('HSET', hash_prefix .. no, writes)
    end
    if changed_times then
        local old_ts, old_du = got[3] and register_value(got[3]), got[4] and register_value(got[4])
        if ts == nil then
            ts = old_ts
        end
        if du == nil then
            du = old_du
        end
        batch:times(no, old_ts, old_du, ts, du)
    end
end

-- The event ev is the first of a new trace numbered no (so the event's ms is its base).
local function write_new_single(batch, trace_id, ev, no, hash_prefix)
    local ms = ev.ms
    local stamp = encode_stamp(ms, ev.seq, ms)
    local writes = {
        'i', trace_id, 'b', base_text(ev.ms_text, ms), 'x', stamp,
        nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil,
    }
    local n = 6
    local ts, du
    local fv = ev.fv
    for i = 1, #fv, 2 do
        local field, value = fv[i], fv[i + 1]
        writes[n + 1] = field
        n = n + 2
        if value then
            writes[n] = stamp .. ':' .. value
            batch:change(field, nil, value, no)
            if field == 's' then
                ts = value
            elseif field == 'd' then
                du = value
            end
        else
            writes[n] = stamp
        end
    end
    chunked('HSET', hash_prefix .. no, writes)
    batch.all_add[#batch.all_add + 1] = no
    if ts or du then
        batch:times(no, nil, nil, ts, du)
    end
end

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
    floor, sub, find, format, match = math.floor, string.sub, string.find, string.format, string.match
    unpack_, type_ = unpack, type
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
    if not is_count(n_events) then
        fail('BADARGS', 'the batch must start with its event count')
    end

    -- One pass checks the layout (no write happens before it ends) and groups the events by
    -- trace in first-seen order: first[trace_id] is its first event, multi[trace_id] the
    -- list of its events when it has several.
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
            base = false, stamp = false,
        }
        if kind ~= 'X' and kind ~= 'D' and 2 * (n_attrs + n_tags + n_meta) <= CHUNK then
            -- One copy of the event's slice sizes the table once (growing one is dear here);
            -- tag and metadata keys then get their field prefix in place.
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
            p = last + 1
            ev.fv = fv
        elseif kind ~= 'X' then
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
            ev.fv = fv
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
    if (#argv - 3) % 3 ~= 0 then
        fail('BADARGS', 'dead letters must come as (entry_id, payload, reason) triples')
    end
    for i = 4, #argv, 3 do
        if not parse_id(argv[i]) then
            fail('BADARGS', 'bad dead-letter entry id at ARGV[' .. i .. ']')
        end
    end
    local n_dead = (#argv - 3) / 3

    local ids_key, gone_key = prefix .. ':ids', prefix .. ':gone'
    local hash_prefix = prefix .. ':t:'
    local batch = new_batch(prefix)
    local created = {} -- states (or {trace_id, ev} of a single event) that need a new number
    local gone_writes, ids_removed = {}, {}
    if n_traces > 0 then
        local tombstones = hmget(gone_key, trace_ids)
        local numbers = hmget(ids_key, trace_ids)
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
                events = events or { ev }
                local st = {
                    trace_id = trace_id, raw = {}, new = {}, value = {}, dropped = {},
                    exists = false,
                }
                if tombstones[t] then
                    st.gms, st.gseq = parse_id(tombstones[t])
                end
                if no then
                    local hash = hash_prefix .. no
                    local raw = st.raw
                    -- Read only the registers this batch writes, unless it may delete the trace.
                    local wanted = { 'b', 'x' }
                    local whole = false
                    local times = false
                    for i = 1, #events do
                        local fv = events[i].fv
                        if not fv then
                            whole = true
                            break
                        end
                        for j = 1, #fv, 2 do
                            local field = fv[j]
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
    end
    local n_created = #created
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
        acked = acked + call('XACK', stream, group, unpack_(acks, i, math.min(i + CHUNK - 1, #acks)))
    end
    return { n_events, n_dead, acked }
end

--[[ The query engine: tt_query evaluates one compiled plan over one partition.

The plan (built by src/tracetags/query/planner.py, one msgpack map) holds a boolean tree whose
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
  {'P', field}                    traces whose hash has the field (an attribute is present)
  {'A'} every trace;  {'Z'} none
  {'L', dkey, vprefix, lead, traces, values}  (page plans) a LIKE that is its lead and one
                                  final %: becomes the V leaf of the values it matches when the
                                  call starts (resolve_sought); traces and values are the probe's
Nodes: {'&', child...}  {'|', child...}  {'!', child}.
--]]

local QUERY_BATCH = 1024
local WALK_BATCH_MAX = 4096
local bytewise -- true when the server's string collation is byte order (set per call)

local function byte_lt(a, b)
    local n = #a
    if #b < n then
        n = #b
    end
    for i = 1, n do
        local x, y = string.byte(a, i), string.byte(b, i)
        if x ~= y then
            return x < y
        end
    end
    return #a < #b
end

-- Code-point order of UTF-8 strings is their byte order; Lua compares with strcoll, which
-- is byte order only in the C locale (Redis calls setlocale(LC_COLLATE, "")).
local function str_lt(a, b)
    if bytewise then
        return a < b
    end
    return byte_lt(a, b)
end

local function detect_bytewise()
    return ('B' < 'a') and ('Z' < '_') and ('_' < 'a') and ('a' < 'b') and ('1' < 'A')
        and ('z' < '\195\169') and ('ab' < 'b') and not ('a' < 'B') and ('' < ' ')
end

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
        local got = call('SMISMEMBER', key, unpack(members, i, math.min(i + CHUNK - 1, n)))
        for j = 1, #got do
            if got[j] == 1 then
                mask[idx[i + j - 1]] = true
            end
        end
    end
end

local function test_chunked(key, list, mask)
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
        local g = groups[c]
        smismember_into(key .. ':' .. slot(c), g[1], g[2], mask)
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
        local got = call('ZMSCORE', leaf[2], unpack(leaf, i, math.min(i + CHUNK - 1, n)))
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

local function score_bound(text)
    local open = sub(text, 1, 1) == '('
    local body = open and sub(text, 2) or text
    if body == '-inf' then
        return -math.huge, open
    elseif body == '+inf' or body == 'inf' then
        return math.huge, open
    end
    return tonumber(body), open
end

local function in_range(leaf, score)
    if leaf.lo == nil then
        leaf.lo, leaf.lo_open = score_bound(leaf[3])
        leaf.hi, leaf.hi_open = score_bound(leaf[4])
    end
    if score < leaf.lo or (leaf.lo_open and score == leaf.lo) then
        return false
    end
    if score > leaf.hi or (leaf.hi_open and score == leaf.hi) then
        return false
    end
    return true
end

local function zmscore(zkey, members)
    local out = {}
    local n = #members
    for i = 1, n, CHUNK do
        local got = call('ZMSCORE', zkey, unpack(members, i, math.min(i + CHUNK - 1, n)))
        for j = 1, #got do
            out[i + j - 1] = got[j] and tonumber(got[j]) or false
        end
    end
    return out
end

-- A V leaf of many plain sets (LIKE 'user_12%': ~1,000 small user-id sets) would cost one
-- SMISMEMBER per set and batch: read their members once (the counts bound the work) into a
-- Lua table and test by lookup.  Chunked sets of the leaf are still tested per chunk.
local MEMBER_TABLE_MIN_SETS = 8
local MEMBER_TABLE_MAX = 200000

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

local function plain_member_table(leaf, sets)
    if leaf.members ~= nil then
        return leaf.members
    end
    leaf.members = false
    local plain, total = plain_sets_size(sets)
    if plain >= MEMBER_TABLE_MIN_SETS and total <= MEMBER_TABLE_MAX then
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

-- The other way to test a V leaf of many plain sets: read each candidate's own register
-- (HGET of the key's field, ~1.5-2 us) and look its value up.  Chosen while it costs less
-- than the member table (~3 us a set and ~0.7 us a member, paid once: 1,111 user ids and
-- their 22k traces at 1M traces, while a walk meets ~4.6k of them), or than SMISMEMBER per
-- set and list when the table would be too large (`LIKE 'user_1%'` at 1M: 11k sets, 1 s ->
-- 0.1 s).  The field comes with the plan (value_fields: distinct zset -> hash field); true
-- when it marked mask.
local HASH_TEST_US, TABLE_SET_US, TABLE_MEMBER_US = 2, 3, 0.7

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

local function test_by_registers(ctx, leaf, list, mask)
    local fields = ctx.plan and ctx.plan.value_fields -- (a walked value group has no plan)
    local field = fields and fields[leaf[2]]
    if not field or leaf.members then
        return false
    end
    local lookup = lookup_of(ctx, field)
    local per_test = lookup and LOOKUP_TEST_US or HASH_TEST_US
    if not leaf.table_us then -- (a LIKE sought by this call has it from the probe's counts)
        local plain, members = plain_sets_size(value_sets(leaf))
        leaf.plain = plain
        leaf.table_us = plain * TABLE_SET_US + members * TABLE_MEMBER_US
        leaf.table_ok = plain >= MEMBER_TABLE_MIN_SETS and members <= MEMBER_TABLE_MAX
        leaf.hashed = 0
    end
    local cost = #list * per_test
    if leaf.table_ok then
        if (leaf.hashed + #list) * per_test >= leaf.table_us then
            return false
        end
    elseif cost >= leaf.plain * (TABLE_SET_US + 0.1 * #list) then
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

-- Mark in mask the members of list that the leaf holds.
local function test_leaf(ctx, leaf, list, mask)
    local kind = leaf[1]
    if kind == 'V' then
        if test_by_registers(ctx, leaf, list, mask) then
            return
        end
        local sets = value_sets(leaf)
        local members = plain_member_table(leaf, sets)
        if members then
            for i = 1, #list do
                if members[list[i]] then
                    mask[i] = true
                end
            end
        end
        for s = 1, #sets do
            local set = sets[s]
            if set[2] then
                test_chunked(set[1], list, mask)
            elseif not members then
                local pending, idx = pending_of(list, mask)
                if #pending == 0 then
                    break
                end
                smismember_into(set[1], pending, idx, mask)
            end
        end
    elseif kind == 'C' then
        test_chunked(leaf[2], list, mask)
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
        local hash_prefix = ctx.prefix .. ':t:'
        for i = 1, #list do
            if call('HEXISTS', hash_prefix .. list[i], leaf[2]) == 1 then
                mask[i] = true
            end
        end
    elseif kind == 'A' then
        for i = 1, #list do
            mask[i] = true
        end
    elseif kind ~= 'Z' then
        fail('BADPLAN', 'unknown leaf kind ' .. tostring(kind))
    end
end

-- Whether the V leaf holds every trace of the partition (experiment_ids naming every
-- experiment): a trace has at most one value per key and the sets hold live traces only, so
-- the leaf's counts summing to the number of traces means that no test is needed.
local function covers_all(ctx, leaf)
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
        elseif kind == 'V' and not covers_all(ctx, node) then
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
        local got = call('SINTER', unpack(names))
        for j = 1, #got do
            inter[got[j]] = true
        end
        hits[c] = inter
    end
    return inter
end

-- The members of list in every chunked set of keys, in list order.  Each number is split
-- into (chunk, offset) once for all the sets; per chunk touched, one SMISMEMBER per set tests
-- the offsets still alive (the per-candidate Lua work, not Redis, is the cost here).  With
-- several sets and `hits` (a per-call cache of chunk intersections), a chunk with many
-- candidates (a walk: recent traces share chunks) is tested by lookup in its intersection,
-- which a conjunction keeps small.
local function in_chunked_sets(keys, list, hits)
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
        if hits and count >= SINTER_GROUP_MIN then
            local inter = chunk_intersection(keys, c, hits)
            for k = 1, count do
                if inter[offsets[k]] then
                    ok[k] = true
                end
            end
        else
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
                        unpack(members, from, math.min(from + CHUNK - 1, total)))
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
        node.hits = {}
    end
    if ctx.walking then
        local out = in_chunked_sets_walked(keys, list, node.hits)
        if out then
            return out
        end
    end
    return in_chunked_sets(keys, list, #keys > 1 and node.hits or nil)
end

-- The members of list (trace numbers as decimal strings) that satisfy node, in list order.
local function eval(ctx, node, list)
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
        -- The chunked sets of the conjunction are tested together, where the first of them
        -- stands (children come most selective first).
        local keys = {}
        for i = 2, #node do
            keys[#keys + 1] = chunked_key(ctx, node[i]) or nil
        end
        if ctx.walking and #keys > 0 then
            -- A walk tests its recent candidates by lookup in each chunk's intersection
            -- (~0.1 us each): first, so that a range (ZMSCORE, ~0.4 us per candidate) or a
            -- plain set only sees the survivors.
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
    local hit = {}
    if kind == '|' then
        local rest = list
        for i = 2, #node do
            local got = eval(ctx, node[i], rest)
            if #got > 0 then
                for j = 1, #got do
                    hit[got[j]] = true
                end
                local remaining = {}
                for j = 1, #rest do
                    if not hit[rest[j]] then
                        remaining[#remaining + 1] = rest[j]
                    end
                end
                rest = remaining
                if #rest == 0 then
                    break
                end
            end
        end
    elseif kind == '!' then
        local got = eval(ctx, node[2], list)
        for j = 1, #got do
            hit[got[j]] = true
        end
        local out = {}
        for j = 1, #list do
            if not hit[list[j]] then
                out[#out + 1] = list[j]
            end
        end
        return out
    else
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
    local out = {}
    for j = 1, #list do
        if hit[list[j]] then
            out[#out + 1] = list[j]
        end
    end
    return out
end

-- Feed fn batches of the members common to the chunked sets keys (one: its members), chunk
-- by chunk (SMEMBERS / SINTER); true when fn asked to stop.
-- The trace numbers in chunk c of every chunked set of keys (SMEMBERS for one, SINTER);
-- names: a scratch table for the chunk keys.
local function chunk_members(keys, c, names)
    local suffix = ':' .. slot(c)
    for k = 1, #keys do
        names[k] = keys[k] .. suffix
    end
    local got = #keys == 1 and call('SMEMBERS', names[1]) or call('SINTER', unpack(names))
    local base = c * SET_CHUNK
    for i = 1, #got do
        got[i] = int(base + tonumber(got[i]))
    end
    return got
end

local function enum_chunks_of(ctx, keys, fn)
    local names = {}
    for c = 0, last_chunk_of(ctx) do
        local got = chunk_members(keys, c, names)
        if #got > 0 and fn(got) then
            return true
        end
    end
    return false
end

-- Feed fn batches of the chunked set key's members; true when fn asked to stop.
local function enum_chunked(ctx, key, fn)
    return enum_chunks_of(ctx, { key }, fn)
end

local function enum_rank(zkey, first, count, fn)
    local rank = first
    local last = first + count - 1
    while rank <= last do
        local got = call('ZRANGE', zkey, rank, math.min(rank + QUERY_BATCH - 1, last))
        if #got == 0 then
            break
        end
        if fn(got) then
            return true
        end
        rank = rank + #got
    end
    return false
end

-- Every trace of the partition: the ts zset by rank, then (rarely) the traces without a
-- timestamp from a walk of the chunked set <prefix>:all (HLEN of <prefix>:ids, one field per
-- live trace, tells whether there are any).
local function enum_all(ctx, fn, skip_timed)
    local ts = ctx.prefix .. ':ts'
    local timed = call('ZCARD', ts)
    if not skip_timed and enum_rank(ts, 0, timed, fn) then
        return true
    end
    if call('HLEN', ctx.prefix .. ':ids') <= timed then
        return false
    end
    return enum_chunked(ctx, ctx.prefix .. ':all', function(got)
        local scores = zmscore(ts, got)
        local batch = {}
        for i = 1, #got do
            if not scores[i] then
                batch[#batch + 1] = got[i]
            end
        end
        return #batch > 0 and fn(batch)
    end)
end

local function enum_source(ctx, src, fn)
    local kind = src[1]
    if kind == 'V' then
        local sets = value_sets(src)
        for s = 1, #sets do
            local set = sets[s]
            if set[2] then
                if enum_chunked(ctx, set[1], fn) then
                    return true
                end
            else
                local got = call('SMEMBERS', set[1])
                if #got > 0 and fn(got) then
                    return true
                end
            end
        end
        return false
    elseif kind == 'C' then
        return enum_chunked(ctx, src[2], fn)
    elseif kind == 'R' then
        local zkey = ctx.prefix .. ':' .. src[2]
        local lo, lo_open = score_bound(src[3])
        local first = 0
        if lo ~= -math.huge then
            -- Ranks below the range: scores < lo (or <= lo when lo is exclusive).
            local below = lo_open and sub(src[3], 2) or ('(' .. src[3])
            first = call('ZCOUNT', zkey, '-inf', below)
        end
        return enum_rank(zkey, first, call('ZCOUNT', zkey, src[3], src[4]), fn)
    elseif kind == 'E' then
        local batch = {}
        for i = 2, #src do
            batch[#batch + 1] = tostring(src[i])
            if #batch == QUERY_BATCH then
                if fn(batch) then
                    return true
                end
                batch = {}
            end
        end
        return #batch > 0 and fn(batch)
    elseif kind == 'A' then
        return enum_all(ctx, fn, false)
    elseif kind == 'Z' then
        return false
    end
    fail('BADPLAN', 'cannot enumerate leaf kind ' .. tostring(kind))
end

-- Feed fn batches of candidates: the plan's sources (deduplicated when several) or every trace.
local function enum_candidates(ctx, fn)
    local sources = ctx.plan.sources
    if not sources or #sources == 0 then
        return enum_all(ctx, fn, false)
    end
    if #sources == 1 then
        return enum_source(ctx, sources[1], fn)
    end
    local seen = {}
    for s = 1, #sources do
        local stop = enum_source(ctx, sources[s], function(batch)
            local fresh = {}
            for i = 1, #batch do
                if not seen[batch[i]] then
                    seen[batch[i]] = true
                    fresh[#fresh + 1] = batch[i]
                end
            end
            return #fresh > 0 and fn(fresh)
        end)
        if stop then
            return true
        end
    end
    return false
end

-- Regroup the batches an enumerator feeds into lists of up to EVAL_BATCH candidates: a
-- chunked leaf tests a list with one SMISMEMBER per chunk it touches (<= ~2,000 at 1M
-- traces), so large lists cost far fewer calls per candidate than 1,024-number batches.
local EVAL_BATCH = 32768

local function buffered(enum, fn)
    local buf = {}
    local stop = enum(function(batch)
        local n = #buf
        for i = 1, #batch do
            buf[n + i] = batch[i]
        end
        if #buf >= EVAL_BATCH then
            local full = buf
            buf = {}
            return fn(full)
        end
        return false
    end)
    if stop then
        return true
    end
    return #buf > 0 and fn(buf) or false
end

-- When the candidates come from one chunked set and the residual filter ANDs other chunked
-- sets: an enumerator of their intersection, one SINTER per chunk (Redis intersects <= 512
-- offsets natively; Lua only sees the matches), and what the matches must still pass.
-- The conjuncts of expr that are one chunked set each (their keys), and the others as one
-- node ({'A'} when there are none).
local function split_conjunction(ctx, expr)
    local children = expr[1] == '&' and { unpack(expr, 2) } or { expr }
    local keys, rest = {}, {}
    for i = 1, #children do
        local key = chunked_key(ctx, children[i])
        if key then
            keys[#keys + 1] = key
        else
            rest[#rest + 1] = children[i]
        end
    end
    return keys, #rest == 0 and { 'A' } or (#rest == 1 and rest[1] or { '&', unpack(rest) })
end

local function chunk_join(ctx)
    local sources = ctx.plan.sources
    if not sources or #sources ~= 1 then
        return nil
    end
    local first = chunked_key(ctx, sources[1])
    if not first then
        return nil
    end
    local keys, left = split_conjunction(ctx, ctx.residual)
    if #keys == 0 then
        return nil
    end
    table.insert(keys, 1, first)
    local function enumerate(fn)
        return enum_chunks_of(ctx, keys, fn)
    end
    return enumerate, left
end

-- --- ordering ---------------------------------------------------------------------------

local ORDER_ZSETS = { s = 'ts', d = 'du', E = 'en' }

local function plain_register(raw, field)
    if not raw then
        return false
    end
    if field == 'i' then
        return raw
    end
    return register_value(raw) or false
end

local function order_fields(order)
    local fields, pos = {}, {}
    local function want(f)
        if not pos[f] then
            fields[#fields + 1] = f
            pos[f] = #fields
        end
    end
    for k = 1, #order do
        local f = order[k][2]
        if f == 'E' then
            want('s')
            want('d')
        else
            want(f)
        end
    end
    return fields, pos
end

local function key_value(spec, got, pos)
    local f = spec[2]
    if f == 'E' then
        local s = plain_register(got[pos['s']], 's')
        if not s then
            return false
        end
        local d = plain_register(got[pos['d']], 'd')
        return tonumber(s) + (d and tonumber(d) or 0)
    end
    local v = plain_register(got[pos[f]], f)
    if v and spec[1] == 'n' then
        return tonumber(v)
    end
    return v
end

local function full_key(ctx, no)
    local got = call('HMGET', ctx.prefix .. ':t:' .. no, unpack(ctx.fields))
    local out = {}
    local order = ctx.order
    for k = 1, #order do
        out[k] = key_value(order[k], got, ctx.pos)
    end
    return out
end

local function strip_zeros(s)
    local t = string.gsub(s, '^0+', '')
    return t
end

local function base_cmp(kind, a, b)
    if a == b then
        return 0
    end
    if kind == 'n' then
        return a < b and -1 or 1
    end
    if kind == 'x' then
        local ad = #a > 0 and not find(a, '[^0-9]')
        local bd = #b > 0 and not find(b, '[^0-9]')
        if ad and bd then
            local x, y = strip_zeros(a), strip_zeros(b)
            if #x ~= #y then
                return #x < #y and -1 or 1
            end
            if x == y then
                return 0
            end
            return byte_lt(x, y) and -1 or 1
        elseif ad then
            return -1
        elseif bd then
            return 1
        end
    end
    return str_lt(a, b) and -1 or 1
end

-- Missing values sort last whatever the direction.
local function cmp_value(spec, a, b)
    if a == false then
        return b == false and 0 or 1
    end
    if b == false then
        return -1
    end
    local c = base_cmp(spec[1], a, b)
    if spec[3] == 0 then
        return -c
    end
    return c
end

local function cmp_keys(order, a, b)
    for k = 1, #order do
        local c = cmp_value(order[k], a[k], b[k])
        if c ~= 0 then
            return c
        end
    end
    return 0
end

local function sort_rows(ctx, rows)
    local order = ctx.order
    table.sort(rows, function(a, b)
        return cmp_keys(order, a[2], b[2]) < 0
    end)
end

-- The first order key of each member (ZMSCORE when a zset holds it, else HGET).
local function primary_values(ctx, members)
    local spec = ctx.order[1]
    local zname = spec[1] == 'n' and ORDER_ZSETS[spec[2]]
    if zname then
        return zmscore(ctx.prefix .. ':' .. zname, members)
    end
    local out = {}
    local hash_prefix = ctx.prefix .. ':t:'
    for i = 1, #members do
        local v = plain_register(call('HGET', hash_prefix .. members[i], spec[2]), spec[2])
        if v and spec[1] == 'n' then
            v = tonumber(v)
        end
        out[i] = v
    end
    return out
end

-- Append to out the first `need` rows {no[, key]} of members after the cursor, in order.
-- Table sorts with a Lua comparator cost microseconds per comparison here, so the members
-- are grouped by their first key's value, the distinct values sorted natively (numbers, and
-- strings under byte-order collation), and only a group of several members (ties) gets its
-- full keys read and sorted.
local function select_rows(ctx, members, need, out)
    local order, cursor = ctx.order, ctx.cursor
    local spec = order[1]
    local primary = primary_values(ctx, members)
    local groups, values, nv, nulls = {}, {}, 0, {}
    for i = 1, #members do
        local v = primary[i]
        local keep = true
        if cursor then
            local c = cmp_value(spec, v, cursor[1])
            if c < 0 then
                keep = false
            elseif c == 0 then
                keep = cmp_keys(order, full_key(ctx, members[i]), cursor) > 0
            end
        end
        if keep then
            if v == false then
                nulls[#nulls + 1] = members[i]
            else
                -- a group is its member until a second one shares the value (ties are rare)
                local g = groups[v]
                if not g then
                    groups[v] = members[i]
                    nv = nv + 1
                    values[nv] = v
                elseif type(g) == 'string' then
                    groups[v] = { g, members[i] }
                else
                    g[#g + 1] = members[i]
                end
            end
        end
    end
    if spec[1] == 'n' or (spec[1] == 's' and bytewise) then
        table.sort(values)
        if spec[3] == 0 then
            for i = 1, floor(nv / 2) do
                values[i], values[nv - i + 1] = values[nv - i + 1], values[i]
            end
        end
    else
        table.sort(values, function(a, b)
            return cmp_value(spec, a, b) < 0
        end)
    end
    local taken = 0
    local function take(group)
        if type(group) == 'string' then
            taken = taken + 1
            out[#out + 1] = { group }
            return
        end
        local run = {}
        for k = 1, #group do
            run[k] = { group[k], full_key(ctx, group[k]) }
        end
        sort_rows(ctx, run)
        for k = 1, math.min(#run, need - taken) do
            out[#out + 1] = run[k]
        end
        taken = taken + math.min(#run, need - taken)
    end
    for i = 1, nv do
        if taken >= need then
            return
        end
        take(groups[values[i]])
    end
    if taken < need and #nulls > 0 then
        take(nulls)
    end
end

-- Collect every match from the candidates (optionally only those without a score in
-- zkey), then select the page.
local function collect_page(ctx, need, out, unscored_in)
    local matches = {}
    local residual = ctx.residual
    local function take(batch)
        if unscored_in then
            local scores = zmscore(unscored_in, batch)
            local kept = {}
            for i = 1, #batch do
                if not scores[i] then
                    kept[#kept + 1] = batch[i]
                end
            end
            batch = kept
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
    select_rows(ctx, matches, need, out)
end

local function has_chunked_conjunct(ctx, expr)
    return #split_conjunction(ctx, expr) > 0
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
-- 'abandon' (nothing written to out) past `budget` chunks: the planner expected far fewer,
-- so times and numbers do not go together here, and the caller walks ts instead.
local function chunk_walk_page(ctx, need, out, budget)
    local keys, residual = split_conjunction(ctx, ctx.expr)
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
                return 'abandon'
            end
            local candidates = chunk_members(keys, tonumber(got[g]), names)
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

-- Walk the order zset from the cursor, testing batches, until `need` matches and the tie
-- group of the last one are complete; true when the zset ran out first.
local function walk_page(ctx, zname, asc, need, out)
    local zkey = ctx.prefix .. ':' .. zname
    local order, cursor = ctx.order, ctx.cursor
    local rank = 0
    if cursor then
        local v = cursor[1]
        if v == false then
            return true
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
        -- Scores of the survivors only: WITHSCORES would make Redis format, and Lua parse,
        -- the score of every walked entry (~1 us each), most of which fail the filter.
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
        if boundary then
            batch = 64 -- only the tie group of the last row is left
        elseif kept == 0 then
            batch = batch * 2
        else
            batch = math.ceil((need - #found) * walked / kept * 1.2) + 16
        end
        batch = math.max(64, math.min(batch, WALK_BATCH_MAX))
    end
    -- The walk already gives the first key's order: only runs of equal scores (ties) need
    -- their full keys read and sorted (a Lua comparator costs microseconds per call).
    local rows = {}
    local i = 1
    while i <= #found do
        local j = i
        while j < #found and found_scores[j + 1] == found_scores[i] do
            j = j + 1
        end
        if j == i then
            rows[#rows + 1] = { found[i] }
        else
            local run = {}
            for k = i, j do
                run[#run + 1] = { found[k], full_key(ctx, found[k]) }
            end
            sort_rows(ctx, run)
            for k = 1, #run do
                rows[#rows + 1] = run[k]
            end
        end
        i = j + 1
    end
    for k = 1, math.min(need, #rows) do
        out[#out + 1] = rows[k]
    end
    return exhausted
end

-- One msgpack string {rows found, hash...}: a reply of ~34 strings per trace costs Redis
-- twice as much to convert as cmsgpack does to pack it, and the client decodes it in C.
-- Only the first `shown` rows are read (the extra row only tells that a next page exists).
local function page_reply(ctx, rows, shown)
    local hashes = {}
    local hash_prefix = ctx.prefix .. ':t:'
    for i = 1, math.min(#rows, shown) do
        hashes[i] = call('HGETALL', hash_prefix .. rows[i][1])
    end
    return cmsgpack.pack({ #rows, hashes })
end

-- Durations grouped by the values of the group fields: {values, count, d1, n1, d2, n2, ...}.
local function stats_reply(ctx)
    local fields = ctx.plan.group or {}
    local groups, names = {}, {}
    local du = ctx.prefix .. ':du'
    local hash_prefix = ctx.prefix .. ':t:'
    enum_candidates(ctx, function(batch)
        local got = eval(ctx, ctx.residual, batch)
        if #got == 0 then
            return false
        end
        local durations = zmscore(du, got)
        for i = 1, #got do
            local values, name = {}, ''
            if #fields > 0 then
                local raw = call('HMGET', hash_prefix .. got[i], unpack(fields))
                for k = 1, #fields do
                    local v = plain_register(raw[k], fields[k])
                    values[k] = v
                    name = name .. (v and enc(v) or '-') .. '|'
                end
            end
            local group = groups[name]
            if not group then
                group = { values = values, count = 0, by_duration = {} }
                groups[name] = group
                names[#names + 1] = name
            end
            group.count = group.count + 1
            local d = durations[i]
            if d then
                group.by_duration[d] = (group.by_duration[d] or 0) + 1
            end
        end
        return false
    end)
    local reply = {}
    for g = 1, #names do
        local group = groups[names[g]]
        local values = {}
        for k = 1, #fields do
            values[k] = group.values[k] and { 1, group.values[k] } or { 0 }
        end
        local distinct = {}
        for d in pairs(group.by_duration) do
            distinct[#distinct + 1] = d
        end
        table.sort(distinct)
        local row = { values, group.count }
        for i = 1, #distinct do
            row[#row + 1] = int(distinct[i])
            row[#row + 1] = group.by_duration[distinct[i]]
        end
        reply[g] = row
    end
    return reply
end

-- Sizes of key sets for the planner.  A key (entry {key set, distinct zset}) is on every
-- trace that has one of its values, so its size is the sum of the distinct zset's scores:
-- O(distinct values), far cheaper than SCARD over every chunk for a low-cardinality key.
-- Otherwise (or a bare key set name) the sum of SCARD over the chunks.
local function cards_reply(ctx, keys)
    local out = {}
    for k = 1, #keys do
        local key, dkey = keys[k], nil
        if type(key) == 'table' then
            key, dkey = key[1], key[2]
        end
        local total = 0
        if dkey and call('ZCARD', dkey) * 4 <= last_chunk_of(ctx) + 1 then
            local flat = call('ZRANGE', dkey, 0, -1, 'WITHSCORES')
            for i = 2, #flat, 2 do
                total = total + tonumber(flat[i])
            end
        else
            for c = 0, last_chunk_of(ctx) do
                total = total + call('SCARD', key .. ':' .. slot(c))
            end
        end
        out[k] = total
    end
    return out
end

-- Feed visit(values) the values of dkey's byte-order index (see lex_update), a bucket at a
-- time, ascending or descending from `from` (inclusive; nil = from the first or last
-- value), until visit returns true (then true).  Only called when the index exists.
local function lex_scan(dkey, asc, from, visit)
    local dir = lex_dir(dkey)
    local head
    if from then
        head = lex_head(dir, from)
    elseif asc then
        head = ''
    else
        head = call('ZRANGE', dir, '+', '-', 'BYLEX', 'REV', 'LIMIT', 0, 1)[1] or ''
    end
    local ahead, at = {}, 1 -- the next heads, read a few at a time
    while true do
        local key = lex_bucket(dkey, head)
        local values
        if from then
            if asc then
                values = call('ZRANGE', key, '[' .. from, '+', 'BYLEX')
            else
                values = call('ZRANGE', key, '[' .. from, '-', 'BYLEX', 'REV')
            end
            from = nil
        elseif asc then
            values = call('ZRANGE', key, 0, -1)
        else
            values = call('ZRANGE', key, 0, -1, 'REV')
        end
        if #values > 0 and visit(values) then
            return true
        end
        if at > #ahead then
            if asc then
                ahead = call('ZRANGE', dir, '(' .. head, '+', 'BYLEX', 'LIMIT', 0, 16)
            elseif head == '' then
                ahead = EMPTY
            else
                ahead = call('ZRANGE', dir, '(' .. head, '-', 'BYLEX', 'REV', 'LIMIT', 0, 16)
            end
            at = 1
        end
        head = ahead[at]
        if head == nil then
            return false
        end
        at = at + 1
    end
end

-- The first value of dkey's index >= s (> s when open), or nil.
local function lex_first(dkey, dir, s, open)
    local head = lex_head(dir, s)
    local got = call('ZRANGE', lex_bucket(dkey, head), (open and '(' or '[') .. s, '+', 'BYLEX',
        'LIMIT', 0, 1)[1]
    while not got do
        head = call('ZRANGE', dir, '(' .. head, '+', 'BYLEX', 'LIMIT', 0, 1)[1]
        if not head then
            return nil
        end
        got = call('ZRANGE', lex_bucket(dkey, head), 0, 0)[1]
    end
    return got
end

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

-- Bytes of the UTF-8 character whose first byte is b.
local function utf8_width(b)
    if b < 0xC0 then
        return 1
    elseif b < 0xE0 then
        return 2
    elseif b < 0xF0 then
        return 3
    end
    return 4
end

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

-- values mode with count_only: {number of values, their traces} of lead_values (the probe
-- of a page, whose plan then carries the pattern, not the values: see resolve_sought).
local function value_count_reply(dkey, lead)
    local counts = zmscore(dkey, lead_values(dkey, lead))
    local values, traces = 0, 0
    for i = 1, #counts do
        if counts[i] then
            values = values + 1
            traces = traces + counts[i]
        end
    end
    return { values, traces }
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
        node.plain = count
        node.table_us = count * TABLE_SET_US + traces * TABLE_MEMBER_US
        node.table_ok = count >= MEMBER_TABLE_MIN_SETS and traces <= MEMBER_TABLE_MAX
        node.hashed = 0
    end
end

-- The values of the distinct zset dkey that start with runs[1] and contain the other runs in
-- that order (the literal runs of a LIKE pattern, so a superset of its matches; the planner
-- applies the pattern), as msgpack {sought, {value, count, ...}}: sought = 1 when they came
-- from the byte-order index by `lead`, so exactly those that start like the pattern.  ZSCAN MATCH would format the score of every
-- value, matching or not (~1.5 us each: 50k user ids at 1M traces); here only the
-- candidates' scores are read.
local function values_reply(dkey, runs, lead)
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
    local sought = np > 0 and call('EXISTS', lex_dir(dkey)) == 1
    if sought then
        -- only the values starting like the pattern, sought in byte order
        lex_lead(dkey, (lead and #lead > 0) and lead or { prefix }, take)
    else
        take(call('ZRANGE', dkey, 0, -1))
    end
    local counts = zmscore(dkey, found)
    local flat = {}
    for i = 1, n do
        flat[2 * i - 1], flat[2 * i] = found[i], counts[i]
    end
    -- msgpack: the client decodes a thousand values in C (not one RESP string each)
    return cmsgpack.pack({ sought and 1 or 0, flat })
end

-- --- counting by set algebra ------------------------------------------------------------
-- A count plan is a signed sum of conjunctions (the planner expands NOT and OR by
-- inclusion-exclusion).  A conjunction of chunked sets is counted with one SINTERCARD per
-- chunk (chunks hold <= 512 offsets, so no large intersection is ever built); a plain set
-- (<= 512 members) or a small range/id list is enumerated and the rest tested.

local function set_leaf(set)
    local leaf = { 'V' }
    leaf.sets = { set }
    return leaf
end

local function chunk_numbers(offsets, c)
    local base = c * SET_CHUNK
    for i = 1, #offsets do
        offsets[i] = int(base + tonumber(offsets[i]))
    end
    return offsets
end

local function leaf_size(ctx, leaf)
    local kind = leaf[1]
    if kind == 'R' then
        if not leaf.size then
            leaf.size = call('ZCOUNT', ctx.prefix .. ':' .. leaf[2], leaf[3], leaf[4])
        end
        return leaf.size
    elseif kind == 'E' then
        return #leaf - 1
    end
    return math.huge
end

local function count_and(ctx, list, rest)
    if #rest == 0 then
        return #list
    end
    return #eval(ctx, { '&', unpack(rest) }, list)
end

-- Count the traces in every set of `sets` ({key, chunked, count}) and every leaf of `others`.
local function count_sets(ctx, sets, others)
    local small, small_n = nil, math.huge
    for i = 1, #others do
        local n = leaf_size(ctx, others[i])
        if n < small_n then
            small, small_n = i, n
        end
    end
    local plain = nil
    for i = 1, #sets do
        if not sets[i][2] and (plain == nil or sets[i][3] < sets[plain][3]) then
            plain = i
        end
    end
    if plain and sets[plain][3] <= small_n * 4 then
        local rest = {}
        for i = 1, #sets do
            if i ~= plain then
                rest[#rest + 1] = set_leaf(sets[i])
            end
        end
        for i = 1, #others do
            rest[#rest + 1] = others[i]
        end
        return count_and(ctx, call('SMEMBERS', sets[plain][1]), rest)
    end
    local min_set = math.huge
    for i = 1, #sets do
        min_set = math.min(min_set, sets[i][3] or math.huge)
    end
    -- (a plain set always leaves this branch or the one above: the chunk walk is for
    -- chunked sets only)
    if small and (plain or #sets == 0 or small_n < min_set) then
        local rest = {}
        for i = 1, #sets do
            rest[#rest + 1] = set_leaf(sets[i])
        end
        for i = 1, #others do
            if i ~= small then
                rest[#rest + 1] = others[i]
            end
        end
        if #rest == 0 and others[small][1] == 'R' then
            return small_n
        end
        local total = 0
        buffered(function(fn)
            return enum_source(ctx, others[small], fn)
        end, function(batch)
            total = total + count_and(ctx, batch, rest)
            return false
        end)
        return total
    end
    if #sets == 0 then
        local total = 0
        enum_all(ctx, function(batch)
            total = total + count_and(ctx, batch, others)
            return false
        end, false)
        return total
    end
    if #sets == 1 and #others == 0 and sets[1][3] then
        return sets[1][3]
    end
    local total = 0
    local names = {}
    for c = 0, last_chunk_of(ctx) do
        local suffix = ':' .. slot(c)
        for i = 1, #sets do
            names[i] = sets[i][1] .. suffix
        end
        if #others == 0 then
            if #sets == 1 then
                total = total + call('SCARD', names[1])
            else
                total = total + call('SINTERCARD', #sets, unpack(names))
            end
        else
            local got
            if #sets == 1 then
                got = call('SMEMBERS', names[1])
            else
                got = call('SINTER', unpack(names))
            end
            if #got > 0 then
                total = total + count_and(ctx, chunk_numbers(got, c), others)
            end
        end
    end
    return total
end

-- A conjunction of leaves; a V leaf of several values is a disjoint sum over its values.
local function count_term(ctx, leaves)
    local sets, others, multi = {}, {}, {}
    for i = 1, #leaves do
        local leaf = leaves[i]
        local kind = leaf[1]
        if kind == 'Z' then
            return 0
        elseif kind == 'V' then
            local found = value_sets(leaf)
            if #found == 0 then
                return 0
            elseif #found == 1 then
                sets[#sets + 1] = found[1]
            else
                multi[#multi + 1] = found
            end
        elseif kind == 'C' then
            sets[#sets + 1] = { leaf[2], true, false }
        elseif kind ~= 'A' then
            others[#others + 1] = leaf
        end
    end
    local function choose(m)
        if m > #multi then
            return count_sets(ctx, sets, others)
        end
        local total, seen = 0, {}
        for _, set in ipairs(multi[m]) do
            if not seen[set[1]] then
                seen[set[1]] = true
                sets[#sets + 1] = set
                total = total + choose(m + 1)
                sets[#sets] = nil
            end
        end
        return total
    end
    return choose(1)
end

local function count_terms_reply(ctx, terms)
    local total = 0
    for t = 1, #terms do
        local term = terms[t]
        local leaves = {}
        for i = 2, #term do
            leaves[#leaves + 1] = term[i]
        end
        total = total + term[1] * count_term(ctx, leaves)
    end
    return total
end

-- --- walking the distinct values of a string order key -----------------------------------
-- Distinct zsets are scored by count, so the values are sorted here (byte order = code
-- point order) and each value's set is a group, in order; within a group the rest of the
-- order keys decide, by walking their zset or collecting the group's matches.  Stops as soon
-- as the page is full; traces without the key (nulls) come last whatever the direction.

local function group_page(ctx, gleaf, gcount, need, cursor, out)
    local rest = ctx.rest
    local sub = {
        prefix = ctx.prefix, scanned = 0, last_chunk = ctx.last_chunk, order = rest,
        cursor = cursor,
    }
    sub.fields, sub.pos = order_fields(rest)
    local spec = rest[1]
    local zname = spec[1] == 'n' and ORDER_ZSETS[spec[2]]
    local wv = ctx.plan.walk_values
    local frac, cost, total = wv[4], wv[5], wv[6]
    local enumerable = gleaf[1] == 'V'
    local source_cost = enumerable and math.min(gcount, cost) or cost
    if zname then
        local matches = gcount * frac
        local scan = matches > 0 and need * total / matches or total
        if scan < source_cost then
            -- one conjunction (not nested), so that its chunked sets are tested together
            sub.expr = { '&', gleaf, ctx.expr }
            if ctx.expr[1] == '&' then
                sub.expr = { '&', gleaf, unpack(ctx.expr, 2) }
            end
            sub.density = matches / total
            local before = #out
            -- Newest first in a partition that bounds its chunks' times: the group's
            -- chunked sets are intersected chunk by chunk (see chunk_walk_page).
            local visited = nil
            if zname == 'ts' and spec[3] == 0 and ctx.plan.time_bounds
                and has_chunked_conjunct(sub, sub.expr) then
                local visits = matches > 0 and need * total / (matches * SET_CHUNK) * 1.5 + 1
                    or math.huge
                visited = chunk_walk_page(sub, need, out, math.max(8, math.ceil(3 * visits)))
            end
            local exhausted = visited
            if visited == nil or visited == 'abandon' then
                exhausted = walk_page(sub, zname, spec[3] == 1, need, out)
            end
            if exhausted and #out - before < need then
                sub.plan = ctx.plan
                sub.residual = { '&', gleaf, ctx.residual }
                collect_page(sub, need - (#out - before), out, ctx.prefix .. ':' .. zname)
            end
            ctx.scanned = ctx.scanned + sub.scanned
            return
        end
    end
    if enumerable and gcount <= cost then
        sub.plan = { sources = { gleaf } }
        sub.residual = ctx.expr
    else
        sub.plan = ctx.plan
        sub.residual = { '&', gleaf, ctx.residual }
    end
    collect_page(sub, need, out, nil)
    ctx.scanned = ctx.scanned + sub.scanned
end

-- Feed visit(value, count) the values of the distinct zset dkey in byte order (descending
-- unless asc), stopping when it returns true (then true).  Sorting every value (50k user
-- ids: ~50 ms) is avoided: a sorted sample cuts the values into windows, taken in order
-- with one pass each (windows double in size); only a window's values are sorted.
-- `from`: skip windows wholly before this value (the cursor's), if given.
local WINDOW_SAMPLES = 64

local function windowed_values(dkey, asc, from, visit)
    if call('EXISTS', lex_dir(dkey)) == 1 then
        return lex_scan(dkey, asc, from, function(window)
            local scores = zmscore(dkey, window)
            for i = 1, #window do
                if visit(window[i], scores[i]) then
                    return true
                end
            end
            return false
        end)
    end
    local values = call('ZRANGE', dkey, 0, -1)
    local n = #values
    local sample = {}
    if n > 4 * WINDOW_SAMPLES then
        local stride = n / WINDOW_SAMPLES
        for k = 1, WINDOW_SAMPLES - 1 do
            sample[k] = values[floor(k * stride)]
        end
        table.sort(sample)
    end
    -- Window bounds in walk order: (lo, hi] with nil = unbounded.
    local bounds = {}
    local m = #sample
    local step, k = 1, 0
    while k < m do
        k = math.min(m, k + step)
        bounds[#bounds + 1] = asc and sample[k] or sample[m - k + 1]
        step = step * 2
    end
    bounds[#bounds + 1] = false
    local prev = false
    for w = 1, #bounds do
        local bound = bounds[w]
        local lo, hi
        if asc then
            lo, hi = prev, bound
        else
            lo, hi = bound, prev
        end
        -- skip a window wholly before the cursor value
        local skip = from and ((asc and hi and hi < from) or (not asc and lo and lo >= from))
        if not skip then
            local window = {}
            for i = 1, n do
                local v = values[i]
                if (not lo or v > lo) and (not hi or v <= hi) then
                    window[#window + 1] = v
                end
            end
            table.sort(window)
            local count = #window
            if not asc then
                for i = 1, floor(count / 2) do
                    window[i], window[count - i + 1] = window[count - i + 1], window[i]
                end
            end
            local scores = zmscore(dkey, window)
            for i = 1, count do
                if visit(window[i], scores[i]) then
                    return true
                end
            end
        end
        prev = bound
    end
    return false
end

local function walk_values_page(ctx, need, out)
    local wv = ctx.plan.walk_values
    local dkey, vprefix, presence = wv[1], wv[2], wv[3]
    local order, cursor = ctx.order, ctx.cursor
    local spec = order[1]
    local rest, subcursor = {}, nil
    for k = 2, #order do
        rest[k - 1] = order[k]
    end
    ctx.rest = rest
    if cursor then
        subcursor = {}
        for k = 2, #cursor do
            subcursor[k - 1] = cursor[k]
        end
    end
    -- One value's group; true when the page is full.
    local function visit(v, count)
        local c = cursor and cmp_value(spec, v, cursor[1]) or 1
        if c >= 0 and count then
            local leaf = { 'V', dkey, vprefix, v }
            leaf.sets = { { vprefix .. enc(v), count > PLAIN_MAX, count } }
            group_page(ctx, leaf, count, need - #out, c == 0 and subcursor or nil, out)
        end
        return #out >= need
    end
    local present = nil
    if not (cursor and cursor[1] == false) then
        if spec[1] == 's' and (bytewise or call('EXISTS', lex_dir(dkey)) == 1) then
            if windowed_values(dkey, spec[3] == 1, cursor and cursor[1], visit) then
                return
            end
        else
            local flat = call('ZRANGE', dkey, 0, -1, 'WITHSCORES')
            local values, counts = {}, {}
            present = 0
            for i = 1, #flat, 2 do
                local n = tonumber(flat[i + 1])
                values[#values + 1] = flat[i]
                counts[flat[i]] = n
                present = present + n
            end
            table.sort(values, function(a, b)
                return cmp_value(spec, a, b) < 0
            end)
            for i = 1, #values do
                if visit(values[i], counts[values[i]]) then
                    return
                end
            end
        end
    end
    if present == nil then
        present = 0
        local flat = call('ZRANGE', dkey, 0, -1, 'WITHSCORES')
        for i = 2, #flat, 2 do
            present = present + tonumber(flat[i])
        end
    end
    local nulls = call('HLEN', ctx.prefix .. ':ids') - present
    if nulls > 0 then
        local nulls_cursor = cursor and cursor[1] == false and subcursor or nil
        group_page(ctx, { '!', presence }, nulls, need - #out, nulls_cursor, out)
    end
end

--[[
tt_query: run one query plan over one partition (read only).
KEYS[1] ids     <prefix>:ids (declares the partition's slot; every other key is built from prefix)
ARGV[1] prefix  partition prefix ns:{pNN}
ARGV[2] plan    msgpack map: mode ('page' | 'count' | 'stats' | 'cards' | 'values'), expr (tree),
                sources (leaves to enumerate; empty = every trace), residual (what a
                candidate from the sources must still pass), walk ({zname, asc} or
                absent), order ({kind 'n'|'s'|'x', field, asc 1|0} each), cursor ({present
                0|1, value} per order key, or absent), limit, group (hash fields), keys (cards)
                terms (count: {sign, leaf...} conjunctions to count and sum instead of the
                expr), walk_values ({dkey, vprefix, presence leaf, match fraction, candidate
                cost, traces}: walk the first order key's distinct values, or absent)
                shown (page: how many of the `limit` rows to return, default all)
                density (walk: the expected fraction of walked entries that match)
                value_fields (page: {distinct zset = hash field} of the V leaves of many
                values, which may be tested by reading the candidates' registers)
                dkey, runs, lead (values: a distinct zset and the literal runs of a LIKE
                pattern, the first one its start, and its lead); count_only (values: the
                pattern is its lead and one final %: count its values and their traces)
Returns page: one msgpack array {rows found (<= limit), {hash, ...}}: the HGETALL field/value
lists of the first `shown` rows after the cursor, in order; count: an integer; stats: groups
{values, count, duration, n, ...}; cards: integers; values: msgpack {sought 0|1, {value,
count, ...}}, or with count_only {values, traces}.
--]]
local function tt_query(keys, argv)
    call = redis.call
    floor, sub, find, format = math.floor, string.sub, string.find, string.format
    bytewise = detect_bytewise()
    local prefix = argv[1]
    if keys[1] ~= prefix .. ':ids' then
        fail('BADKEYS', 'KEYS[1] must be ' .. tostring(prefix) .. ':ids')
    end
    local ok, plan = pcall(cmsgpack.unpack, argv[2] or '')
    if not ok or type(plan) ~= 'table' then
        fail('BADPLAN', 'ARGV[2] must be a msgpack map')
    end
    local ctx = { prefix = prefix, plan = plan, expr = plan.expr or { 'A' }, scanned = 0 }
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
    if mode == 'values' then
        if plan.count_only then
            return value_count_reply(plan.dkey, plan.lead or {})
        end
        return values_reply(plan.dkey, plan.runs or {}, plan.lead)
    end
    if mode == 'count' and plan.terms then
        return count_terms_reply(ctx, plan.terms)
    end
    if mode == 'count' then
        local total = 0
        buffered(function(fn)
            return enum_candidates(ctx, fn)
        end, function(batch)
            total = total + #eval(ctx, ctx.residual, batch)
            return false
        end)
        return total
    end
    if mode == 'stats' then
        return stats_reply(ctx)
    end
    if mode ~= 'page' then
        fail('BADPLAN', 'unknown mode ' .. tostring(mode))
    end
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
    if plan.cursor then
        local cursor = {}
        for k = 1, #order do
            local item = plan.cursor[k]
            cursor[k] = (item[1] == 1) and item[2] or false
        end
        ctx.cursor = cursor
    end
    local need = plan.limit
    local rows = {}
    local walk = plan.walk
    local done = false
    if plan.walk_values then
        walk_values_page(ctx, need, rows)
        done = true
    elseif plan.chunk_walk then
        -- plan.chunk_walk: how many chunks to visit before falling back to walk/collect
        local visited = chunk_walk_page(ctx, need, rows, plan.chunk_walk)
        if visited ~= 'abandon' then
            done = true
            if visited and #rows < need then
                collect_page(ctx, need - #rows, rows, prefix .. ':ts')
            end
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
        local exhausted = walk_page(ctx, zname, asc, need, rows)
        if exhausted and #rows < need then
            collect_page(ctx, need - #rows, rows, prefix .. ':' .. zname)
        end
    else
        collect_page(ctx, need, rows, nil)
    end
    return page_reply(ctx, rows, plan.shown or need)
end

--[[
tt_lookup: the lookup fingerprints of one register field (see fingerprint).
KEYS[1] <prefix>:lk
ARGV    prefix, action, field ('t<key>' or 'm<key>'), then for 'build': from chunk, chunks
  'list'   lists the field as 'building' unless listed (the fold keeps its strings from
           then on); returns its state
  'build'  chunks from .. from+chunks-1 get the fingerprint of every trace of the key set
           (tk/mk) from its register; returns the next chunk, or -1 past the last one
  'ready'  marks a listed field ready (tt_query then tests by its fingerprints)
  'drop'   unlists the field and deletes its strings
--]]
local function tt_lookup(keys, argv)
    call = redis.call
    floor, sub, find, format, match = math.floor, string.sub, string.find, string.format, string.match
    unpack_, type_ = unpack, type
    local prefix, action, field = argv[1], argv[2], argv[3]
    if keys[1] ~= prefix .. ':lk' then
        fail('BADKEYS', 'KEYS[1] must be ' .. tostring(prefix) .. ':lk')
    end
    local kind = type(field) == 'string' and sub(field, 1, 1)
    if (kind ~= 't' and kind ~= 'm') or #field < 2 then
        fail('BADARGS', 'the field must be t<tag key> or m<metadata key>')
    end
    local lk = keys[1]
    if action == 'list' then
        call('HSETNX', lk, field, 'building')
        return call('HGET', lk, field)
    end
    local last = floor(tonumber(call('GET', prefix .. ':n') or 0) / SET_CHUNK)
    local key = prefix .. ':lf:' .. enc(field) .. ':'
    if action == 'drop' then
        call('HDEL', lk, field)
        for c = 0, last do
            call('DEL', key .. int(c))
        end
        return 1
    end
    if call('HEXISTS', lk, field) == 0 then
        fail('NOTLISTED', 'field ' .. field .. ' is not listed (action list first)')
    end
    if action == 'ready' then
        call('HSET', lk, field, 'ready')
        return 1
    end
    if action ~= 'build' then
        fail('BADARGS', 'unknown action ' .. tostring(action))
    end
    local from, count = tonumber(argv[4]), tonumber(argv[5])
    if not from or not count or from < 0 or count < 1 then
        fail('BADARGS', 'build takes a first chunk >= 0 and a number of chunks >= 1')
    end
    local kkey = prefix .. (kind == 't' and ':tk:' or ':mk:') .. enc(sub(field, 2)) .. ':'
    local hash_prefix = prefix .. ':t:'
    local pos = { chunk = {}, offset = {} }
    local upto = math.min(last, from + count - 1)
    for c = from, upto do
        local offsets = call('SMEMBERS', kkey .. int(c))
        local numbers = {}
        for i = 1, #offsets do
            local no = int(c * SET_CHUNK + tonumber(offsets[i]))
            local raw = call('HGET', hash_prefix .. no, field)
            local value = raw and register_value(raw)
            numbers[no] = value and fingerprint(value) or 0
        end
        if #offsets > 0 then
            write_fingerprints(prefix, field, numbers, pos)
        end
    end
    if upto >= last then
        return -1
    end
    return upto + 1
end

redis.register_function('tt_lookup', tt_lookup)

redis.register_function { function_name = 'tt_query', callback = tt_query, flags = { 'no-writes' } }

redis.register_function('tt_apply', tt_apply)
