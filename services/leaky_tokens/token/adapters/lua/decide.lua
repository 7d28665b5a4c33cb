-- A[6] decision id, A[7] idempotency key ('' for none), A[8] tokens, A[9] levels,
-- A[10] '1' to keep the decision for a refund. Returns {replayed, record, decision id}:
-- record = verdict, now, tokens, ttl 0, then the level specs and the states as read; the
-- service replays decision.decide on it for the full outcome.
sweep()
local did, ikey, tokens = A[6], A[7], tonumber(A[8])
if ikey ~= '' then
  local earlier = redis.call('GET', ikey)
  if earlier then
    local rec = redis.call('HGET', BASE .. 'd:' .. earlier, 'rec')
    if rec then return {1, rec, earlier} end
  end
end
local spec = split(A[9])
local levels = parse_levels(spec)
local before = load_all(levels)
local reason, named = decide_levels(levels, tokens)
local verdict = '1'
if reason then verdict = '0' end
local rec = table.concat({verdict, A[2], A[8], '0', A[9], before}, SEP)
local dkey = BASE .. 'd:' .. did
-- A record only where a refund or a replay will need it (memory per decision otherwise).
if reason then
  if ikey ~= '' then redis.call('HSET', dkey, 'rec', rec, 'who', WHO, 'rf', 'denied') end
elseif ikey ~= '' or A[10] == '1' then
  redis.call('HSET', dkey, 'rec', rec, 'who', WHO, 'rf', '0', 'spec', A[9],
             'debit', debit_string(levels), 'tok', A[8])
end
if ikey ~= '' then
  redis.call('PEXPIRE', dkey, TTL)
  redis.call('SET', ikey, did, 'PX', TTL)
elseif not reason and A[10] == '1' then
  redis.call('PEXPIRE', dkey, TTL)
end
local kind = 'allowed'
if reason then kind = 'denied' end
emit(did, kind, WHO, tokens, did, named, reason, '')
return {0, rec, did}
