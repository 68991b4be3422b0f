"""Lua scripts the Redis job store runs atomically on the server (times come from Redis `TIME`)."""

# KEYS: leases, lease_owner. ARGV: job_id, worker_id, lease_ms. 1 on success.
ACQUIRE_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if expiry and tonumber(expiry) > now and owner ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# A lease that ran out is gone: its job belongs to the reaper, so the old owner may not renew it.
RENEW_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expiry or tonumber(expiry) <= now or redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""

RELEASE_LEASE = """
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 1
"""

# Admission in one step, constant cost (see JobStore.admit; the rate is GCRA as in base.gcra).
# KEYS: idempotency key (a placeholder without one), the tenant's in-flight set (members scored by their record's
# expiry, ms), rate key, the kind's queue, the job's key, the tenant's `all` and kind indexes, seq, the
# start-deadline index. ARGV: job id ("" = only check), job JSON, body hash, has-idempotency-key ("1"), rate limit
# per minute, max in flight, max queue depth, job TTL s, idempotency TTL s, created ms, namespace (the replayed
# job's keys), start deadline ms ("": none). Returns {outcome, budget remaining, budget reset s, detail}: detail is
# the queue position (created), the job JSON and position (replayed), the job id (conflict), retry-after s
# (rate_limited) or the queue depth (queue_full, admissible).
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local now_ms = math.floor(now * 1000)
local limit = tonumber(ARGV[5])
local interval = 60.0 / limit
local tat = tonumber(redis.call('GET', KEYS[3]) or now)
if tat < now then tat = now end
local function budget(at)
  local remaining = math.floor((now + 60.0 - at) / interval + 1e-9)
  if remaining < 0 then remaining = 0 end
  if remaining > limit then remaining = limit end
  return remaining, tostring(at - now)
end
if ARGV[4] == '1' then
  local record = redis.call('GET', KEYS[1])
  if record then
    record = cjson.decode(record)
    local raw = redis.call('GET', ARGV[11] .. ':job:' .. record.job_id)
    if raw then
      if record.body_hash ~= ARGV[3] then return {'conflict', 0, '0', record.job_id} end
      local job = cjson.decode(raw)
      local position = -1
      if job.status == 'queued' then
        position = redis.call('ZRANK', ARGV[11] .. ':queue:' .. job.kind, record.job_id) or -1
      end
      local remaining, reset = budget(tat)
      return {'replayed', remaining, reset, raw, position}
    end
  end
end
local new_tat = tat + interval
if new_tat - 60.0 > now then
  local remaining, reset = budget(tat)
  return {'rate_limited', remaining, reset, tostring(new_tat - 60.0 - now)}
end
local remaining, reset = budget(tat)
if redis.call('ZCOUNT', KEYS[2], now_ms, '+inf') >= tonumber(ARGV[6]) then
  return {'inflight_limited', remaining, reset, 0}
end
local depth = redis.call('ZCARD', KEYS[4])
if depth >= tonumber(ARGV[7]) then return {'queue_full', remaining, reset, depth} end
if ARGV[1] == '' then return {'admissible', remaining, reset, depth} end
redis.call('SET', KEYS[3], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
local ttl_s = tonumber(ARGV[8])
local created_ms = tonumber(ARGV[10])
local seq = redis.call('INCR', KEYS[8])
redis.call('SET', KEYS[5], ARGV[2], 'EX', ttl_s)
redis.call('ZADD', KEYS[2], now_ms + ttl_s * 1000, ARGV[1])
local score = string.format('%.0f', created_ms * 1000 + seq % 1000)
local oldest = string.format('%.0f', (created_ms - ttl_s * 1000) * 1000)
for _, index in ipairs({KEYS[6], KEYS[7]}) do
  redis.call('ZADD', index, score, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', index, '-inf', oldest)
end
redis.call('ZADD', KEYS[4], 'NX', redis.call('INCR', KEYS[8]), ARGV[1])
if ARGV[12] ~= '' then redis.call('ZADD', KEYS[9], ARGV[12], ARGV[1]) end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[1], cjson.encode({job_id = ARGV[1], body_hash = ARGV[3]}), 'EX', tonumber(ARGV[9]))
end
remaining, reset = budget(new_tat)
return {'created', remaining, reset, depth}
"""

# One job as `GET /v1/jobs/{id}` reads it, in one command (a pipeline of GET and ZRANKs costs the gateway
# several times the CPU). KEYS: job, then queue:<kind> for every kind; ARGV: job id. Returns false (no job),
# {job JSON, its queue rank} while it waits in a queue (only its own kind's queue can hold its id), else
# {job JSON}: the shortest reply, since the gateway parses each element of it.
FETCH = """
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
for i = 2, #KEYS do
  local rank = redis.call('ZRANK', KEYS[i], ARGV[1])
  if rank then return {raw, rank} end
end
return {raw}
"""
