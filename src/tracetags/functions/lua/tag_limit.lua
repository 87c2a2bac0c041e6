-- The limit on live tags per trace: an event that would leave its trace with more live tags
-- than the limit is taken out of the batch and dead-lettered with the reason.
--
-- Deterministic: the decision for an event depends only on the trace's state before it and
-- the events of the trace before it in the batch, in stream order, so a replay of the log
-- refuses the same events.  Idempotent: an event folded again (a redelivery) sets keys the
-- trace already holds, which add nothing.

local register_value = Stamps.register_value
local hmget = Sets.hmget

-- The tag fields ('t<key>') an event sets (value a string) and deletes (false), in order.
local function is_tag(field)
    return #field > 1 and sub(field, 1, 1) == 't'
end

local function tags_set_by(events)
    local n = 0
    for e = 1, #events do
        local fv = events[e].fv
        if fv then
            for i = 1, #fv, 2 do
                if fv[i + 1] and is_tag(fv[i]) then
                    n = n + 1
                end
            end
        end
    end
    return n
end

-- The live tags of the trace hash: a set of fields and its size.
local function live_tags(hash)
    local flat = call('HGETALL', hash)
    local live, n = {}, 0
    for i = 1, #flat, 2 do
        if is_tag(flat[i]) and register_value(flat[i + 1]) then
            live[flat[i]] = true
            n = n + 1
        end
    end
    return live, n
end

-- The events of one trace that stay (in order), and the refused ones appended to refused as
-- {entry id, trace id, reason}.
local function admit(events, live, n, max_tags, trace_id, refused)
    local kept = {}
    for e = 1, #events do
        local ev = events[e]
        local fv = ev.fv
        if not fv then -- trace_deleted: no tag survives it
            live, n = {}, 0
            kept[#kept + 1] = ev
        else
            local fresh, gone = {}, 0
            for i = 1, #fv, 2 do
                local field = fv[i]
                if is_tag(field) then
                    if fv[i + 1] then
                        if not live[field] and not fresh[field] then
                            fresh[field] = true
                            gone = gone - 1
                        end
                    elseif live[field] then
                        live[field] = nil
                        gone = gone + 1
                    end
                end
            end
            if n - gone > max_tags then
                refused[#refused + 1] = { ev.id, trace_id, format(
                    'the trace would hold %d live tags, over the limit of %d (max_tags_per_trace)',
                    n - gone, max_tags) }
            else
                for field in pairs(fresh) do
                    live[field] = true
                end
                n = n - gone
                kept[#kept + 1] = ev
            end
        end
    end
    return kept
end

-- Take the events over the limit out of the batch (first, multi and trace_ids as read_batch
-- made them); returns the refused ones.  One HMGET of the trace numbers, then one HLEN per
-- known trace whose events set tags; a trace's hash is read whole only when its HLEN plus
-- the tags the batch sets may pass the limit.
local function refuse_over_limit(prefix, first, multi, trace_ids, max_tags)
    local refused = {}
    if max_tags <= 0 or #trace_ids == 0 then
        return refused
    end
    local hash_prefix = prefix .. ':t:'
    local numbers = hmget(prefix .. ':ids', trace_ids)
    local keep_ids = {}
    for t = 1, #trace_ids do
        local trace_id = trace_ids[t]
        local events = multi[trace_id] or { first[trace_id] }
        local setting = tags_set_by(events)
        local no = numbers[t]
        local hash = no and (hash_prefix .. no)
        if setting > 0 and (hash and call('HLEN', hash) or 0) + setting > max_tags then
            local live, n = {}, 0
            if hash then
                live, n = live_tags(hash)
            end
            local kept = admit(events, live, n, max_tags, trace_id, refused)
            first[trace_id] = kept[1]
            multi[trace_id] = #kept > 1 and kept or nil
        end
        if first[trace_id] then
            keep_ids[#keep_ids + 1] = trace_id
        end
    end
    for t = 1, #trace_ids do
        trace_ids[t] = keep_ids[t]
    end
    return refused
end

TagLimit.refuse_over_limit = refuse_over_limit
