-- Charge (positive amount) or refund (negative) every bucket of a reservation; one call,
-- O(#KEYS) commands (a GET and a SET each, plus one TIME). Transcribes refilled/adjusted/ttl_ms
-- of gateway/limits/model.py.
--
-- KEYS[i]  bucket keys, all under one hash tag
-- ARGV[1]  now in seconds from a test, or "" to read Redis TIME (production)
-- ARGV[2]  expiry margin in milliseconds
-- ARGV[3 + 3(i-1) ..]  capacity, rate (per second), amount for bucket i
--
-- Returns the number of buckets written.

local now = clock_now(ARGV[1])
local margin = tonumber(ARGV[2])

for i = 1, #KEYS do
  local base = 2 + 3 * (i - 1)
  local cap, rate, amount = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local level = refilled_level(KEYS[i], cap, rate, now)
  local after = math.min(cap, level - amount)
  local ttl = margin
  if after < cap then
    ttl = math.ceil((cap - after) / rate * 1000) + margin
  end
  redis.call('SET', KEYS[i], string.format('%.17g %.17g', after, now), 'PX', string.format('%d', ttl))
end
return #KEYS
