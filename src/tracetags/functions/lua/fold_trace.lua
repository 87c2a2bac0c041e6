-- The fold of one trace that has several events in the batch, or a deletion: its registers
-- are read once, folded in stamp order, and written back once.

local compact, encode_stamp, is_register = Stamps.compact, Stamps.encode_stamp, Stamps.is_register
local newer, parse_id, register_stamp = Stamps.newer, Stamps.parse_id, Stamps.register_stamp
local base_text = Stamps.base_text
local register_value, stamp_older = Stamps.register_value, Stamps.stamp_older
local chunked, hmget = Sets.chunked, Sets.hmget

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

-- Read the registers of trace no that a fold of events needs into st (raw, base, the
-- stamp of its latest event): only those the events write, unless they may delete it.
local function read_state(st, hash, events)
    local raw = st.raw
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
    st.exists = true
    st.base = tonumber(raw['b'])
    st.xms, st.xseq = register_stamp(raw['x'], st.base)
end

-- Fold the events of one trace (several, or a deletion) numbered no (nil: none yet) whose
-- tombstone is the entry id tombstone (or nil).  Writes the trace unless it needs a new
-- number; out.created gets its state then, out.gone its tombstone, out.ids_removed its id.
local function fold_trace(batch, trace_id, events, no, tombstone, hash_prefix, out)
    local st = {
        trace_id = trace_id, raw = {}, new = {}, value = {}, dropped = {}, exists = false,
    }
    if tombstone then
        st.gms, st.gseq = parse_id(tombstone)
    end
    if no then
        st.no = no
        read_state(st, hash_prefix .. no, events)
    end
    local before = st.raw
    fold_events(st, events)
    if st.gone_dirty then
        local gone = out.gone
        gone[#gone + 1] = trace_id
        gone[#gone + 1] = int(st.gms) .. '-' .. int(st.gseq)
    end
    if st.no and not st.wiped then
        write_in_place(batch, st, hash_prefix)
    else
        if st.wiped then
            remove_trace(batch, st.no, before, hash_prefix)
            out.unordered[#out.unordered + 1] = { trace_id, st.no }
            if not st.exists then
                out.ids_removed[#out.ids_removed + 1] = trace_id
            end
        end
        if st.exists then
            out.created[#out.created + 1] = st
        end
    end
end

FoldTrace.fold_trace = fold_trace
FoldTrace.write_new = write_new
