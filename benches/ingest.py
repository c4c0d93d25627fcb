#!/usr/bin/env python3
"""The write path under load (issue 20 §3, §4): one release Sprig, one run.

    python3 benches/ingest.py [--sprig target/release/sprig] [--seconds 10]
        [--connections 32] [--database postgres://postgres@127.0.0.1:5432/]
        [--synchronous full] [--bundles 337,1350,2702,5000] [--skip-load]
        [--instances 2]  (PostgreSQL only: several Sprigs on one database)

Starts Sprig on 127.0.0.1 with a fresh database (a SQLite file in a temporary
folder by default; with --database postgres://…/ a fresh database
`sprig_ingest_<pid>` is made on that server and dropped at the end) and
authentication off (Sprig's `auth.mode = "auto"` on loopback: the store's
figures, not the token check's). Then, side by side in this one run, each
for --seconds with --connections connections (wrk, two threads):

  validate      POST /fhir/ServiceRequest/$validate of the example referral
                (the same-run baseline: parse, validate, no store)
  create        POST /fhir/ServiceRequest, a new referral each request
                (benches/post-unique.lua gives each a fresh identifier)
  transaction   POST /fhir, the example transaction Bundle (7 entries),
                a new referral each request
  message       POST /fhir/$process-message, the example BaRS referral
                message, a new referral each request, each with its own
                X-Request-ID as BaRS senders send (not in the default phases)
  resubmit      POST /fhir/ServiceRequest of one referral already held
                (the idempotent answer)
  read          GET /fhir/ServiceRequest/{id}

and prints rate, p50 and p99 (wrk's), non-2xx counts, the server's RSS
(sampled every 100 ms: peak per phase) and the server's CPU time (user plus
system, from /proc) per request: less moved by a busy machine than the rate.
Then, one at a time, transaction Bundles of --bundles entries (the example
plus Condition entries), each timed while a prober creates a referral every
50 ms: the Bundle's time and the prober's worst wait show whether a large
transaction starves other writes.
With --instances N (PostgreSQL only) N Sprig processes serve the one database,
as behind a load balancer: each phase runs one wrk per instance at the same
time, with --connections split between them; rates and requests are summed,
p50 and p99 are the worst instance's, RSS the sum of the instances' peaks.
The large Bundles go to the first instance while the prober creates through
the last.
Needs wrk (Debian: apt-get install wrk). Traffic goes to 127.0.0.1 (and the
given PostgreSQL) only, and stops by itself.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERRAL = os.path.join(ROOT, "examples/referral-servicerequest.json")
BUNDLE = os.path.join(ROOT, "examples/referral-transaction-bundle.json")
MESSAGE = os.path.join(ROOT, "examples/referral-message-bundle.json")
LUA = os.path.join(ROOT, "benches/post-unique.lua")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sprig", default=os.path.join(ROOT, "target/release/sprig"))
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--database", default="", help="a postgres:// server URL (default: a SQLite file)")
    p.add_argument("--synchronous", default="full", choices=["full", "normal"])
    p.add_argument("--bundles", default="337,1350,2702,5000", help="entry counts of the large Bundles ('' for none)")
    p.add_argument("--skip-load", action="store_true", help="only the large Bundles")
    p.add_argument("--phases", default="validate,create,transaction,resubmit,read")
    p.add_argument("--instances", type=int, default=1, help="Sprig processes on one PostgreSQL database")
    return p.parse_args()


class Server:
    """A Sprig process and where it listens."""

    def __init__(self, args, work, index=0, shared_database=None):
        self.args = args
        self.pg_database = None
        self.index = index
        env = dict(os.environ)
        env.update(
            SPRIG_SQLITE__SYNCHRONOUS=args.synchronous,
            SPRIG_LOG__FORMAT="json",
            SPRIG_LOG__LEVEL="warn,sprig=info",
            # Large Bundles need more entries than the default array limit,
            # and time: the figures are the store's.
            SPRIG_LIMITS__MAX_REPEATS="10000",
            SPRIG_LIMITS__REQUEST_TIMEOUT_SECS="60",
        )
        if shared_database:
            # Another instance on the first one's database: that one drops it.
            database = shared_database
        elif args.database:
            self.pg_database = f"sprig_ingest_{os.getpid()}"
            psql(args.database, f"CREATE DATABASE {self.pg_database}")
            database = args.database.rstrip("/") + "/" + self.pg_database
        else:
            database = os.path.join(work, "ingest.db")
        self.database = database
        self.log_path = os.path.join(work, f"sprig-{index}.log")
        self.log = open(self.log_path, "w")
        started = time.monotonic()
        self.process = subprocess.Popen(
            [args.sprig, "serve", "--listen", "127.0.0.1:0", "--database", database],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        self.address = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open(self.log_path) as f:
                m = re.search(r'"address":"([^"]+)"', f.read())
            if m:
                self.address = m.group(1)
                try:
                    if get(self.address, "/readyz")[0] == 200:
                        break
                except OSError:
                    pass
            time.sleep(0.02)
        else:
            sys.exit("Sprig did not become ready; see " + self.log_path)
        print(f"== Sprig {index + 1} ready in {time.monotonic() - started:.2f} s at {self.address} "
              f"({'PostgreSQL' if args.database else 'SQLite'}, synchronous={args.synchronous}, "
              f"{args.connections} connections, {args.seconds:g} s per phase, "
              f"{os.cpu_count()} cores shared with whatever else runs)")

    def rss_kib(self, key="VmRSS"):
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def cpu_seconds(self):
        """User plus system CPU time the server has used so far."""
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        if self.pg_database:
            psql(self.args.database, f"DROP DATABASE IF EXISTS {self.pg_database} WITH (FORCE)")


def psql(url, sql):
    subprocess.run(["psql", url.rstrip("/") + "/postgres", "-qc", sql], check=True, stdout=subprocess.DEVNULL)


def request(address, method, path, body=None, timeout=120):
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    headers = {"Content-Type": "application/fhir+json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def get(address, path):
    return request(address, "GET", path)


class RssSampler(threading.Thread):
    """The server's peak RSS while a phase runs."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.peak = 0
        self.running = True

    def run(self):
        while self.running:
            self.peak = max(self.peak, self.server.rss_kib())
            time.sleep(0.1)

    def stop(self):
        self.running = False
        self.join()
        return self.peak


