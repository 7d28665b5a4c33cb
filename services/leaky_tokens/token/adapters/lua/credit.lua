-- A[6] grant id, A[7] quota key, A[8] tokens, A[9] level name, A[10] the granting ADMIN,
-- A[11] why.
-- Returns {changed, balance}; a repeated grant id returns the balance it left, a reverted
-- one (revert.lua) the balance its revert left: a grant reverted first never lands.
-- The grant record is "<balance>:<tokens>" (the tokens are what a revert takes back).
sweep()
local gkey = BASE .. 'g:' .. A[6]
local known = redis.call('GET', gkey)
if known then return {0, tonumber(string.match(known, '^(%d+)'))} end
local barred = redis.call('GET', BASE .. 'gx:' .. A[6])
if barred then return {0, tonumber(string.match(barred, ':(%d+)$'))} end
local lv = {key = A[7], bucket = false}
load(lv)
local tokens = tonumber(A[8])
if lv.bal + tokens >= 9007199254740992 then
  return redis.error_reply('the purchased balance would reach 2^53')
end
lv.bal = lv.bal + tokens
redis.call('HSET', lv.key, 'b', n(lv.bal))
redis.call('SET', gkey, n(lv.bal) .. ':' .. n(tokens), 'PX', TTL)
emit(A[6], 'credited', WHO, tokens, A[6], {A[9]}, A[11], '', {'by', A[10]})
return {1, lv.bal}
