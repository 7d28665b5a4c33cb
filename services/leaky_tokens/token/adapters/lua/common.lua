-- Shared by every script: the mechanical port of the domain's arithmetic (ADR 0018, 0021).
-- Lua 5.1 numbers are doubles: every stored value is an integer below 2^53, so sums,
-- differences and comparisons are exact; the only products that may pass 2^53
-- (elapsed * leak, excess * scale) are compared before anything is subtracted or stored.
-- The arguments come as one string (fewer to encode on the client) split on \30 into A:
-- A[1] key base (hash tag included), A[2] now ms, A[3] sweep limit, A[4] record ttl ms,
-- A[5] the subject (tenant, user, org, provider, split on \31); KEYS[1] the stream.
local SEP = '\31'

local function split_on(s, sep)
  local out, i = {}, 1
  while true do
    local j = string.find(s, sep, i, true)
    if not j then out[#out + 1] = string.sub(s, i); return out end
    out[#out + 1] = string.sub(s, i, j - 1)
    i = j + 1
  end
end
local A = split_on(ARGV[1], '\30')
local BASE = A[1]
local NOW = tonumber(A[2])
local SWEEP_LIMIT = tonumber(A[3])
local TTL = A[4]
local WHO = A[5]
local STREAM = KEYS[1]

local function n(x) return string.format('%.0f', x) end

local function split(s)
  if s == '' then return {} end
  return split_on(s, SEP)
end

-- A level spec is five fields: name, key, then capacity, leak per ms, scale (a bucket)
-- or allowance, window start, window end (a quota).
local function parse_levels(fields)
  local levels = {}
  for i = 1, #fields, 5 do
    local lv = {name = fields[i], key = fields[i + 1], a = tonumber(fields[i + 2]),
                b = tonumber(fields[i + 3]), c = tonumber(fields[i + 4])}
    lv.bucket = string.sub(lv.name, -6) == 'bucket'
    levels[#levels + 1] = lv
  end
  return levels
end

local function load(lv)
  if lv.bucket then
    local v = redis.call('HMGET', lv.key, 'l', 't')
    lv.l, lv.t = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  else
    local v = redis.call('HMGET', lv.key, 's', 'u', 'b')
    lv.s, lv.u, lv.bal = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
  end
end

local function load_all(levels)
  local states = {}
  for _, lv in ipairs(levels) do
    load(lv)
    if lv.bucket then
      states[#states + 1] = n(lv.l); states[#states + 1] = n(lv.t); states[#states + 1] = '0'
    else
      states[#states + 1] = n(lv.s); states[#states + 1] = n(lv.u)
      states[#states + 1] = n(lv.bal)
    end
  end
  return table.concat(states, SEP)
end

local function store(lv)
  if lv.bucket then
    redis.call('HSET', lv.key, 'l', n(lv.l), 't', n(lv.t))
    -- Idle buckets go once empty (a missing bucket reads as empty); the division only sizes
    -- the TTL, with a minute of margin for rounding and for clocks that differ.
    redis.call('PEXPIRE', lv.key, n(math.ceil(lv.l / lv.b) + 60000))
  else
    redis.call('HSET', lv.key, 's', n(lv.s), 'u', n(lv.u), 'b', n(lv.bal))
  end
end

-- bucket.leak: a clock gone back leaks nothing and keeps the newer time.
local function leak(lv)
  if NOW > lv.t then
    local drained = (NOW - lv.t) * lv.b
    if drained >= lv.l then lv.l = 0 else lv.l = lv.l - drained end
    lv.t = NOW
  end
end

-- quota.roll: a newer window starts afresh; the balance is never touched.
local function roll(lv)
  if lv.b > lv.s then lv.s = lv.b; lv.u = 0 end
end

-- decision.decide for one level: returns nil when it fits (the new state kept aside in
-- lv.new and the debit in lv.debit), else the refusal's reason.
local function check(lv, tokens)
  if lv.bucket then
    leak(lv)
    if tokens > lv.a then return 'REQUEST_EXCEEDS_CAPACITY' end
    local need = tokens * lv.c
    local probe = need
    if probe < lv.c then probe = lv.c end
    if probe <= lv.a * lv.c - lv.l then
      lv.new = {lv.l + need}; lv.debit = {need, 0, 0}
      return nil
    end
    return 'RATE_LIMITED'
  end
  roll(lv)
  local available = lv.a - lv.u
  if available < 0 then available = 0 end
  local probe = tokens
  if probe < 1 then probe = 1 end
  if probe - math.min(probe, available) <= lv.bal then
    local from_window = math.min(tokens, available)
    local from_balance = tokens - from_window
    lv.new = {lv.u + from_window, lv.bal - from_balance}
    lv.debit = {lv.s, from_window, from_balance}
    return nil
  end
  return 'QUOTA_EXHAUSTED'
end

local SEVERITY = {REQUEST_EXCEEDS_CAPACITY = 1, QUOTA_EXHAUSTED = 2, RATE_LIMITED = 3}

-- Every level or none: returns (reason, refusing level names) or (nil, all level names).
local function decide_levels(levels, tokens)
  local refused, names, worst = {}, {}, nil
  for _, lv in ipairs(levels) do
    names[#names + 1] = lv.name
    local reason = check(lv, tokens)
    if reason then
      refused[#refused + 1] = lv.name
      if worst == nil or SEVERITY[reason] < SEVERITY[worst] then worst = reason end
    end
  end
  if worst then return worst, refused end
  for _, lv in ipairs(levels) do
    if lv.bucket then lv.l = lv.new[1] else lv.u, lv.bal = lv.new[1], lv.new[2] end
    store(lv)
  end
  return nil, names
end

local function debit_string(levels)
  local out = {}
  for _, lv in ipairs(levels) do
    for k = 1, 3 do out[#out + 1] = n(lv.debit[k]) end
  end
  return table.concat(out, SEP)
end

local function names_of(levels)
  local out = {}
  for _, lv in ipairs(levels) do out[#out + 1] = lv.name end
  return out
end

-- decision.refund: `tokens` of a debit (three numbers per level) back where they came from.
local function refund_levels(levels, debit, tokens, total)
  for i, lv in ipairs(levels) do
    local d1, d2, d3 = tonumber(debit[3 * i - 2]), tonumber(debit[3 * i - 1]),
                       tonumber(debit[3 * i])
    load(lv)
    if lv.bucket then
      local give = d1
      if tokens ~= total then give = math.min(d1, tokens * lv.c) end
      leak(lv)
      if give >= lv.l then lv.l = 0 else lv.l = lv.l - give end
    else
      local back = math.min(tokens, d2 + d3)
      local from_balance = math.min(back, d3)
      roll(lv)
      if lv.s == d1 then lv.u = lv.u - math.min(lv.u, back - from_balance) end
      lv.bal = lv.bal + from_balance
    end
    store(lv)
  end
end

-- decision.charge: an excess taken as far as each level has room; returns the overage.
local function charge_levels(levels, excess)
  local over = {}
  for _, lv in ipairs(levels) do
    load(lv)
    if lv.bucket then
      leak(lv)
      local want = excess * lv.c
      local free = lv.a * lv.c - lv.l
      local got = want
      if want >= free then got = math.max(0, free) end
      lv.l = lv.l + got
      if got < want then
        -- ceil((want - got) / scale) = excess - floor(got / scale); fmod is exact.
        over[#over + 1] = lv.name .. '=' .. n(excess - (got - math.fmod(got, lv.c)) / lv.c)
      end
    else
      roll(lv)
      local room = lv.a - lv.u
      if room < 0 then room = 0 end
      local from_window = math.min(excess, room)
      local from_balance = math.min(excess - from_window, lv.bal)
      lv.u, lv.bal = lv.u + from_window, lv.bal - from_balance
      local left = excess - from_window - from_balance
      if left > 0 then over[#over + 1] = lv.name .. '=' .. n(left) end
    end
    store(lv)
  end
  return table.concat(over, ',')
end

-- `extra` (optional) holds more field/value pairs: a denial's record ('rec', from which the
-- service rebuilds every level's status), a settlement's estimate ('est'), a reservation's
-- deadline ('exp'), a grant's ADMIN ('by'). Without it, the common case, no table is built.
local function emit(id, kind, who, tokens, cause, levels, why, over, extra)
  if extra == nil then
    redis.call('XADD', STREAM, '*', 'id', id, 'kind', kind, 'at', n(NOW), 'who', who,
               'tok', n(tokens), 'cause', cause, 'lv', table.concat(levels, ','),
               'why', why or '', 'over', over or '')
    return
  end
  local args = {'XADD', STREAM, '*', 'id', id, 'kind', kind, 'at', n(NOW), 'who', who,
                'tok', n(tokens), 'cause', cause, 'lv', table.concat(levels, ','),
                'why', why or '', 'over', over or ''}
  for _, v in ipairs(extra) do args[#args + 1] = v end
  redis.call(unpack(args))
end

-- reservation.release (or the end of settle): the reservation leaves PENDING.
local function finish(rkey, rid, status, actual)
  redis.call('HSET', rkey, 'st', status, 'act', n(actual))
  redis.call('PEXPIRE', rkey, TTL)
  redis.call('ZREM', BASE .. 'rz', rid)
end

local function release_one(rid, why)
  local rkey = BASE .. 'r:' .. rid
  local r = redis.call('HMGET', rkey, 'st', 'spec', 'debit', 'est', 'who')
  if r[1] ~= 'pending' then redis.call('ZREM', BASE .. 'rz', rid); return nil end
  local levels = parse_levels(split(r[2]))
  local before = load_all(levels)
  local estimate = tonumber(r[4])
  refund_levels(levels, split(r[3]), estimate, estimate)
  finish(rkey, rid, 'released', 0)
  emit(rid .. ':release', 'released', r[5], estimate, rid, names_of(levels), why, '')
  return before
end

-- reservation.expire, bounded per call; the sweeper task calls sweep.lua for the rest.
local function sweep()
  local due = redis.call('ZRANGEBYSCORE', BASE .. 'rz', '-inf', n(NOW), 'LIMIT', 0, SWEEP_LIMIT)
  for _, rid in ipairs(due) do release_one(rid, 'expired') end
  return #due
end
