-- The index changes of one batch: gathered while its traces are folded, then written once
-- per index key.

local chunked, chunked_write, members_after = Sets.chunked, Sets.chunked_write, Sets.members_after
local take_chunked, value_counts = Sets.take_chunked, Sets.value_counts
local lex_update = LexIndex.lex_update
local fingerprint, write_fingerprints = Lookups.fingerprint, Lookups.write_fingerprints

--[[ Index changes of one batch, gathered before any index write.

fields[field] = { vprefix, dkey, kkey or false, add = {[value] = {numbers}}, rem = {…},
kadd = {numbers}, krem = {numbers} } for every indexed register field (false for s and d):
value sets (tv mv ex st cr, key <vprefix><enc value>) counted in their distinct zset dkey
(score = member count), and for tags and metadata the always-chunked key set kkey (tk mk);
lex: the values are also kept in byte order (tags, metadata, client_request_id).
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
        requests = 0, -- traces that gained a client_request_id, less those that lost one
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
            -- the values in byte order (lex_index.lua): tags, metadata, client_request_id
            known.lex = #field > 1 or field == 'c'
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
    if field == 'c' and (old_value == nil) ~= (new_value == nil) then
        self.requests = self.requests + (new_value and 1 or -1)
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

-- Write the changes of the value set vkey, whose member count goes from before to after:
-- its form (plain up to PLAIN_MAX members, chunked above) follows its count.
local function write_value_set(batch, vkey, before, after, add, rem)
    local pos = batch.pos
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
        if not batch.last_chunk then
            batch.last_chunk = floor(tonumber(call('GET', batch.prefix .. ':n') or 0) / SET_CHUNK)
        end
        local members = members_after(take_chunked(vkey, batch.last_chunk), rem, add)
        if #members > 0 then
            chunked('SADD', vkey, members)
        end
    end
end

-- Write the gathered changes of one register field's indexes: its value sets, their counts
-- in its distinct zset, and for tags and metadata its byte-order index and key set.
function Batch:flush_field(known)
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
        local add, rem = adds[value] or EMPTY, rems[value] or EMPTY
        local before = counts[i]
        local after = before + #add - #rem
        write_value_set(self, vprefix .. enc(value), before, after, add, rem)
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
    if known.lex and (#added > 0 or #zrem > 0) then
        lex_update(dkey, added, zrem)
    end
    local kkey = known[3]
    if kkey then
        if #known.krem > 0 then
            chunked_write('SREM', kkey, known.krem, self.pos)
        end
        if #known.kadd > 0 then
            chunked_write('SADD', kkey, known.kadd, self.pos)
        end
    end
end

-- Write the gathered index changes.
function Batch:flush()
    local prefix = self.prefix
    for _, known in pairs(self.fields) do
        if known then
            self:flush_field(known)
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
    self:request_count()
end

--[[ <prefix>:cn (string): how many live traces hold a client_request_id, so that tt_query
needs no HEXISTS per candidate for `client_request_id present` (the test of `!=`, `NOT IN`,
`IS NOT NULL`) where every trace holds one.  Kept only for partitions born with it (the
batch creating the first trace creates it): a count started later would miss the traces
folded before, so an older partition has none and is tested trace by trace. ]]
function Batch:request_count()
    local key = self.prefix .. ':cn'
    if self.born or (self.requests ~= 0 and call('EXISTS', key) == 1) then
        call('INCRBY', key, self.requests)
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

Batches.new_batch = new_batch
