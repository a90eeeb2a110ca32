-- wrk script for the benchmark: POST one recommend request per call, for a rotating list of
-- user ids, optionally paced at an offered rate; writes its figures as JSON when done.
--
-- Configured through environment variables (top-level code runs before wrk decides whether
-- the script paces requests, so the rate cannot come from `init(args)`):
--   BENCH_USERS_FILE  user ids, one per line (required)
--   BENCH_BODY        "bento" -> {"user_id": ..., "k": ...}
--                     "kserve" -> {"instances": [{"user_id": ..., "k": ...}]}
--   BENCH_K           items per answer (default 10)
--   BENCH_RATE        offered requests/s for this wrk thread; 0 or unset = closed loop
--   BENCH_SEED        seed of the arrival times and of the first user (default 1)
--   BENCH_RESULT      where done() writes its JSON summary (required)
--
-- Pacing: arrivals follow a Poisson process at BENCH_RATE. Each connection that becomes free
-- takes the next arrival slot and waits for it; when every connection is busy the slots fall
-- behind and requests go out at once, so an overloaded server shows as achieved < offered.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local now_buffer = ffi.new("bench_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, now_buffer)
  return tonumber(now_buffer.tv_sec) * 1000 + tonumber(now_buffer.tv_nsec) / 1e6
end

local rate = tonumber(os.getenv("BENCH_RATE") or "0") or 0
local body_format = os.getenv("BENCH_BODY") or "bento"
local k = tonumber(os.getenv("BENCH_K") or "10") or 10
local seed = tonumber(os.getenv("BENCH_SEED") or "1") or 1
local result_path = os.getenv("BENCH_RESULT")
local users_path = os.getenv("BENCH_USERS_FILE")

local bodies = {}
local position = 0
local next_slot = nil
local mean_interval_ms = 0
if rate > 0 then
  mean_interval_ms = 1000.0 / rate
end

local function make_body(user_id)
  -- User ids are plain [A-Za-z0-9_.:@-] strings: no JSON escaping is needed.
  if body_format == "kserve" then
    return string.format('{"instances": [{"user_id": "%s", "k": %d}]}', user_id, k)
  end
  return string.format('{"user_id": "%s", "k": %d}', user_id, k)
end

function init(args)
  math.randomseed(seed)
  local file = assert(io.open(assert(users_path, "BENCH_USERS_FILE is not set"), "r"))
  for line in file:lines() do
    if #line > 0 then
      bodies[#bodies + 1] = make_body(line)
    end
  end
  file:close()
  assert(#bodies > 0, "no user ids in " .. users_path)
  position = math.random(#bodies) - 1
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  position = position % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[position])
end

if rate > 0 then
  function delay()
    local now = now_ms()
    if next_slot == nil then
      next_slot = now
    end
    local slot = next_slot
    -- Exponential gaps: a Poisson arrival process at the offered rate.
    next_slot = next_slot - math.log(1.0 - math.random()) * mean_interval_ms
    local wait = slot - now
    if wait <= 0 then
      return 0
    end
    return math.floor(wait + 0.5)
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  local percentiles = {}
  for _, p in ipairs({ 50, 90, 95, 99, 99.9 }) do
    percentiles[#percentiles + 1] = string.format('"%s": %.1f', tostring(p), latency:percentile(p))
  end
  local out = assert(io.open(assert(result_path, "BENCH_RESULT is not set"), "w"))
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, '
    .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
    .. '"latency_us": {"min": %.1f, "max": %.1f, "mean": %.1f, "stdev": %.1f, '
    .. '"percentiles": {%s}}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.min, latency.max, latency.mean, latency.stdev,
    table.concat(percentiles, ", ")
  ))
  out:close()
end
