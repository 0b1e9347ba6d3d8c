-- wrk script: POST /v1/detect with a multipart body read from a file, until a quota of
-- answers, for benchmarks/serve_throughput.py (which writes the body and sets the variables).
--   WRK_BODY      file with the whole multipart/form-data body (field "image")
--   WRK_BOUNDARY  its boundary
--   WRK_QUOTA     answers after which the run ends (0: run for wrk's -d duration)
-- wrk runs for its -d duration even after thread:stop(); a SIGINT to itself ends the run (its
-- handler stops the clock and prints the report, non-2xx count included) once the quota is in.
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. os.getenv("WRK_BOUNDARY")
local file = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.body = file:read("*a")
file:close()
local quota = tonumber(os.getenv("WRK_QUOTA") or "0")
local answered = 0
local ffi = require("ffi")
ffi.cdef("int kill(int pid, int sig); int getpid(void);")
function response(status, headers, body)
  answered = answered + 1
  if quota > 0 and answered == quota then
    wrk.thread:stop()
    ffi.C.kill(ffi.C.getpid(), 2)
  end
end
