-- A[6] reservation id, A[7] actual tokens ('' to release). Returns {code, record,
-- status, actual, overage, states}: code -1 no such reservation for this subject, 0 no
-- longer pending (unchanged, states as they are), 1 settled or released now (states as
-- read before).
sweep()
local rid = A[6]
local rkey = BASE .. 'r:' .. rid
local r = redis.call('HMGET', rkey, 'rec', 'who', 'st', 'spec', 'debit', 'est', 'act', 'over')
-- 'denied': a denial recorded by an earlier version for its key; it holds nothing.
if not r[1] or r[2] ~= WHO or r[3] == 'denied' then return {-1} end
if r[3] ~= 'pending' then
  local now_states = load_all(parse_levels(split(r[4])))
  return {0, r[1], r[3], r[7] or '0', r[8] or '', now_states}
end
if A[7] == '' then
  local before = release_one(rid, '')
  return {1, r[1], 'released', '0', '', before}
end
local levels = parse_levels(split(r[4]))
local before = load_all(levels)
local actual, estimate = tonumber(A[7]), tonumber(r[6])
local over = ''
if actual <= estimate then
  if actual < estimate then refund_levels(levels, split(r[5]), estimate - actual, estimate) end
else
  over = charge_levels(levels, actual - estimate)
end
finish(rkey, rid, 'settled', actual)
redis.call('HSET', rkey, 'over', over)
emit(rid .. ':settle', 'settled', WHO, actual, rid, names_of(levels), nil, over,
     {'est', r[6]})
return {1, r[1], 'settled', A[7], over, before}
