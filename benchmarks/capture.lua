-- wrk script of benchmarks/capture.py: POSTs prepared capture bodies in turn, then prints one JSON line.
--
-- Arguments (after `--`): the folder of the bodies (files 1..count), count, the request path and the
-- Content-Type. Requests are formatted once per thread in init(), so wrk spends no time building them.

local requests = {}
local next_index = 0

function init(args)
  local folder, count, path, content_type = args[1], tonumber(args[2]), args[3], args[4]
  for index = 1, count do
    local file = assert(io.open(folder .. "/" .. index, "rb"))
    local body = file:read("*a")
    file:close()
    requests[index] = wrk.format("POST", path, { ["Content-Type"] = content_type }, body)
  end
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end

function done(summary, latency, _)
  local errors = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "refused": %d, "connect": %d, "read": %d, '
      .. '"write": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, errors.status, errors.connect, errors.read, errors.write,
    errors.timeout, latency:percentile(50), latency:percentile(99), latency.max
  ))
end
