-- The safe trim of a partition's stream (tt_trim), for the archiver.

-- tt_trim: trim a partition's stream up to the safe point, in one atomic step.
--
-- KEYS[1] stream     ns:{pNN}:log
-- KEYS[2] marks      ns:{pNN}:archive:marks (zset: archived-up-to entry id -> archived at ms)
-- ARGV[1] retention_ms   an entry stays this long after the archive recorded it
--
-- The safe point is the first entry that must stay: the smallest of
--   * the entry after the newest archived-up-to mark recorded at least retention_ms ago,
--   * for every consumer group of the stream: its oldest pending entry (read but not
--     acknowledged, by any consumer, live or dead), and the entry after its
--     last-delivered-id (nothing after it was delivered to the group yet).
-- Everything before it is removed with XTRIM MINID (exact).  Redis 7.0 has no
-- XTRIM ... ACKED, and reading the groups and trimming in one Function call means no group
-- can read or acknowledge in between.  Nothing here reads more than one entry: an exact
-- MINID trim frees whole stream nodes (~100 entries each) and edits only the last one, so
-- even a large trim is cheap (a bound found by reading N entries cost far more).
--
-- Returns {trimmed, minid, held, detail}: held names what stops the trim where it stops
-- ('' when everything was trimmed): 'retention' (archived entries still in their live
-- retention), 'archive' (entries not archived yet), 'pending' / 'undelivered' (detail: the
-- group).
local function parse(id)
    local ms, seq = match(id, '^(%d+)-(%d+)$')
    return tonumber(ms), tonumber(seq)
end

local function less(a, b)
    local ams, aseq = parse(a)
    local bms, bseq = parse(b)
    return ams < bms or (ams == bms and aseq < bseq)
end

-- The first entry of `stream` after `id`, or nil when the stream has none.
local function after(stream, id)
    local next_entry = call('XRANGE', stream, '(' .. id, '+', 'COUNT', 1)[1]
    return next_entry and next_entry[1] or nil
end

-- The first entry that must stay for the archive (nil: none), and why; nil, reason when
-- no mark is old enough (nothing may be trimmed).
-- The furthest entry id among the marks recorded at `upto` ms or before (nil: none): marks
-- recorded in the same ms tie on their score, and a zset orders ties by text ('-11' <
-- '-6'), not as entry ids.
local function furthest_mark(marks, upto)
    local best = nil
    for _, id in ipairs(call('ZRANGE', marks, '-inf', upto, 'BYSCORE')) do
        if best == nil or less(best, id) then
            best = id
        end
    end
    return best
end

local function archive_bound(stream, marks, retention_ms)
    local now = call('TIME')
    local now_ms = tonumber(now[1]) * 1000 + floor(tonumber(now[2]) / 1000)
    local newest = furthest_mark(marks, '+inf')
    local mark = furthest_mark(marks, now_ms - retention_ms)
    if mark == nil then
        return nil, nil, newest and 'retention' or 'archive'
    end
    local keep = after(stream, mark)
    return mark, keep, keep and (mark == newest and 'archive' or 'retention') or ''
end

-- Lowers `keep` to every group's oldest pending entry and first undelivered entry.
local function group_bound(stream, keep, held, detail)
    for _, info in ipairs(call('XINFO', 'GROUPS', stream)) do
        local name, last_delivered
        for i = 1, #info, 2 do
            if info[i] == 'name' then name = info[i + 1] end
            if info[i] == 'last-delivered-id' then last_delivered = info[i + 1] end
        end
        local summary = call('XPENDING', stream, name)
        local candidates = {
            { tonumber(summary[1]) > 0 and summary[2] or nil, 'pending' },
            { after(stream, last_delivered), 'undelivered' },
        }
        for _, c in ipairs(candidates) do
            if c[1] ~= nil and (keep == nil or less(c[1], keep)) then
                keep, held, detail = c[1], c[2], name
            end
        end
    end
    return keep, held, detail
end

-- Trims everything before `keep`, or the whole stream when keep is nil: then MINID just
-- past the last entry removes every one.  Returns the count trimmed and the MINID used.
local function trim_before(stream, keep)
    if keep ~= nil then
        return call('XTRIM', stream, 'MINID', '=', keep), keep
    end
    local last = call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
    if last == nil then
        return 0, ''
    end
    local ms = parse(last[1])
    local minid = (ms + 1) .. '-0'
    return call('XTRIM', stream, 'MINID', '=', minid), minid
end

local function tt_trim(keys, argv)
    bind_runtime()
    local stream, marks = keys[1], keys[2]
    local retention_ms = tonumber(argv[1])
    if retention_ms == nil or retention_ms < 0 then
        return redis.error_reply('TT_BADARGS tt_trim: retention_ms must be a number >= 0')
    end
    if call('EXISTS', stream) == 0 then
        return { 0, '', '', '' }
    end
    local mark, keep, held = archive_bound(stream, marks, retention_ms)
    if mark == nil then
        return { 0, '', held, '' }
    end
    local detail
    keep, held, detail = group_bound(stream, keep, held, '')
    local trimmed, minid = trim_before(stream, keep)
    -- Marks older than the one used can never be used again.
    call('ZREMRANGEBYSCORE', marks, '-inf', '(' .. call('ZSCORE', marks, mark))
    return { trimmed, minid, held, detail }
end

Trim.tt_trim = tt_trim
