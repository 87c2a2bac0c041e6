-- The Functions: their names come from the generated header (Python spells them too).
redis.register_function(LOOKUP_FUNCTION, Lookups.tt_lookup)
redis.register_function {
    function_name = QUERY_FUNCTION, callback = Query.tt_query, flags = { 'no-writes' },
}
redis.register_function(APPLY_FUNCTION, Apply.tt_apply)
redis.register_function(TRIM_FUNCTION, Trim.tt_trim)
redis.register_function(INDEX_FUNCTION, HistoryIndex.tt_index)
