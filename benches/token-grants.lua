-- wrk script: POST /auth/token client-credentials grants, each with its own signed
-- client assertion (a fresh jti: a replayed one is refused), read one form body per
-- line from LOAD_GRANTS_FILE and shared out between wrk's threads. When the file runs
-- out, bodies are reused and refused as replays: wrk then reports Non-2xx responses,
-- and the run is too long for the file.
local file = assert(io.open(os.getenv("LOAD_GRANTS_FILE"), "r"))
local bodies = {}
for line in file:lines() do
    if line ~= "" then
        bodies[#bodies + 1] = line
    end
end
file:close()

local threads = 0
local thread_count = tonumber(os.getenv("LOAD_THREADS") or "2")
function setup(thread)
    threads = threads + 1
    thread:set("thread_id", threads)
end

local next_index = nil
function request()
    -- Thread k takes bodies k, k + n, k + 2n…: no body is sent twice while they last.
    if next_index == nil then
        next_index = thread_id
    end
    local body = bodies[((next_index - 1) % #bodies) + 1]
    next_index = next_index + thread_count
    return wrk.format("POST", nil,
        {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
