-- Lower every bucket to at most a given level (upstream reports less room than we hold);
-- never raises one. One call, O(#KEYS) commands (a GET and, when lowered, a SET each, plus
-- one TIME). Transcribes refilled/capped/ttl_ms of gateway/limits/model.py.
--
-- KEYS[i]  bucket keys, all under one hash tag
-- ARGV[1]  now in seconds from a test, or "" to read Redis TIME (production)
-- ARGV[2]  expiry margin in milliseconds
-- ARGV[3 + 3(i-1) ..]  capacity, rate (per second), highest level allowed for bucket i
--
-- Returns the number of buckets lowered.

local now = clock_now(ARGV[1])
local margin = tonumber(ARGV[2])

local lowered, changed = 0, {}
for i = 1, #KEYS do
  local base = 2 + 3 * (i - 1)
  local cap, rate, ceiling = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local level = refilled_level(KEYS[i], cap, rate, now)
  if ceiling < level then
    store(KEYS[i], ceiling, now, cap, rate, margin)
    lowered = lowered + 1
    note_change(changed, i, level, ceiling)
  end
end
publish_changes(changed, now)
return lowered
