-- Order keys of a page: values read per trace, MLflow's comparison, and the page's rows
-- selected from a set of matches.

local register_value = Stamps.register_value
local zmscore = Sets.zmscore

local function byte_lt(a, b)
    local n = #a
    if #b < n then
        n = #b
    end
    for i = 1, n do
        local x, y = string.byte(a, i), string.byte(b, i)
        if x ~= y then
            return x < y
        end
    end
    return #a < #b
end

-- Code-point order of UTF-8 strings is their byte order; Lua compares with strcoll, which
-- is byte order only in the C locale (Redis calls setlocale(LC_COLLATE, "")).
local function str_lt(a, b)
    if bytewise then
        return a < b
    end
    return byte_lt(a, b)
end

local ORDER_ZSETS = { s = 'ts', d = 'du', E = 'en' }

local function plain_register(raw, field)
    if not raw then
        return false
    end
    if field == 'i' then
        return raw
    end
    return register_value(raw) or false
end

local function order_fields(order)
    local fields, pos = {}, {}
    local function want(f)
        if not pos[f] then
            fields[#fields + 1] = f
            pos[f] = #fields
        end
    end
    for k = 1, #order do
        local f = order[k][2]
        if f == 'E' then
            want('s')
            want('d')
        else
            want(f)
        end
    end
    return fields, pos
end

local function key_value(spec, got, pos)
    local f = spec[2]
    if f == 'E' then
        local s = plain_register(got[pos['s']], 's')
        if not s then
            return false
        end
        local d = plain_register(got[pos['d']], 'd')
        return tonumber(s) + (d and tonumber(d) or 0)
    end
    local v = plain_register(got[pos[f]], f)
    if v and spec[1] == 'n' then
        return tonumber(v)
    end
    return v
end

local function full_key(ctx, no)
    local got = call('HMGET', ctx.prefix .. ':t:' .. no, unpack_(ctx.fields))
    local out = {}
    local order = ctx.order
    for k = 1, #order do
        out[k] = key_value(order[k], got, ctx.pos)
    end
    return out
end

local function strip_zeros(s)
    local t = string.gsub(s, '^0+', '')
    return t
end

local function base_cmp(kind, a, b)
    if a == b then
        return 0
    end
    if kind == 'n' then
        return a < b and -1 or 1
    end
    if kind == 'x' then
        local ad = #a > 0 and not find(a, '[^0-9]')
        local bd = #b > 0 and not find(b, '[^0-9]')
        if ad and bd then
            local x, y = strip_zeros(a), strip_zeros(b)
            if #x ~= #y then
                return #x < #y and -1 or 1
            end
            if x == y then
                return 0
            end
            return byte_lt(x, y) and -1 or 1
        elseif ad then
            return -1
        elseif bd then
            return 1
        end
    end
    return str_lt(a, b) and -1 or 1
end

-- Missing values sort last whatever the direction.
local function cmp_value(spec, a, b)
    if a == false then
        return b == false and 0 or 1
    end
    if b == false then
        return -1
    end
    local c = base_cmp(spec[1], a, b)
    if spec[3] == 0 then
        return -c
    end
    return c
end

local function cmp_keys(order, a, b)
    for k = 1, #order do
        local c = cmp_value(order[k], a[k], b[k])
        if c ~= 0 then
            return c
        end
    end
    return 0
end

local function sort_rows(ctx, rows)
    local order = ctx.order
    table.sort(rows, function(a, b)
        return cmp_keys(order, a[2], b[2]) < 0
    end)
end

-- The k-th order key of each member (ZMSCORE when a zset holds it, else HGET).
local function key_values(ctx, members, k)
    local spec = ctx.order[k]
    local zname = spec[1] == 'n' and ORDER_ZSETS[spec[2]]
    if zname then
        return zmscore(ctx.prefix .. ':' .. zname, members)
    end
    local out = {}
    local hash_prefix = ctx.prefix .. ':t:'
    for i = 1, #members do
        local v = plain_register(call('HGET', hash_prefix .. members[i], spec[2]), spec[2])
        if v and spec[1] == 'n' then
            v = tonumber(v)
        end
        out[i] = v
    end
    return out
end

-- The members grouped by their k-th order key (values[i] is members[i]'s), the groups in
-- that key's order, missing values last: each group a member alone with its value, or a
-- table of members (ties).  Table sorts with a Lua comparator are dear (a Lua call per
-- comparison), so only the distinct values are sorted, natively where the server's
-- collation allows (numbers, and strings under byte-order collation).
local function ordered_groups(ctx, k, members, values)
    local spec = ctx.order[k]
    local groups, distinct, nv, nulls = {}, {}, 0, nil
    for i = 1, #members do
        local v = values[i]
        if v == false then
            nulls = nulls or {}
            nulls[#nulls + 1] = members[i]
        else
            -- a group is its member until a second one shares the value
            local g = groups[v]
            if not g then
                groups[v] = members[i]
                nv = nv + 1
                distinct[nv] = v
            elseif type(g) == 'string' then
                groups[v] = { g, members[i] }
            else
                g[#g + 1] = members[i]
            end
        end
    end
    if spec[1] == 'n' or (spec[1] == 's' and bytewise) then
        table.sort(distinct)
        if spec[3] == 0 then
            for i = 1, floor(nv / 2) do
                distinct[i], distinct[nv - i + 1] = distinct[nv - i + 1], distinct[i]
            end
        end
    else
        table.sort(distinct, function(a, b)
            return cmp_value(spec, a, b) < 0
        end)
    end
    local out = {}
    for i = 1, nv do
        out[i] = groups[distinct[i]]
    end
    if nulls then
        out[nv + 1] = #nulls == 1 and nulls[1] or nulls
    end
    return out
end

-- A tie group of at most this many members is sorted by its full keys (one HMGET each and
-- a comparator); a larger one is grouped by the next key in turn, whose values are read
-- only for the groups the page reaches.
local SORTED_TIES_MAX = 16

-- Append to out the first rows of `group` (members tied on the first k order keys, or one
-- member) in order, until out holds `need` rows.
local function take_tied(ctx, group, k, need, out)
    if #out >= need then
        return
    end
    if type(group) == 'string' then
        out[#out + 1] = { group }
        return
    end
    if #group > SORTED_TIES_MAX and k < #ctx.order then
        local parts = ordered_groups(ctx, k + 1, group, key_values(ctx, group, k + 1))
        for i = 1, #parts do
            if #out >= need then
                return
            end
            take_tied(ctx, parts[i], k + 1, need, out)
        end
        return
    end
    local run = {}
    for i = 1, #group do
        run[i] = { group[i], full_key(ctx, group[i]) }
    end
    sort_rows(ctx, run)
    for i = 1, math.min(#run, need - #out) do
        out[#out + 1] = run[i]
    end
end

-- Append to out the first `need` rows {no[, key]} of members after the cursor, in order:
-- grouped by their first key's value, and a group of several members (ties) by the next
-- keys (take_tied).  values: the members' first order key, when the caller read it.
local function select_rows(ctx, members, need, out, values)
    local order, cursor = ctx.order, ctx.cursor
    local spec = order[1]
    values = values or key_values(ctx, members, 1)
    if cursor then
        local kept, kept_values = {}, {}
        for i = 1, #members do
            local v = values[i]
            local c = cmp_value(spec, v, cursor[1])
            if c > 0 or (c == 0 and cmp_keys(order, full_key(ctx, members[i]), cursor) > 0) then
                kept[#kept + 1] = members[i]
                kept_values[#kept] = v
            end
        end
        members, values = kept, kept_values
    end
    -- (out may hold rows already: `need` counts the rows appended here)
    local target = #out + need
    local groups = ordered_groups(ctx, 1, members, values)
    for i = 1, #groups do
        if #out >= target then
            return
        end
        take_tied(ctx, groups[i], 1, target, out)
    end
end

Ordering.cmp_keys = cmp_keys
Ordering.full_key = full_key
Ordering.select_rows = select_rows
Ordering.key_values = key_values
Ordering.sort_rows = sort_rows
Ordering.take_tied = take_tied
Ordering.plain_register = plain_register
Ordering.ORDER_ZSETS = ORDER_ZSETS
Ordering.cmp_value = cmp_value
Ordering.order_fields = order_fields
