-- Share the tenants' spend: add this instance's charges to the fleet's ledger, drop the
-- entries of periods that are over, and return every entry. One key: one Cluster slot.
--
-- KEYS[1]  cgw:{spend}  hash: "<tenant>|<budget>|<period>" -> micro-dollars or tokens
-- ARGV[1]  time to live in milliseconds (refreshed by every call)
-- ARGV[2]  n, the number of current period names that follow
-- ARGV[3 .. 2 + n]  the current period names (e.g. 2026-12-05, 2026-12)
-- ARGV[3 + n ..]  entry, amount, ... (this instance's charges since its last call)
--
-- Returns {entry, total, ...} for the current periods

local n = tonumber(ARGV[2])
local current = {}
for i = 3, 2 + n do
  current[ARGV[i]] = true
end
for i = 3 + n, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
local all = redis.call('HGETALL', KEYS[1])
local kept = {}
for i = 1, #all, 2 do
  local period = string.match(all[i], '|([^|]*)$')
  if current[period] then
    kept[#kept + 1] = all[i]
    kept[#kept + 1] = all[i + 1]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
if #kept > 0 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
end
return kept
