-- Shared prelude of every limiter script (prepended by redis_backend.py before loading):
-- the fleet clock, a bucket's stored state and refilled level, writing a bucket back, and
-- the settlements a call carries. Transcribes `refilled`, `adjusted` and `ttl_ms` of
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

-- The level stored at `key` and the time it was written; nil for a missing key (a full
-- bucket: keys expire only once they would be full).
local function stored_state(key)
  local stored = redis.call('GET', key)
  if not stored then
    return nil, nil
  end
  local space = string.find(stored, ' ', 1, true)
  return tonumber(string.sub(stored, 1, space - 1)), tonumber(string.sub(stored, space + 1))
end

-- The level `was` written at `at`, refilled at `rate` until `now`, capped at `cap`.
local function refilled(was, at, cap, rate, now)
  return math.min(cap, was + math.max(0, now - at) * rate)
end

-- The level of the bucket at `key` now.
local function refilled_level(key, cap, rate, now)
  local was, at = stored_state(key)
  if not was then
    return cap
  end
  return refilled(was, at, cap, rate, now)
end

-- Write `level` as of `at`; the key expires once the bucket would be full again.
local function store(key, level, at, cap, rate, margin)
  local ttl = margin
  if level < cap then
    ttl = math.ceil((cap - level) / rate * 1000) + margin
  end
  redis.call('SET', key, string.format('%.17g %.17g', level, at), 'PX', string.format('%d', ttl))
end

-- Apply the settlements this call carries, in order, each at its own time, exactly as one
-- adjust each would. Keys 1..n already have caps[i] and rates[i] (the call's own buckets);
-- ARGV from `p` holds:
--   m, then capacity and rate of KEYS[n+1 .. n+m] (buckets only settlements touch);
--   e, then e settlements, each: time ("" = now), k, then k pairs (key index, amount).
-- Returns the touched keys' levels and times by key index (write them back with `store`).
local function apply_carried(n, p, now, caps, rates)
  local m = tonumber(ARGV[p])
  p = p + 1
  for j = n + 1, n + m do
    caps[j], rates[j] = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
    p = p + 2
  end
  local levels, ats = {}, {}
  local e = tonumber(ARGV[p])
  p = p + 1
  for _ = 1, e do
    local t, k = tonumber(ARGV[p]) or now, tonumber(ARGV[p + 1])
    p = p + 2
    for _ = 1, k do
      local i, amount = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
      p = p + 2
      local level = caps[i]
      if levels[i] then
        level = refilled(levels[i], ats[i], caps[i], rates[i], t)
      else
        local was, at = stored_state(KEYS[i])
        if was then
          level = refilled(was, at, caps[i], rates[i], t)
        end
      end
      levels[i], ats[i] = math.min(caps[i], level - amount), t
    end
  end
  return levels, ats
end
