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
local function tt_trim(keys, argv)
    bind_runtime()
    local stream, marks = keys[1], keys[2]
    local retention_ms = tonumber(argv[1])
    if retention_ms == nil or retention_ms < 0 then
        return redis.error_reply('TT_BADARGS tt_trim: retention_ms must be a number >= 0')
    end
    if redis.call('EXISTS', stream) == 0 then
        return {0, '', '', ''}
    end

    local function parse(id)
        local ms, seq = string.match(id, '^(%d+)-(%d+)$')
        return tonumber(ms), tonumber(seq)
    end
    local function less(a, b)
        local ams, aseq = parse(a)
        local bms, bseq = parse(b)
        return ams < bms or (ams == bms and aseq < bseq)
    end
    -- The first entry after `id`, or nil when the stream has none.
    local function after(id)
        local next_entry = redis.call('XRANGE', stream, '(' .. id, '+', 'COUNT', 1)[1]
        return next_entry and next_entry[1] or nil
    end

    local now = redis.call('TIME')
    local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)

    local newest_mark = redis.call('ZRANGE', marks, '+inf', '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, 1)[1]
    local mark = redis.call('ZRANGE', marks, now_ms - retention_ms, '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, 1)[1]
    if mark == nil then
        return {0, '', newest_mark and 'retention' or 'archive', ''}
    end

    -- The bound so far: the first entry we must keep (nil: none, trim everything).
    local keep = after(mark)
    local held = keep and (mark == newest_mark and 'archive' or 'retention') or ''
    local detail = ''
    local function bound(candidate, why, group)
        if candidate ~= nil and (keep == nil or less(candidate, keep)) then
            keep, held, detail = candidate, why, group
        end
    end

    local groups = redis.call('XINFO', 'GROUPS', stream)
    for _, info in ipairs(groups) do
        local name, last_delivered
        for i = 1, #info, 2 do
            if info[i] == 'name' then name = info[i + 1] end
            if info[i] == 'last-delivered-id' then last_delivered = info[i + 1] end
        end
        local summary = redis.call('XPENDING', stream, name)
        if tonumber(summary[1]) > 0 then
            bound(summary[2], 'pending', name)
        end
        local undelivered = after(last_delivered)
        if undelivered ~= nil then
            bound(undelivered, 'undelivered', name)
        end
    end

    local trimmed
    if keep == nil then
        trimmed = redis.call('XLEN', stream)
        if trimmed > 0 then
            -- Nothing must stay: MINID just past the last entry removes every one.
            local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1][1]
            local ms, seq = parse(last)
            redis.call('XTRIM', stream, 'MINID', '=', (ms + 1) .. '-0')
            keep = (ms + 1) .. '-0'
        else
            keep = ''
        end
    else
        trimmed = redis.call('XTRIM', stream, 'MINID', '=', keep)
    end
    -- Marks older than the one used can never be used again.
    redis.call('ZREMRANGEBYSCORE', marks, '-inf', '(' .. redis.call('ZSCORE', marks, mark))
    return {trimmed, keep, held, detail}
end

Trim.tt_trim = tt_trim
