-- ShouldRateLimit's request counters: one request's descriptors in one all-or-nothing step.
-- KEYS[i]: the counter of hit i in its current window (one hash tag: one slot).
-- ARGV: limit, hits, enforced ("1"/"0"), ttl seconds, for each hit in turn.
-- Admitted when every enforced hit stays within its limit; then every hit is counted
-- (INCRBY, EXPIRE on creation), else nothing is. Returns {admitted, count read for hit 1, ...};
-- the adapter recomputes the statuses from those counts with the domain's count_step.
local running = {}
local read = {}
local admitted = 1
for i = 1, #KEYS do
  local key = KEYS[i]
  local before = running[key]
  if before == nil then
    before = tonumber(redis.call('GET', key) or '0')
    read[i] = before
  else
    read[i] = -1  -- a repeat: count_step takes it from the earlier hit
  end
  local hits = tonumber(ARGV[4 * i - 2])
  running[key] = before + hits
  if ARGV[4 * i - 1] == '1' and before + hits > tonumber(ARGV[4 * i - 3]) then
    admitted = 0
  end
end
if admitted == 1 then
  for i = 1, #KEYS do
    local hits = tonumber(ARGV[4 * i - 2])
    if hits > 0 then
      local now = redis.call('INCRBY', KEYS[i], hits)
      if now == hits then
        redis.call('EXPIRE', KEYS[i], ARGV[4 * i])
      end
    end
  end
end
read[#KEYS + 1] = admitted
return read