def seconds_of(latency):
    """wrk's latency text (`950.00us`, `12.3ms`, `1.2s`) in seconds, for picking the worst."""
    m = re.match(r"([\d.]+)(us|ms|s|m)", latency)
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
    return float(m.group(1)) * scale[m.group(2)] if m else float("inf")


def wrk(servers, args, path, body_file=None, unique=None, request_ids=False):
    """One wrk per server at the same time, the connections split between them: the summed
    rate, the worst p50 and p99, the summed requests, non-2xx count and peak RSS."""
    env = dict(os.environ)
    runs, samplers = [], []
    for index, server in enumerate(servers):
        connections = max(1, args.connections // len(servers))
        command = ["wrk", "-t2", f"-c{connections}", f"-d{args.seconds:g}s", "--latency"]
        if body_file:
            command += ["-s", LUA]
            # Each instance's wrk makes its own identifiers (post-unique.lua numbers them
            # per thread): a prefix per instance keeps them apart.
            env_i = dict(env, LOAD_BODY_FILE=body_file, LOAD_UNIQUE=unique, LOAD_PREFIX=f"i{index}-",
                         LOAD_REQUEST_ID="1" if request_ids else "")
        else:
            env_i = env
        command.append(f"http://{server.address}{path}")
        sampler = RssSampler(server)
        sampler.start()
        samplers.append(sampler)
        runs.append(subprocess.Popen(command, env=env_i, stdout=subprocess.PIPE, text=True))
    outs = []
    for run in runs:
        out, _ = run.communicate()
        if run.returncode != 0:
            sys.exit(f"wrk failed: {out}")
        outs.append(out)
    peak = sum(s.stop() for s in samplers)
    rate = sum(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) for out in outs)
    p50 = max((re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1) for out in outs), key=seconds_of)
    p99 = max((re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1) for out in outs), key=seconds_of)
    total = sum(int(re.search(r"(\d+) requests in", out).group(1)) for out in outs)
    non2xx = sum(int(m.group(1)) for out in outs if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)))
    errors = " ".join(m.group(1) for out in outs if (m := re.search(r"Socket errors: (.*)", out)))
    return rate, p50, p99, total, non2xx, errors, peak


def large_bundle(entries):
    """The example transaction Bundle grown to `entries` entries with Conditions; a new referral."""
    with open(BUNDLE) as f:
        bundle = json.load(f)
    text = json.dumps(bundle).replace("REF-2026-000456", f"BIG-{uuid.uuid4()}")
    bundle = json.loads(text)
    condition = bundle["entry"][6]
    while len(bundle["entry"]) < entries:
        entry = json.loads(json.dumps(condition))
        entry["fullUrl"] = f"urn:uuid:{uuid.uuid4()}"
        bundle["entry"].append(entry)
    return json.dumps(bundle).encode()


