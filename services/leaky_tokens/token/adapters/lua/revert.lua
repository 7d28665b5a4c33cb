-- A[6] grant id, A[7] quota key, A[8] level name, A[9] why.
-- Takes the grant's tokens (at most the balance left) back out, once, and remembers it:
-- returns {changed, reverted, balance}; a repeat returns the first answer. An unknown grant
-- takes nothing, and credit.lua then refuses that grant id (the revert came first).
sweep()
local xkey = BASE .. 'gx:' .. A[6]
local done = redis.call('GET', xkey)
if done then
  local taken, left = string.match(done, '^(%d+):(%d+)$')
  return {0, tonumber(taken), tonumber(left)}
end
local lv = {key = A[7], bucket = false}
load(lv)
local taken = 0
local grant = redis.call('GET', BASE .. 'g:' .. A[6])
if grant then
  taken = math.min(tonumber(string.match(grant, ':(%d+)$')) or 0, lv.bal)
end
if taken > 0 then
  lv.bal = lv.bal - taken
  redis.call('HSET', lv.key, 'b', n(lv.bal))
end
redis.call('SET', xkey, n(taken) .. ':' .. n(lv.bal), 'PX', TTL)
emit(A[6] .. ':revert', 'reverted', WHO, taken, A[6], {A[8]}, A[9], '')
return {1, taken, lv.bal}
