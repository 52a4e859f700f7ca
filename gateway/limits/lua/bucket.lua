-- Shared prelude of every limiter script (prepended by redis_backend.py before loading):
-- the fleet clock and the refilled level of one bucket. Transcribes `refilled` of
-- gateway/limits/model.py; the contract suite proves the two agree.

-- Seconds: an explicit time from a test, or Redis TIME (one clock for the whole fleet).
local function clock_now(arg)
  local now = tonumber(arg)
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1e6
  end
  return now
end

-- The level of the bucket at `key` now: stored "level at" refilled at `rate`, capped at
-- `cap`; a missing key is a full bucket (keys expire only once they would be full).
local function refilled_level(key, cap, rate, now)
  local stored = redis.call('GET', key)
  if not stored then
    return cap
  end
  local space = string.find(stored, ' ', 1, true)
  local was, at = tonumber(string.sub(stored, 1, space - 1)), tonumber(string.sub(stored, space + 1))
  return math.min(cap, was + math.max(0, now - at) * rate)
end