def probe_while(server, stop, waits, statuses):
    """Creates a referral every 50 ms until `stop`; each one's wait and answer."""
    with open(REFERRAL) as f:
        template = f.read()
    while not stop.is_set():
        body = template.replace("REF-2026-000123", f"PROBE-{uuid.uuid4()}").encode()
        started = time.monotonic()
        try:
            status, _ = request(server.address, "POST", "/fhir/ServiceRequest", body, timeout=60)
        except OSError:
            status = 0
        waits.append(time.monotonic() - started)
        statuses[status] = statuses.get(status, 0) + 1
        stop.wait(0.05)


def main():
    args = parse_args()
    if not shutil.which("wrk") and not args.skip_load:
        sys.exit("wrk is required: apt-get install wrk")
    if args.instances > 1 and not args.database:
        sys.exit("--instances needs --database postgres://…/ (SQLite serves one process)")
    work = tempfile.mkdtemp(prefix="sprig-ingest-")
    server = Server(args, work)
    servers = [server]
    try:
        for index in range(1, args.instances):
            servers.append(Server(args, work, index, shared_database=server.database))
        if not args.skip_load:
            print(f"{'phase':<12} {'rate/s':>9} {'p50':>9} {'p99':>9} {'requests':>9} {'non-2xx':>8} {'RSS peak MiB':>13} {'CPU ms/req':>10}")
            with open(REFERRAL) as f:
                held = f.read().replace("REF-2026-000123", "INGEST-HELD-1")
            held_file = os.path.join(work, "held.json")
            with open(held_file, "w") as f:
                f.write(held)
            status, created = request(server.address, "POST", "/fhir/ServiceRequest", held.encode())
            assert status == 201, (status, created[:300])
            held_id = json.loads(created)["id"]
            phases = {
                "validate": ("/fhir/ServiceRequest/$validate", REFERRAL, "REF-2026-000123"),
                "create": ("/fhir/ServiceRequest", REFERRAL, "REF-2026-000123"),
                "transaction": ("/fhir", BUNDLE, "REF-2026-000456"),
                # As a BaRS sender sends it: each message its own X-Request-ID.
                "message": ("/fhir/$process-message", MESSAGE, "REF-2026-000789", True),
                # A text not in the body: the same referral every time.
                "resubmit": ("/fhir/ServiceRequest", held_file, "NOT-IN-THE-BODY"),
                "read": (f"/fhir/ServiceRequest/{held_id}", None, None),
            }
            baseline = None
            for name in args.phases.split(","):
                path, body, unique, *request_ids = phases[name]
                cpu_before = sum(s.cpu_seconds() for s in servers)
                rate, p50, p99, total, non2xx, errors, peak = wrk(servers, args, path, body, unique, *request_ids)
                cpu_ms = 1000 * (sum(s.cpu_seconds() for s in servers) - cpu_before) / max(total, 1)
                baseline = baseline or rate
                share = f"{100 * rate / baseline:5.1f} % of {args.phases.split(',')[0]}"
                print(f"{name:<12} {rate:>9.0f} {p50:>9} {p99:>9} {total:>9} {non2xx:>8} {peak / 1024:>13.1f} {cpu_ms:>10.3f}  {share} {errors}")
        for entries in [int(n) for n in args.bundles.split(",") if n]:
            body = large_bundle(entries)
            stop = threading.Event()
            waits, statuses = [], {}
            prober = threading.Thread(target=probe_while, args=(servers[-1], stop, waits, statuses), daemon=True)
            prober.start()
            time.sleep(0.2)
            started = time.monotonic()
            status, answer = request(server.address, "POST", "/fhir", body)
            took = time.monotonic() - started
            time.sleep(0.1)
            stop.set()
            prober.join()
            note = "" if status == 200 else " " + answer[:200].decode(errors="replace")
            print(f"Bundle of {entries} entries ({len(body) / 1e6:.2f} MB): {status} in {took:.2f} s; "
                  f"meanwhile {len(waits)} single creates, worst wait {max(waits) * 1000:.0f} ms, "
                  f"answers {statuses}{note}")
        print(f"RSS: now {server.rss_kib() / 1024:.1f} MiB, peak {server.rss_kib('VmHWM') / 1024:.1f} MiB")
        with open(server.log_path) as f:
            warnings = [line for line in f if '"level":"WARN"' in line or '"level":"ERROR"' in line]
        print(f"server log: {len(warnings)} lines at warn or error")
        for line in warnings[:3]:
            print("  " + line.strip()[:300])
    finally:
        # The first instance drops the database: stop it last.
        for other in reversed(servers):
            other.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
