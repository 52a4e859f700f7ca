-- Readiness probe: one small write, so a Redis that answers PING but refuses writes (OOM
-- under maxmemory noeviction, READONLY after a failover left us on a replica) fails it the
-- way every bucket script would.
--
-- KEYS[1]  the probe key
-- ARGV[1]  the value to write (the instant, for whoever looks)
--
-- Returns 1.

redis.call('SET', KEYS[1], ARGV[1], 'PX', 60000)
return 1
