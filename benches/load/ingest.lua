-- wrk script: POSTs tracker batches of 50 distinct events to /api/v1/analytics.
-- Arguments (after --): <run tag> <delay between requests per connection, ms; 0 = none>.
-- Prints one line "WRKJSON {...}" with the run's figures for benches/ingest.rs.

local thread_count = 0
local threads = {}

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
  table.insert(threads, thread)
end

local names = { {"page_view", "navigation"}, {"click", "interaction"}, {"search", "discovery"}, {"asset_generated", "creation"} }

function init(args)
  tag = args[1] or "run"
  pause = tonumber(args[2] or "0")
  counter = 0
  accepted = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function delay()
  return pause
end

function request()
  local now = os.time() * 1000
  local events = {}
  for i = 1, 50 do
    counter = counter + 1
    local n = counter + tid * 1000003
    local kind = names[(n % 4) + 1]
    events[i] = string.format(
      '{"id":"%s-%d-%d","event_name":"%s","category":"%s","user_id":"user_%d","session_id":"s_%d",' ..
      '"properties":{"path":"/create","asset_type":"image"},"device_info":{"browser":"chrome","os":"macos"},' ..
      '"page_url":"https://app.example.com/create","timestamp":%d}',
      tag, tid, counter, kind[1], kind[2], n % 5000, n % 900, now - (n % 60000))
  end
  return wrk.format(nil, "/api/v1/analytics", nil, '{"events":[' .. table.concat(events, ",") .. ']}')
end

function response(status, headers, body)
  if status == 202 then
    accepted = accepted + 1
  end
end

function done(summary, latency, requests)
  local ok = 0
  for _, thread in ipairs(threads) do
    ok = ok + (thread:get("accepted") or 0)
  end
  io.write(string.format(
    'WRKJSON {"requests":%d,"accepted":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, ok, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
