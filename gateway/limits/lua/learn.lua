-- Merge one gateway instance's lesson into the fleet's learned figures of one model group
-- (input log-ratio, output tokens, their square, cached input log-ratio: as many as the call
-- sends); one call, a GET and a SET. Transcribes `merged` of
-- gateway/limits/learning.py: a figure the fleet does not know takes the instance's seed,
-- a known one moves toward the batch's clipped mean by max(1 - (1 - alpha)^k, k / (n + k)).
-- Needs no clock: the key expires (PX) on Redis's own.
--
-- KEYS[1]  the group's learning key
-- ARGV[1]  time to live in milliseconds, renewed by every call
-- ARGV[2]  alpha, the least weight of a batch of one sample
-- ARGV[3]  most samples a figure counts
-- ARGV[4 + 6(i-1) ..]  for figure i (in `learning._BOUNDS` order): low and high bound, the
--          seed's value and count, the new samples' total and count
--
-- Stored and returned: {value_1, count_1, value_2, count_2, ...} (the key holds them joined
-- by spaces; a figure a stored key lacks is unknown). Values travel as '%.17g' strings:
-- Redis truncates Lua numbers.

local ttl, alpha, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local stored = {}
local text = redis.call('GET', KEYS[1])
if text then
  for word in string.gmatch(text, '%S+') do
    stored[#stored + 1] = tonumber(word)
  end
end

local reply = {}
for i = 1, (#ARGV - 3) / 6 do
  local base = 3 + 6 * (i - 1)
  local low, high = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local seed, seeds = tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local total, new = tonumber(ARGV[base + 5]), tonumber(ARGV[base + 6])
  local value, count = stored[2 * i - 1] or 0, stored[2 * i] or 0
  if count <= 0 and seeds > 0 then
    value, count = math.max(low, math.min(high, seed)), math.min(seeds, cap)
  elseif new > 0 then
    local k = math.min(new, cap)
    local mean = math.max(low, math.min(high, total / new))
    local weight = math.max(1 - (1 - alpha) ^ k, k / (count + k))
    value, count = value + weight * (mean - value), math.min(count + k, cap)
  end
  reply[2 * i - 1], reply[2 * i] = string.format('%.17g', value), string.format('%d', count)
end
redis.call('SET', KEYS[1], table.concat(reply, ' '), 'PX', ttl)
return reply
