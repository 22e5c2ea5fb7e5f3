-- wrk script: each request GETs string.format(fmt, n) for a random n in [low, high].
-- Usage: wrk ... -s bench/paths.lua URL -- FORMAT LOW HIGH
local fmt, low, high

function init(args)
  fmt, low, high = args[1], tonumber(args[2]), tonumber(args[3])
  math.randomseed(os.time())
end

function request()
  return wrk.format("GET", string.format(fmt, math.random(low, high)))
end
