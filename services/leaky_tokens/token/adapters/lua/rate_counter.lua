-- ShouldRateLimit's request counters: each request's descriptors in one all-or-nothing step,
-- any number of requests per call (a batch runs as one script: one EVALSHA, not one each).
-- KEYS: every request's counters in turn, each the counter of one hit in its current window
-- (a cluster call carries one request: one hash tag, one slot).
-- ARGV: per request, its number of hits n, then limit, hits, enforced ("1"/"0"), ttl seconds
-- for each of its n hits.
-- A request is admitted when every enforced hit stays within its limit; then every hit is
-- counted (INCRBY, EXPIRE on creation), else nothing is. Returns one reply per request,
-- {count read for hit 1, ..., admitted}, or that request's error (the others still run);
-- the adapter recomputes the statuses from those counts with the domain's count_step.
local function count(k0, n, a0)
  local running = {}
  local read = {}
  local admitted = 1
  for i = 1, n do
    local key = KEYS[k0 + i]
    local before = running[key]
    if before == nil then
      before = tonumber(redis.call('GET', key) or '0')
      read[i] = before
    else
      read[i] = -1  -- a repeat: count_step takes it from the earlier hit
    end
    local hits = tonumber(ARGV[a0 + 4 * i - 2])
    running[key] = before + hits
    if ARGV[a0 + 4 * i - 1] == '1' and before + hits > tonumber(ARGV[a0 + 4 * i - 3]) then
      admitted = 0
    end
  end
  if admitted == 1 then
    for i = 1, n do
      local hits = tonumber(ARGV[a0 + 4 * i - 2])
      if hits > 0 then
        local now = redis.call('INCRBY', KEYS[k0 + i], hits)
        if now == hits then
          redis.call('EXPIRE', KEYS[k0 + i], ARGV[a0 + 4 * i])
        end
      end
    end
  end
  read[n + 1] = admitted
  return read
end

local replies = {}
local k, a = 0, 1
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  local ok, reply = pcall(count, k, n, a)
  if not ok and type(reply) ~= 'table' then  -- pcall hands over redis.call's error as text
    reply = {err = tostring(reply)}
  end
  replies[#replies + 1] = reply
  k, a = k + n, a + 1 + 4 * n
end
return replies
