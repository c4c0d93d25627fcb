-- wrk script: POST the sample referral as FHIR JSON (see benches/load.sh).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/fhir+json"
local file = assert(io.open(os.getenv("LOAD_BODY_FILE"), "r"))
wrk.body = file:read("*a")
file:close()
-- wrk itself prints "Non-2xx or 3xx responses: N" when any POST is refused.
