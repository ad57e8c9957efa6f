-- wrk script for bench/http_wrk.py: PUT a 100-byte value to one of 1,000 keys.
-- Each wrk thread draws its own keys; the value size comes from the environment.
local size = tonumber(os.getenv("PNYX_WRK_VALUE_SIZE") or "100")
local keys = tonumber(os.getenv("PNYX_WRK_KEYS") or "1000")
local value = string.rep("v", size)
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)

request = function()
  return wrk.format("PUT", "/v1/kv/k" .. math.random(0, keys - 1), nil, value)
end

-- Non-2xx answers (503 overloaded, ...) are counted by wrk as "Non-2xx or 3xx responses".
