-- The fold of a trace with one event in the batch (the common case): no fold state.

local compact, encode_stamp = Stamps.compact, Stamps.encode_stamp
local register_value, stamp_older = Stamps.register_value, Stamps.stamp_older
local base_text = Stamps.base_text
local chunked, hmget = Sets.chunked, Sets.hmget

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

FoldSingle.apply_single = apply_single
FoldSingle.write_new_single = write_new_single
