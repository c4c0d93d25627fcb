-- wrk script: POST a FHIR JSON body in which every occurrence of LOAD_UNIQUE
-- (the referral's identifier value) is made unique per request, so each
-- request is a new referral rather than an idempotent resubmission.
-- Environment: LOAD_BODY_FILE (the body), LOAD_UNIQUE (the text to vary), and
-- optionally LOAD_AUTHORIZATION (an Authorization header value, e.g. "Bearer …"),
-- LOAD_PREFIX (put before each value: several wrk processes at once stay apart) and
-- LOAD_REQUEST_ID=1 (each request its own X-Request-ID, as a BaRS sender sends, so that
-- the receiver looks each one up and remembers it).
local file = assert(io.open(os.getenv("LOAD_BODY_FILE"), "r"))
local template = file:read("*a")
file:close()
local unique = assert(os.getenv("LOAD_UNIQUE"), "LOAD_UNIQUE is required")
local escaped = unique:gsub("%p", "%%%0")

local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("thread_id", threads)
end

local authorization = os.getenv("LOAD_AUTHORIZATION")
local prefix = os.getenv("LOAD_PREFIX") or ""
local request_ids = os.getenv("LOAD_REQUEST_ID") == "1"

local counter = 0
function request()
    counter = counter + 1
    local value = prefix .. unique .. "-" .. tostring(thread_id) .. "-" .. tostring(counter)
    local body = template:gsub(escaped, value)
    local headers = {["Content-Type"] = "application/fhir+json"}
    if authorization and authorization ~= "" then
        headers["Authorization"] = authorization
    end
    if request_ids then
        headers["X-Request-ID"] = "load-" .. value
    end
    return wrk.format("POST", nil, headers, body)
end
-- wrk itself prints "Non-2xx or 3xx responses: N" when any POST is refused.
