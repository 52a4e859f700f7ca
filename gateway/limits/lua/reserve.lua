-- Debit every bucket of one admission or none; one call, O(#KEYS) commands (a GET and a
-- SET each, plus one TIME). Transcribes refilled/need_ms/decide/ttl_ms of gateway/limits/model.py.
--
-- KEYS[i]  bucket keys, all under one hash tag
-- ARGV[1]  now in seconds from a test, or "" to read Redis TIME (production)
-- ARGV[2]  max_wait in seconds
-- ARGV[3]  expiry margin in milliseconds
-- ARGV[4 + 3(i-1) ..]  capacity, rate (per second), amount for bucket i
--
-- Returns {0, wait_ms, level_1, ..., level_n}: debited; levels after the debit, as strings
--      or {1, i, wait_ms, level_i}: refused, nothing debited; bucket i needs the longest
-- Numbers that are not integers travel as '%.17g' strings: Redis truncates Lua numbers.

local now = clock_now(ARGV[1])
local max_wait_ms = tonumber(ARGV[2]) * 1000
local margin = tonumber(ARGV[3])

local caps, rates, amounts, levels = {}, {}, {}, {}
local wait, worst = 0, 1
for i = 1, #KEYS do
  local base = 3 + 3 * (i - 1)
  local cap, rate, amount = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local level = refilled_level(KEYS[i], cap, rate, now)
  local after = level - amount
  local need = 0
  if amount > 0 and after < 0 then
    need = math.ceil(-after / rate * 1000)
  end
  if need > wait then
    wait, worst = need, i
  end
  caps[i], rates[i], amounts[i], levels[i] = cap, rate, amount, level
end

if wait > max_wait_ms then
  return {1, worst, wait, string.format('%.17g', levels[worst])}
end

local reply = {0, wait}
for i = 1, #KEYS do
  local after = levels[i] - amounts[i]
  local ttl = margin
  if after < caps[i] then
    ttl = math.ceil((caps[i] - after) / rates[i] * 1000) + margin
  end
  redis.call('SET', KEYS[i], string.format('%.17g %.17g', after, now), 'PX', string.format('%d', ttl))
  reply[#reply + 1] = string.format('%.17g', after)
end
return reply
