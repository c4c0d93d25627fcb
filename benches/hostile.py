#!/usr/bin/env python3
"""Hostile-load run (issue 19): attacks on a release build of Sprig on loopback.

    python3 benches/hostile.py [SPRIG_BINARY] [SECONDS_PER_ATTACK]
        (defaults: target/release/sprig, 8 s)

Starts Sprig on 127.0.0.1 with a fresh database and default settings, then
runs, one after another and each for SECONDS_PER_ATTACK: an idle baseline,
idle connections, slowloris (a header line every 2 s), slow bodies (uploads
stalled just before the end of a 4 MiB body), a storm of large (3.8 MB)
referrals, and searches with 200 repeats of one parameter. Throughout, it
probes GET /healthz on the probes' own address (`server.health_listen`,
every 50 ms, a new connection each) and on the main one (every 100 ms), and
creates a referral (every 200 ms), and samples the server's RSS. It prints, per
attack: RSS peak, /healthz p99, the create p99 and how many creates
succeeded, and what the attackers were answered. Everything is bounded in
count and time; traffic goes to 127.0.0.1 only. Python's standard library
only. The probes run in a process of their own: in the attackers' event loop
their timings would include the time that loop spends pushing hundreds of
megabytes of attack (the client's delay, not the server's).
"""

import asyncio
import json
import multiprocessing
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPRIG = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/sprig")
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 8.0
EXAMPLE = json.load(open(os.path.join(ROOT, "examples/referral-servicerequest.json")))

counter = 0


def referral(notes=0):
    """A new referral (unique identifier); with `notes` notes of 60,000 characters."""
    global counter
    counter += 1
    body = json.loads(json.dumps(EXAMPLE))
    body["identifier"][0]["value"] = f"HOSTILE-{os.getpid()}-{counter}"
    if notes:
        body["note"] = [{"text": "n" * 60000} for _ in range(notes)]
    return json.dumps(body).encode()


def request(method, path, body=b"", headers=()):
    head = f"{method} {path} HTTP/1.1\r\nHost: sprig\r\nConnection: close\r\n"
    if body:
        head += f"Content-Type: application/fhir+json\r\nContent-Length: {len(body)}\r\n"
    for h in headers:
        head += h + "\r\n"
    return head.encode() + b"\r\n" + body


async def exchange(host, port, data, timeout=10.0):
    """Sends `data` on a new connection; the status (0: no answer) and seconds taken."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.write(data)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        await asyncio.wait_for(reader.read(), timeout)
        writer.close()
        status = int(line.split()[1]) if line else 0
    except (OSError, asyncio.TimeoutError, IndexError, ValueError):
        status = 0
    return status, time.perf_counter() - started


def p99(samples):
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Phase:
    def __init__(self, name):
        self.name = name
        self.health = []
        self.health_failed = 0
        self.main_health = []
        self.creates = []
        self.creates_ok = 0
        self.creates_failed = {}
        self.rss_peak = 0
        self.attack = {}

    def note_attack(self, status):
        self.attack[status] = self.attack.get(status, 0) + 1


async def probes(host, port, probe_port, pid, phase, stop):
    async def health():
        while not stop.is_set():
            status, took = await exchange(host, probe_port, request("GET", "/healthz"))
            if status == 200:
                phase.health.append(took)
            else:
                phase.health_failed += 1
            await asyncio.sleep(0.05)

    async def main_health():
        while not stop.is_set():
            _, took = await exchange(host, port, request("GET", "/healthz"))
            phase.main_health.append(took)
            await asyncio.sleep(0.1)

    async def create():
        while not stop.is_set():
            status, took = await exchange(host, port, request("POST", "/fhir/ServiceRequest", referral()))
            phase.creates.append(took)
            if status == 201:
                phase.creates_ok += 1
            else:
                phase.creates_failed[status] = phase.creates_failed.get(status, 0) + 1
            await asyncio.sleep(0.2)

    async def rss():
        while not stop.is_set():
            phase.rss_peak = max(phase.rss_peak, rss_kib(pid))
            await asyncio.sleep(0.05)

    await asyncio.gather(health(), main_health(), create(), rss())


def probe_process(host, port, probe_port, pid, finished, results):
    """Runs `probes` in this process's own event loop until `finished` is set, then
    sends what it measured back through `results`."""
    phase = Phase("probes")

    async def run():
        stop = asyncio.Event()

        async def watch():
            while not finished.is_set():
                await asyncio.sleep(0.02)
            stop.set()

        await asyncio.gather(watch(), probes(host, port, probe_port, pid, phase, stop))

    asyncio.run(run())
    results.send((phase.health, phase.health_failed, phase.main_health, phase.creates,
                  phase.creates_ok, phase.creates_failed, phase.rss_peak))


async def hold(host, port, phase, stop, send_first, drip=None, every=2.0):
    """One attacking connection: sends `send_first`, then `drip` every `every` s until stopped."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        phase.note_attack("refused")
        return
    try:
        if send_first:
            writer.write(send_first)
            await writer.drain()
        while not stop.is_set():
            if drip:
                writer.write(drip)
                await writer.drain()
            try:
                line = await asyncio.wait_for(reader.readline(), every)
            except asyncio.TimeoutError:
                continue
            phase.note_attack(int(line.split()[1]) if line.startswith(b"HTTP/") else "closed")
            return
        phase.note_attack("held")
    except (OSError, IndexError, ValueError):
        phase.note_attack("closed")
    finally:
        writer.close()


