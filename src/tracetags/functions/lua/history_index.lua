-- The history index of the live tail (tt_index), kept by the consumer for tracetags.history.

-- tt_index: append the entry ids of a batch to their traces' index keys, before the batch
-- is folded (a retried or redelivered batch appends again: readers drop the repeats).
--
-- KEYS[1 .. n]   ns:{pNN}:hx:<enc trace id>, one per trace of the batch
-- KEYS[n + 1]    ns:{pNN}:hx0 (hash: start, ttl_ms)
-- ARGV[1]        ttl_ms: each index key expires this long after its latest entry ('': never)
-- ARGV[2]        the batch's first entry id (the index's start, if it has none yet)
-- ARGV[2 + i]    ',<id>[,<id>...]': the entry ids of the trace of KEYS[i]
--
-- One call per batch: the APPENDs as a pipeline of their own cost the consumer ~3x its CPU
-- per event (redis-py packs each command in Python); here they cost Redis ~1 µs each.
local function tt_index(keys, argv)
    bind_runtime()
    local n = #keys - 1
    local ttl = argv[1]
    for i = 1, n do
        call('APPEND', keys[i], argv[2 + i])
        if ttl ~= '' then
            call('PEXPIRE', keys[i], ttl)
        end
    end
    local start = keys[n + 1]
    call('HSETNX', start, 'start', argv[2])
    if ttl ~= '' then
        call('HSET', start, 'ttl_ms', ttl)
    else
        call('HDEL', start, 'ttl_ms')
    end
    return n
end

HistoryIndex.tt_index = tt_index
