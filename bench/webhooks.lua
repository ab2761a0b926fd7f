-- wrk script: POST the pre-signed bodies of a corpus file (`signature<TAB>body` per line) in order, cycling.
--   wrk -t1 -c64 -d10s -s bench/webhooks.lua http://127.0.0.1:PORT -- /path/to/corpus.tsv
-- With several threads, thread k of n sends lines k, k+n, k+2n, ... so no two threads repeat a body.
-- done() prints one JSON line (prefix "WRK_RESULT ") that bench/ingest.py reads.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("index", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local path = args[1]
  requests = {}
  local k = 0
  local nthreads = tonumber(args[2] or "1")
  for line in io.lines(path) do
    if k % nthreads == index then
      local tab = string.find(line, "\t", 1, true)
      local sig = string.sub(line, 1, tab - 1)
      local body = string.sub(line, tab + 1)
      requests[#requests + 1] = wrk.format("POST", "/webhooks/rutter",
        {["Content-Type"] = "application/json", ["X-Rutter-Signature"] = sig}, body)
    end
    k = k + 1
  end
  position = 0
  sent = 0
end

function request()
  position = position + 1
  if position > #requests then
    position = 1
  end
  sent = sent + 1
  return requests[position]
end

function done(summary, latency, requests_)
  local issued = 0
  for _, thread in ipairs(threads) do
    issued = issued + (thread:get("sent") or 0)
  end
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"errors_status":%d,"errors_connect":%d,' ..
    '"errors_read":%d,"errors_write":%d,"errors_timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"issued":%d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, latency:percentile(50), latency:percentile(99), latency.max,
    issued))
end
