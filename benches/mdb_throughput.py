#!/usr/bin/env python3
"""Benchmark: messages per second through a message-driven component (issue 13, "Benchmarks";
docs/components.md, "Message-driven components"), beside the same broker's throughput to plain
STOMP consumers, same server, same run.

    python3 benches/mdb_throughput.py                   # RUNS=3 COUNT=20000 DURATION=8
    RUNS=5 COUNT=50000 POOL=64 python3 benches/mdb_throughput.py

One Steward server (release build) with a persistent queue `bench` and a persistent queue `mdb`
consumed by a component application (`consumes = ["queue:mdb"]`) that answers 200 at once: a
Python asyncio HTTP server (stdlib only) reading each POST and answering `200` with no body.
- component: COUNT 1 KB messages are queued into `mdb` with receipts (`stomp_load fill`, 4
  producers) while the component is held not ready (its health path answers 503 until the script
  creates a file), so nothing is consumed during the fill; then the component turns ready and
  the script polls `GET /v1/components` until its consumer has acknowledged all COUNT. The rate
  is COUNT over the time from the first acknowledgement seen to the last (polled every 20 ms).
  Each message is one POST (over the engine's kept-alive connections); at most `thread-pool.max` (POOL, 32) in
  flight.
- anchor: `stomp_load throughput` against the same server's `bench` queue (the conventions of
  benches/messaging_throughput.py: 4 producers with receipts, 2 consumers `ack:client-individual`
  prefetch 100, 1 KB, DURATION-second window): messages consumed per second.
Runs alternate (the order flips each round); medians of RUNS are printed. The component's CPU
(its process's user+system time over the drain) is printed too: on this 2-core machine the
component, the server and the load generator share the cores.

Both run at `nice -n -10` when root (as messaging_throughput.py). Builds the release `steward`
and `stomp_load` unless STEWARD_EXE and STOMP_LOAD name binaries.
"""
import json, os, shutil, statistics, subprocess, sys, tempfile, time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from push_to_applied import free_ports, start_domain  # noqa: E402
from messaging_throughput import build, stomp_ready, NICE, AUTH, SIZE  # noqa: E402

RUNS = int(os.environ.get("RUNS", "3"))
COUNT = int(os.environ.get("COUNT", "20000"))
DURATION = float(os.environ.get("DURATION", "8"))
POOL = int(os.environ.get("POOL", "32"))

# The component: health 503 until $GO exists; every POST answered 200 at once.
COMPONENT = r'''#!/usr/bin/env python3
import asyncio, os
GO = os.environ["GO"]

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length = 0
            for l in lines[1:]:
                if l.lower().startswith("content-length:"):
                    length = int(l.split(":", 1)[1])
            if length:
                await reader.readexactly(length)
            status = "200 OK"
            if method == "GET" and not os.path.exists(GO):
                status = "503 Service Unavailable"
            writer.write(("HTTP/1.1 %s\r\nContent-Length: 0\r\n\r\n" % status).encode())
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(os.environ["PORT"]), backlog=1024)
    async with server:
        await server.serve_forever()

asyncio.run(main())
'''


class Server:
    def __init__(self, exe, tmp):
        self.exe = exe
        master, self.base, self.port = free_ports(3)
        self.go = os.path.join(tmp, "go")
        src, self.home = os.path.join(tmp, "src"), os.path.join(tmp, "home")
        os.makedirs(os.path.join(src, "apps/sink/bin"))
        comp = os.path.join(src, "apps/sink/bin/sink")
        with open(comp, "w") as f:
            f.write(COMPONENT)
        os.chmod(comp, 0o755)
        domain = (f'[domain]\nname = "bench"\n\n[master]\nlisten = "127.0.0.1:{master}"\n\n'
                  f'[servers.s0]\nlisten = "127.0.0.1:{self.base}"\nrestart-policy = "manual"\n\n'
                  f'[servers.s0.component.thread-pool]\nmax = {POOL}\n\n'
                  f'[servers.s0.messaging.listener]\naddress = "127.0.0.1"\nport = {self.port}\n\n'
                  f'[servers.s0.messaging.queues.bench]\nmax-depth = 100000000\npersistent = true\n\n'
                  f'[servers.s0.messaging.queues.mdb]\nmax-depth = 100000000\npersistent = true\n\n'
                  f'[applications.sink]\nkind = "component"\nsource = "apps/sink"\ntargets = ["s0"]\n'
                  f'command = "bin/sink"\nhealth-path = "/health"\nstart-timeout = "10m"\n'
                  f'env = {{ GO = "{self.go}" }}\nconsumes = ["queue:mdb"]\n')
        # Healthy at start: the server reports READY once its applications answer.
        open(self.go, "w").close()
        self.env, self.procs = start_domain(exe, src, self.home, domain, master)
        r = subprocess.run([exe, "start-server", "--domain-home", self.home, "--server", "s0",
                            "--master-url", f"127.0.0.1:{master}"], env=self.env, capture_output=True, text=True)
        self.started = r.returncode == 0
        if not self.started:
            sys.exit(f"start-server failed:\n{r.stdout}{r.stderr}")
        stomp_ready(self.port, "admin", "admin")
        self.pid = self.get("/v1/status")["pid"]
        if NICE:
            tids = os.listdir(f"/proc/{self.pid}/task")
            subprocess.run(["renice", "-n", "-10", "-p", *tids], check=True, stdout=subprocess.DEVNULL)
        self.login = ["--login", "admin", "--passcode", "admin"]

    def get(self, path):
        req = urllib.request.Request(f"http://127.0.0.1:{self.base}{path}", headers={"Authorization": AUTH})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def sink(self):
        return next(c for c in self.get("/v1/components")["components"] if c["name"] == "sink")

    def consumer(self):
        return self.sink()["consumers"][0]

    def stop(self):
        if self.started:
            subprocess.run([self.exe, "stop-server", "--domain-home", self.home, "--server", "s0"], capture_output=True)
        for p in self.procs:
            p.terminate()
            p.wait()


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(gen, s, mode, dest, *args):
    cmd = NICE + [gen, mode, "--port", str(s.port), "--dest", f"/queue/{dest}", "--size", str(SIZE), *s.login, *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"stomp_load {mode} failed: {r.stderr}")
    return json.loads(r.stdout)


