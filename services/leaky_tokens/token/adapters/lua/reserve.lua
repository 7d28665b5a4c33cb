-- A[6] reservation id, A[7] idempotency key, A[8] estimate, A[9] levels,
-- A[10] ttl ms. Returns {replayed, record, id} as decide.lua (record carries the ttl),
-- {-1} when another subject holds a reservation with this id, or {-2, who, estimate} of
-- the request a key was first used for, when this one differs (refused, ADR 0031).
sweep()
local rid, ikey, estimate = A[6], A[7], tonumber(A[8])
if ikey ~= '' then
  local earlier = redis.call('GET', ikey)
  if earlier then
    local first = redis.call('HMGET', BASE .. 'r:' .. earlier, 'rec', 'who', 'est', 'st')
    if first[1] and first[4] ~= 'denied' then  -- as in decide.lua
      if first[2] ~= WHO or first[3] ~= A[8] then return {-2, first[2], first[3]} end
      return {1, first[1], earlier}
    end
  end
end
local known = redis.call('HMGET', BASE .. 'r:' .. rid, 'rec', 'who')
if known[1] then
  if known[2] == WHO then return {1, known[1], rid} end
  return {-1}
end
local levels = parse_levels(split(A[9]))
local before = load_all(levels)
local reason, named = decide_levels(levels, estimate)
local verdict = '1'
if reason then verdict = '0' end
local rec = table.concat({verdict, A[2], A[8], A[10], A[9], before}, SEP)
if reason then
  -- Nothing held and no key kept: a retry is decided afresh (ADR 0031).
  emit(rid, 'reserve_denied', WHO, estimate, rid, named, reason, '', {'rec', rec})
  return {0, rec, rid}
end
local rkey = BASE .. 'r:' .. rid
local expires = n(NOW + tonumber(A[10]))
redis.call('HSET', rkey, 'rec', rec, 'who', WHO, 'st', 'pending', 'spec', A[9],
           'debit', debit_string(levels), 'est', A[8])
redis.call('ZADD', BASE .. 'rz', expires, rid)
if ikey ~= '' then redis.call('SET', ikey, rid, 'PX', TTL) end
emit(rid, 'reserved', WHO, estimate, rid, named, nil, '', {'exp', expires})
return {0, rec, rid}
