-- Shared prelude of every limiter script (prepended by redis_backend.py before loading):
-- the fleet clock, a bucket's refilled level, writing a bucket back, and
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

-- The level `was` written at `at`, refilled at `rate` until `now`, capped at `cap`.
local function refilled(was, at, cap, rate, now)
  return math.min(cap, was + math.max(0, now - at) * rate)
end

-- The level of the bucket at `key` now: its stored "level at" refilled; a missing key is a
-- full bucket (keys expire only once they would be full).
local function refilled_level(key, cap, rate, now)
  local stored = redis.call('GET', key)
  if not stored then
    return cap
  end
  local space = string.find(stored, ' ', 1, true)
  local was, at = tonumber(string.sub(stored, 1, space - 1)), tonumber(string.sub(stored, space + 1))
  return refilled(was, at, cap, rate, now)
end

-- Key i's level at `t`: from `levels[i]` written at `ats[i]` when this call already touched
-- it, else from Redis.
local function level_at(i, levels, ats, caps, rates, t)
  if levels[i] then
    return refilled(levels[i], ats[i], caps[i], rates[i], t)
  end
  return refilled_level(KEYS[i], caps[i], rates[i], t)
end

-- Write `level` as of `at`; the key expires once the bucket would be full again.
local function store(key, level, at, cap, rate, margin)
  local ttl = margin
  if level < cap then
    ttl = math.ceil((cap - level) / rate * 1000) + margin
  end
  redis.call('SET', key, string.format('%.17g %.17g', level, at), 'PX', string.format('%d', ttl))
end

-- Record a change of key i's level from `was` to `is` when it involves debt (requests are
-- queued on the bucket, or will be): the instances re-time their waiters by it.
local function note_change(changed, i, was, is)
  if was < 0 or is < 0 then
    changed[i] = (changed[i] or 0) + (is - was)
  end
end

-- Tell every instance (channel cgw:changes) how each noted bucket's level moved, and when:
-- "<now> <key> <delta> <key> <delta> ...". Waiters that reserved before `now` shift by it.
local function publish_changes(changed, now)
  local parts = {string.format('%.17g', now)}
  for i, delta in pairs(changed) do
    parts[#parts + 1] = KEYS[i]
    parts[#parts + 1] = string.format('%.17g', delta)
  end
  if #parts > 1 then
    redis.call('PUBLISH', 'cgw:changes', table.concat(parts, ' '))
  end
end

-- Apply the settlements this call carries, in order, each at its own time, exactly as one
-- adjust each would. Keys 1..n already have caps[i] and rates[i] (the call's own buckets);
-- ARGV from `p` holds:
--   m, then capacity and rate of KEYS[n+1 .. n+m] (buckets only settlements touch);
--   e, then e settlements, each: time ("" = now), k, then k pairs (key index, amount).
-- Returns the touched keys' levels and times by key index (write them back with `store`),
-- and the changes that involve debt (for `publish_changes`).
local function apply_carried(n, p, now, caps, rates)
  local m = tonumber(ARGV[p])
  p = p + 1
  for j = n + 1, n + m do
    caps[j], rates[j] = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
    p = p + 2
  end
  local levels, ats, changed = {}, {}, {}
  local e = tonumber(ARGV[p])
  p = p + 1
  for _ = 1, e do
    local t, k = tonumber(ARGV[p]) or now, tonumber(ARGV[p + 1])
    p = p + 2
    for _ = 1, k do
      local i, amount = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
      p = p + 2
      local level = level_at(i, levels, ats, caps, rates, t)
      levels[i], ats[i] = math.min(caps[i], level - amount), t
      note_change(changed, i, level, levels[i])
    end
  end
  return levels, ats, changed
end
