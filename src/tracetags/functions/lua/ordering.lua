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

-- The first order key of each member (ZMSCORE when a zset holds it, else HGET).
local function primary_values(ctx, members)
    local spec = ctx.order[1]
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

-- Append to out the first `need` rows {no[, key]} of members after the cursor, in order.
-- Table sorts with a Lua comparator are dear (a Lua call per comparison), so the members
-- are grouped by their first key's value, the distinct values sorted natively (numbers, and
-- strings under byte-order collation), and only a group of several members (ties) gets its
-- full keys read and sorted.
local function select_rows(ctx, members, need, out)
    local order, cursor = ctx.order, ctx.cursor
    local spec = order[1]
    local primary = primary_values(ctx, members)
    local groups, values, nv, nulls = {}, {}, 0, {}
    for i = 1, #members do
        local v = primary[i]
        local keep = true
        if cursor then
            local c = cmp_value(spec, v, cursor[1])
            if c < 0 then
                keep = false
            elseif c == 0 then
                keep = cmp_keys(order, full_key(ctx, members[i]), cursor) > 0
            end
        end
        if keep then
            if v == false then
                nulls[#nulls + 1] = members[i]
            else
                -- a group is its member until a second one shares the value (ties are rare)
                local g = groups[v]
                if not g then
                    groups[v] = members[i]
                    nv = nv + 1
                    values[nv] = v
                elseif type(g) == 'string' then
                    groups[v] = { g, members[i] }
                else
                    g[#g + 1] = members[i]
                end
            end
        end
    end
    if spec[1] == 'n' or (spec[1] == 's' and bytewise) then
        table.sort(values)
        if spec[3] == 0 then
            for i = 1, floor(nv / 2) do
                values[i], values[nv - i + 1] = values[nv - i + 1], values[i]
            end
        end
    else
        table.sort(values, function(a, b)
            return cmp_value(spec, a, b) < 0
        end)
    end
    local taken = 0
    local function take(group)
        if type(group) == 'string' then
            taken = taken + 1
            out[#out + 1] = { group }
            return
        end
        local run = {}
        for k = 1, #group do
            run[k] = { group[k], full_key(ctx, group[k]) }
        end
        sort_rows(ctx, run)
        for k = 1, math.min(#run, need - taken) do
            out[#out + 1] = run[k]
        end
        taken = taken + math.min(#run, need - taken)
    end
    for i = 1, nv do
        if taken >= need then
            return
        end
        take(groups[values[i]])
    end
    if taken < need and #nulls > 0 then
        take(nulls)
    end
end

Ordering.cmp_keys = cmp_keys
Ordering.full_key = full_key
Ordering.select_rows = select_rows
Ordering.sort_rows = sort_rows
Ordering.plain_register = plain_register
Ordering.ORDER_ZSETS = ORDER_ZSETS
Ordering.cmp_value = cmp_value
Ordering.order_fields = order_fields
