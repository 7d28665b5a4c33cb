-- ARGV[6] reservation id, ARGV[7] idempotency key, ARGV[8] estimate, ARGV[9] levels,
-- ARGV[10] ttl ms. Returns {replayed, record, id} as decide.lua (record carries the ttl),
-- or {-1} when another subject holds a reservation with this id.
sweep()
local rid, ikey, estimate = ARGV[6], ARGV[7], tonumber(ARGV[8])
if ikey ~= '' then
  local earlier = redis.call('GET', ikey)
  if earlier then rid = earlier end
end
local known = redis.call('HMGET', BASE .. 'r:' .. rid, 'rec', 'who')
if known[1] then
  if known[2] == WHO then return {1, known[1], rid} end
  return {-1}
end
rid = ARGV[6]
local levels = parse_levels(split(ARGV[9]))
local before = load_all(levels)
local reason, named = decide_levels(levels, estimate)
local verdict = '1'
if reason then verdict = '0' end
local rec = table.concat({verdict, ARGV[2], ARGV[8], ARGV[10], ARGV[9], before}, SEP)
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
redis.call('HSET', rkey, 'rec', rec, 'who', WHO, 'st', 'pending', 'spec', ARGV[9],
           'debit', debit_string(levels), 'est', ARGV[8])
redis.call('ZADD', BASE .. 'rz', n(NOW + tonumber(ARGV[10])), rid)
if ikey ~= '' then redis.call('SET', ikey, rid, 'PX', TTL) end
emit(rid, 'reserved', WHO, estimate, rid, named, nil, '')
return {0, rec, rid}
