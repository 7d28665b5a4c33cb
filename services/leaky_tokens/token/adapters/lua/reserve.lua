-- A[6] reservation id, A[7] idempotency key, A[8] estimate, A[9] levels,
-- A[10] ttl ms. Returns {replayed, record, id} as decide.lua (record carries the ttl),
-- or {-1} when another subject holds a reservation with this id.
sweep()
local rid, ikey, estimate = A[6], A[7], tonumber(A[8])
if ikey ~= '' then
  local earlier = redis.call('GET', ikey)
  if earlier then rid = earlier end
end
local known = redis.call('HMGET', BASE .. 'r:' .. rid, 'rec', 'who')
if known[1] then
  if known[2] == WHO then return {1, known[1], rid} end
  return {-1}
end
rid = A[6]
local levels = parse_levels(split(A[9]))
local before = load_all(levels)
local reason, named = decide_levels(levels, estimate)
local verdict = '1'
if reason then verdict = '0' end
local rec = table.concat({verdict, A[2], A[8], A[10], A[9], before}, SEP)
local rkey = BASE .. 'r:' .. rid
if reason then
  emit(rid, 'denied', WHO, estimate, rid, named, reason, '')
  if ikey ~= '' then  -- a retry with the same key hears the same denial
    redis.call('HSET', rkey, 'rec', rec, 'who', WHO, 'st', 'denied')
    redis.call('PEXPIRE', rkey, TTL)
    redis.call('SET', ikey, rid, 'PX', TTL)
  end
  return {0, rec, rid}
end
redis.call('HSET', rkey, 'rec', rec, 'who', WHO, 'st', 'pending', 'spec', A[9],
           'debit', debit_string(levels), 'est', A[8])
redis.call('ZADD', BASE .. 'rz', n(NOW + tonumber(A[10])), rid)
if ikey ~= '' then redis.call('SET', ikey, rid, 'PX', TTL) end
emit(rid, 'reserved', WHO, estimate, rid, named, nil, '')
return {0, rec, rid}
