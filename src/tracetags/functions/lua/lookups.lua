-- Lookup fingerprints of listed keys: computed by the fold and by tt_lookup, which builds,
-- lists, readies and drops them.

local register_value = Stamps.register_value
local by_chunk = Sets.by_chunk

--[[ Lookup fingerprints (opt-in per tag or metadata key, TRACETAGS_LOOKUP_KEYS): for a
key whose values are many and sparse (user ids), a walk that tests the newest traces'
values (LIKE 'user_12%' over a thousand small value sets) would read each trace's hash
(a key lookup and a cache miss each).  Instead:
  <prefix>:lk                      hash: register field ('tuser_id') -> 'building' | 'ready'
  <prefix>:lf:<enc field>:<c>      string: for the numbers of chunk c (SET_CHUNK of them), a
                                   big-endian u16 each at byte 2 * offset: fingerprint(value),
                                   0 when the trace has no value (or no trace has the number)
The fold keeps the strings of every field listed in lk (BITFIELD SET u16, one call per
chunk and batch); ensure_lookups (functions/__init__.py) lists a field, builds its strings
from the key set (tk/mk) chunk by chunk with tt_lookup, then marks it ready.  tt_query
trusts only a ready field: a trace whose fingerprint is not wanted does not match; one
whose fingerprint is wanted is checked on its register (fingerprints collide).  A listed
key costs two bytes per trace number ever used (strings of 2 * SET_CHUNK bytes). ]]
local function fingerprint(v)
    local h = FINGERPRINT_SEED
    for i = 1, #v do
        h = (h * 33 + string.byte(v, i)) % FINGERPRINT_MOD
    end
    return h + 1
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
        -- made at its full size: grown by BITFIELD, a string keeps spare room allocated
        call('SET', chunk_key, LOOKUP_ZEROS, 'NX')
        call('BITFIELD', chunk_key, unpack_(args))
    end
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
    bind_runtime()
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

Lookups.fingerprint = fingerprint
Lookups.write_fingerprints = write_fingerprints
Lookups.tt_lookup = tt_lookup