def wait_state(s, want, secs=120):
    deadline = time.time() + secs
    while time.time() < deadline:
        c = s.sink()
        if want(c):
            return c
        time.sleep(0.05)
    sys.exit(f"the component did not reach the expected state: {c}")


def component_run(gen, s):
    """Fills `mdb` with COUNT messages while the component is not ready, lets it go, times the
    drain. Returns (msg/s, component cpu in cores)."""
    if os.path.exists(s.go):
        os.remove(s.go)
    # Not ready: restart the component so that its health probe fails until GO exists. The
    # supervisor restarts a process that exits; kill it and wait for "starting".
    before = s.sink()
    os.kill(before["pid"], 9)
    wait_state(s, lambda c: c["state"] != "ready" and c["consumers"][0]["state"] == "waiting")
    acked0 = s.consumer()["acked"]
    load(gen, s, "fill", "mdb", "--count", str(COUNT), "--producers", "4", "--consumers", "0", "--window", "128")
    open(s.go, "w").close()
    c = wait_state(s, lambda c: c["state"] == "ready")
    pid = c["pid"]
    cpu0 = cpu_s(pid)
    first = last = None
    deadline = time.time() + 600
    while time.time() < deadline:
        acked = s.consumer()["acked"] - acked0
        now = time.monotonic()
        if acked > 0 and first is None:
            first = (now, acked)
        if acked >= COUNT:
            last = (now, acked)
            break
        time.sleep(0.02)
    if last is None or first is None:
        sys.exit(f"the component acknowledged {acked} of {COUNT}: {s.consumer()}")
    elapsed = last[0] - first[0]
    cpu = (cpu_s(pid) - cpu0) / elapsed
    n = s.consumer()
    if n["nacked"]:
        print(f"  note: {n['nacked']} NACKed so far ({n.get('last_error')})", file=sys.stderr)
    return (last[1] - first[1]) / elapsed, cpu


def anchor_run(gen, s):
    t = load(gen, s, "throughput", "bench", "--producers", "4", "--consumers", "2", "--window", "128",
             "--seconds", str(DURATION))
    return t["consumed_per_s"]


def main():
    exe, gen = build()
    tmp = tempfile.mkdtemp(prefix="steward-mdb-bench-")
    s = None
    try:
        s = Server(exe, tmp)
        open(s.go, "w").close()
        wait_state(s, lambda c: c["state"] == "ready" and c["consumers"][0]["state"] == "consuming")
        print(f"steward {exe}; {SIZE} B messages; thread-pool.max {POOL}; {'nice -n -10' if NICE else 'normal priority'}; "
              f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        comp, cpus, anchor = [], [], []
        for i in range(RUNS):
            order = ["component", "stomp"] if i % 2 == 0 else ["stomp", "component"]
            for what in order:
                if what == "component":
                    rate, cpu = component_run(gen, s)
                    comp.append(rate)
                    cpus.append(cpu)
                    print(f"run {i + 1} component: {rate:8.0f} msg/s through the component "
                          f"({COUNT} queued; component cpu {cpu:.2f} core)", file=sys.stderr)
                else:
                    r = anchor_run(gen, s)
                    anchor.append(r)
                    print(f"run {i + 1} stomp    : {r:8.0f} msg/s consumed by 2 STOMP consumers", file=sys.stderr)
        med = statistics.median
        print(f"\nmedians of {RUNS} runs:")
        print(f"  through a message-driven component (answers 200 at once): {med(comp):8.0f} msg/s "
              f"(component cpu {med(cpus):.2f} core)")
        print(f"  to 2 plain STOMP consumers (stomp_load, same server):      {med(anchor):8.0f} msg/s")
        print(f"  ratio component / STOMP: {med(comp) / med(anchor):.2f}")
        print(f"  single runs: component {', '.join(f'{x:.0f}' for x in comp)}; stomp {', '.join(f'{x:.0f}' for x in anchor)}")
    finally:
        if s:
            s.stop()
        if os.environ.get("KEEP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
