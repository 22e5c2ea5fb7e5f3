-- wrk script: each request POSTs one email (one recipient, a 2 KB text body) with a fresh
-- Idempotency-Key. Usage: wrk ... -s bench/emails.lua URL -- PATH FROM TO
local path, body, run, number, headers

function init(args)
  path = args[1]
  local text = string.rep("A line of the benchmark's text body, sixty-four bytes long.....\\n", 32)
  body = string.format('{"from":"%s","to":"%s","subject":"Benchmark","text":"%s"}', args[2], args[3], text)
  -- One prefix per thread and run, so that no two requests share a key.
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  run = string.format("%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  number = 0
end

function request()
  if not headers then
    -- Headers given here replace wrk's own (-H), so carry those over.
    headers = { ["Content-Type"] = "application/json" }
    for name, value in pairs(wrk.headers) do
      headers[name] = value
    end
  end
  number = number + 1
  headers["Idempotency-Key"] = run .. "-" .. number
  return wrk.format("POST", path, headers, body)
end
