-- Apply settlements (charges: positive amounts; refunds: negative) that no reservation
-- carried: the deferred ones a backend flushes when its hash tag is idle. One call, O(#KEYS)
-- GETs and SETs plus one TIME. Transcribes refilled/adjusted/ttl_ms of gateway/limits/model.py.
--
-- KEYS[i]  bucket keys, all under one hash tag
-- ARGV[1]  now in seconds from a test, or "" to read Redis TIME (production)
-- ARGV[2]  expiry margin in milliseconds
-- ARGV[3 ..]  the settlements, as `apply_carried` in bucket.lua reads them (no own buckets)
--
-- Returns the number of buckets written.

local now = clock_now(ARGV[1])
local margin = tonumber(ARGV[2])
local caps, rates = {}, {}
local levels, ats, changed = apply_carried(0, 3, now, caps, rates)
for i = 1, #KEYS do
  store(KEYS[i], levels[i], ats[i], caps[i], rates[i], margin)
end
publish_changes(changed, now)
return #KEYS
