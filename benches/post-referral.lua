-- wrk script: POST the sample referral as FHIR JSON (see benches/load.sh).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/fhir+json"
local file = assert(io.open(os.getenv("LOAD_BODY_FILE"), "r"))
wrk.body = file:read("*a")
file:close()

local non_201 = 0
response = function(status, headers, body)
  if status ~= 201 then non_201 = non_201 + 1 end
end
