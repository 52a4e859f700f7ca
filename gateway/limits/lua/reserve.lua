-- Apply the settlements this call carries, then debit every bucket of one admission or none;
-- one call, O(#KEYS) commands (a GET and a SET each, plus one TIME). Transcribes
-- refilled/adjusted/need_ms/decide/ttl_ms of gateway/limits/model.py.
--
-- KEYS[1..n]  the admission's bucket keys, then buckets only settlements touch; one hash tag
-- ARGV[1]  now in seconds from a test, or "" to read Redis TIME (production)
-- ARGV[2]  max_wait in seconds
-- ARGV[3]  expiry margin in milliseconds
-- ARGV[4]  n, the admission's bucket count
-- ARGV[5]  floor: the share of each bucket a lower-priority request may not use (0: none);
--          with a floor, a request that does not fit above it now is refused, never queued
-- ARGV[6 + 3(i-1) ..]  capacity, rate (per second), amount for bucket i <= n
-- ARGV[6 + 3n ..]  carried settlements, as `apply_carried` in bucket.lua reads them
--
-- Returns {0, wait_ms, now, level_1, ..., level_n}: debited; the time (seconds) and the
--      levels after the debit, as strings
--      or {1, i, wait_ms, level_i}: refused, nothing debited; bucket i needs the longest
-- Settlements are written (and their changes published, see bucket.lua) either way. Numbers that are not integers travel as '%.17g'
-- strings: Redis truncates Lua numbers.

local now = clock_now(ARGV[1])
local max_wait_ms = tonumber(ARGV[2]) * 1000
local margin = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local floor = tonumber(ARGV[5])

local caps, rates, amounts = {}, {}, {}
for i = 1, n do
  local base = 5 + 3 * (i - 1)
  caps[i], rates[i], amounts[i] = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
end
local settled, settled_at, changed = apply_carried(n, 6 + 3 * n, now, caps, rates)
publish_changes(changed, now)

local levels = {}
local wait, worst = 0, 1
for i = 1, n do
  local level = level_at(i, settled, settled_at, caps, rates, now)
  local after = level - amounts[i] - floor * caps[i]
  local need = 0
  if amounts[i] > 0 and after < 0 then
    need = math.ceil(-after / rates[i] * 1000)
  end
  if need > wait then
    wait, worst = need, i
  end
  levels[i] = level
end

if wait > max_wait_ms or (floor > 0 and wait > 0) then
  for i, level in pairs(settled) do
    store(KEYS[i], level, settled_at[i], caps[i], rates[i], margin)
  end
  return {1, worst, wait, string.format('%.17g', levels[worst])}
end

local reply = {0, wait, string.format('%.17g', now)}
for i = 1, n do
  local after = levels[i] - amounts[i]
  store(KEYS[i], after, now, caps[i], rates[i], margin)
  reply[#reply + 1] = string.format('%.17g', after)
end
for i = n + 1, #KEYS do
  store(KEYS[i], settled[i], settled_at[i], caps[i], rates[i], margin)
end
return reply
