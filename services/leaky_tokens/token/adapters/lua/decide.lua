-- A[6] decision id, A[7] idempotency key ('' for none), A[8] tokens, A[9] levels,
-- A[10] '1' to keep the decision for a refund. Returns {replayed, record, decision id}:
-- record = verdict, now, tokens, ttl 0, then the level specs and the states as read; the
-- service replays decision.decide on it for the full outcome. A key first used for another
-- request returns {-1, who, tokens} of that request (refused, ADR 0031).
sweep()
local did, ikey, tokens = A[6], A[7], tonumber(A[8])
if ikey ~= '' then
  local earlier = redis.call('GET', ikey)
  if earlier then
    local d = redis.call('HMGET', BASE .. 'd:' .. earlier, 'rec', 'who', 'tok', 'rf')
    if d[1] and d[4] ~= 'denied' then  -- 'denied': kept by an earlier version; decide afresh
      if d[2] ~= WHO or d[3] ~= A[8] then return {-1, d[2], d[3]} end
      return {1, d[1], earlier}
    end
  end
end
local spec = split(A[9])
local levels = parse_levels(spec)
local before = load_all(levels)
local reason, named = decide_levels(levels, tokens)
local verdict = '1'
if reason then verdict = '0' end
local rec = table.concat({verdict, A[2], A[8], '0', A[9], before}, SEP)
if reason then
  -- A denial changed nothing and keeps no key: a retry is decided afresh (ADR 0031). Its
  -- event carries the record, from which every level's status is rebuilt when relayed.
  emit(did, 'denied', WHO, tokens, did, named, reason, '', {'rec', rec})
  return {0, rec, did}
end
local dkey = BASE .. 'd:' .. did
-- A record only where a refund or a replay will need it (memory per decision otherwise).
if ikey ~= '' or A[10] == '1' then
  redis.call('HSET', dkey, 'rec', rec, 'who', WHO, 'rf', '0', 'spec', A[9],
             'debit', debit_string(levels), 'tok', A[8], 'ik', ikey)
  redis.call('PEXPIRE', dkey, TTL)
end
if ikey ~= '' then redis.call('SET', ikey, did, 'PX', TTL) end
emit(did, 'allowed', WHO, tokens, did, named, nil, '')
return {0, rec, did}