async def attack(name, host, port, stop, phase):
    if name == "idle baseline":
        await stop.wait()
    elif name == "idle connections (600)":
        await asyncio.gather(*(hold(host, port, phase, stop, b"") for _ in range(600)))
    elif name == "slowloris (300)":
        head = b"GET /healthz HTTP/1.1\r\nHost: sprig\r\n"
        await asyncio.gather(*(hold(host, port, phase, stop, head, b"X-a: b\r\n") for _ in range(300)))
    elif name == "slow bodies (100 x 4 MiB, stalled)":
        size = 4 * 1024 * 1024
        head = (
            f"POST /fhir/ServiceRequest HTTP/1.1\r\nHost: sprig\r\nContent-Type: application/fhir+json\r\n"
            f"Content-Length: {size}\r\n\r\n"
        ).encode()
        await asyncio.gather(*(hold(host, port, phase, stop, head + b" " * (size - 1024)) for _ in range(100)))
    elif name == "large-referral storm (100 x 3.8 MB)":
        bodies = [referral(notes=64) for _ in range(100)]

        async def one(body):
            while not stop.is_set():
                status, _ = await exchange(host, port, request("POST", "/fhir/ServiceRequest", body), 30)
                phase.note_attack(status)

        await asyncio.gather(*(one(b) for b in bodies))
    elif name == "repeated parameter (20 x 200 repeats)":
        query = "&".join(["status=active"] * 200)

        async def one():
            while not stop.is_set():
                status, _ = await exchange(host, port, request("GET", f"/fhir/ServiceRequest?{query}"), 30)
                phase.note_attack(status)

        await asyncio.gather(*(one() for _ in range(20)))


ATTACKS = [
    "idle baseline",
    "idle connections (600)",
    "slowloris (300)",
    "slow bodies (100 x 4 MiB, stalled)",
    "large-referral storm (100 x 3.8 MB)",
    "repeated parameter (20 x 200 repeats)",
]


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    work = tempfile.mkdtemp()
    # The probes' own address (server.health_listen), as a deployment under
    # attack gives its load balancer: a free port picked by binding port 0.
    import socket
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        probe_port = free.getsockname()[1]
    env = dict(
        os.environ,
        SPRIG_LOG__FORMAT="json",
        SPRIG_LOG__LEVEL="warn,sprig=info",
        SPRIG_SERVER__HEALTH_LISTEN=f"127.0.0.1:{probe_port}",
    )
    env.pop("RUST_LOG", None)
    log = open(os.path.join(work, "sprig.log"), "w+")
    server = subprocess.Popen(
        [SPRIG, "serve", "--listen", "127.0.0.1:0", "--database", os.path.join(work, "hostile.db")],
        stdout=subprocess.DEVNULL, stderr=log, env=env,
    )
    try:
        address = None
        for _ in range(500):
            log.seek(0)
            found = re.search(r'"address":"([^"]+)"', log.read())
            if found:
                address = found.group(1)
                break
            time.sleep(0.02)
        if not address:
            sys.exit("sprig did not start")
        host, port = address.rsplit(":", 1)
        port = int(port)
        print(f"sprig {SPRIG} at {address}, {SECONDS:.0f} s per attack, idle RSS {rss_kib(server.pid) // 1024} MiB")
        print(
            f"{'attack':40} {'RSS peak':>9} {'/healthz p99':>13} {'(main port)':>11}"
            f" {'create p99':>11} {'creates ok':>11}  attackers answered"
        )
        for name in ATTACKS:
            phase = Phase(name)
            stop = asyncio.Event()
            finished = multiprocessing.Event()
            receiver, sender = multiprocessing.Pipe(duplex=False)
            prober = multiprocessing.Process(
                target=probe_process,
                args=(host, port, probe_port, server.pid, finished, sender),
                daemon=True,
            )
            prober.start()
            tasks = [asyncio.create_task(attack(name, host, port, stop, phase))]
            await asyncio.sleep(SECONDS)
            stop.set()
            finished.set()
            await asyncio.wait(tasks, timeout=35)
            if await asyncio.to_thread(receiver.poll, 40):
                (phase.health, phase.health_failed, phase.main_health, phase.creates,
                 phase.creates_ok, phase.creates_failed, phase.rss_peak) = receiver.recv()
            prober.join(timeout=5)
            failed = "".join(f" ({n} x {s})" for s, n in phase.creates_failed.items())
            print(
                f"{name:40} {phase.rss_peak / 1024:7.0f} MiB {p99(phase.health):10.1f} ms"
                f" {p99(phase.main_health):8.0f} ms"
                f" {p99(phase.creates):8.0f} ms {phase.creates_ok:>5}/{len(phase.creates):<5}"
                f" {dict(sorted(phase.attack.items(), key=str))}"
                + (f" health failures {phase.health_failed}" if phase.health_failed else "")
                + failed,
                flush=True,
            )
            await asyncio.sleep(2)
        await asyncio.sleep(10)
        print(f"RSS 10 s after the last attack: {rss_kib(server.pid) // 1024} MiB")
    finally:
        server.terminate()
        server.wait(timeout=40)
        log.seek(0)
        errors = [l for l in log if '"level":"ERROR"' in l]
        print(f"server log: {len(errors)} lines at error")


asyncio.run(main())
