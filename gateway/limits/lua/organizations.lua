-- Share which organisation each key belongs to: record this instance's new mappings, set
-- the fleet's primary organisation (the first one any instance learned) if none is set, and
-- return the primary and the whole mapping. Both keys share one hash tag: one Cluster slot.
--
-- KEYS[1]  cgw:{orgs}          hash: key scope -> organisation id
-- KEYS[2]  cgw:{orgs}:primary  the primary organisation id
-- ARGV[1]  time to live in milliseconds (refreshed by every call)
-- ARGV[2..]  key scope, organisation id, ... (this instance's new mappings, oldest first)
--
-- Returns {primary or nil, {key scope, organisation id, ...}}

local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if #ARGV >= 3 then
  redis.call('SET', KEYS[2], ARGV[3], 'NX')
end
local primary = redis.call('GET', KEYS[2])
if primary then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return {primary, redis.call('HGETALL', KEYS[1])}
