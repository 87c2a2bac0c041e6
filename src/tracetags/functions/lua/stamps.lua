-- Stamps: every register is stamped with the stream entry id that wrote it, compared as
-- (ms, seq); stored compact, (ms - base) * SEQ_SPAN + seq, when that is exact.

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

-- The text of the base ms of a new trace (the entry id's own digits, unless not canonical).
local function base_text(text, base)
    if #text > 1 and sub(text, 1, 1) == '0' then
        return int(base)
    end
    return text
end

Stamps.register_value = register_value
Stamps.compact = compact
Stamps.encode_stamp = encode_stamp
Stamps.is_register = is_register
Stamps.newer = newer
Stamps.register_stamp = register_stamp
Stamps.stamp_older = stamp_older
Stamps.parse_id = parse_id
Stamps.base_text = base_text
