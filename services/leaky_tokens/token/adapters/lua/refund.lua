-- A[6] decision id, A[7] tokens, A[8] why (may be empty). Returns the tokens given back, -1 when none were
-- (unknown or expired decision, another subject's, a denial, or refunded before).
sweep()
local did = A[6]
local dkey = BASE .. 'd:' .. did
local d = redis.call('HMGET', dkey, 'rf', 'who', 'spec', 'debit', 'tok', 'ik')
if d[1] ~= '0' or d[2] ~= WHO then return -1 end
local total = tonumber(d[5])
local tokens = math.min(tonumber(A[7]), total)
local levels = parse_levels(split(d[3]))
refund_levels(levels, split(d[4]), tokens, total)
redis.call('HSET', dkey, 'rf', 'refunded')  -- once, even for zero tokens
-- Nothing was served: the client's retry with the same key is a new decision (ADR 0031).
if d[6] and d[6] ~= '' and redis.call('GET', d[6]) == did then redis.call('DEL', d[6]) end
emit(did .. ':refund', 'refunded', WHO, tokens, did, names_of(levels), A[8], '')
return tokens
