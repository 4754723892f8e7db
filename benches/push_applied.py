#!/usr/bin/env python3
"""Benchmark: `git push` returned -> the new commit applied on every server, for a live change,
across many machines (issue 14, scale). Goal: under 1 s for 1,000 servers.

    python3 benches/push_applied.py [--machines 200] [--per-machine 5] [--pushes 5]
                                    [--idle 10] [--debug | --exe PATH]
    python3 benches/push_applied.py --real [--machines 20] [--per-machine 5] ...

Simulated (the default): a domain of MACHINES declared nodes with PER-MACHINE servers each, its
Master (release build), and one lightweight simulated server per configured server, all in this
script's event loop. Each simulated server does what a Managed Server does on the wire: it
follows `GET /v1/events` on a connection of its own, and on a `pinned` event its machine fetches
the commit with a real `git fetch` from the Master into that machine's repository (one fetch
per machine: launchers and servers of a machine share its cache), after which the server reports
the commit applied (`POST /v1/servers/NAME/heartbeat`); between pins it reports every
heartbeat-interval (2 s). Each push changes every server's log level (live). The time of a push
is from `git push` returning to the last server's report of the commit answered by the Master.
Then the Master's CPU (user+sys) and resident memory over IDLE seconds with every simulated
server reporting and following events, and nothing pushed.

Not simulated: applying the change inside a server (about a millisecond for a log level, measured
by benches/push_to_applied.py with real servers).

`--real` runs MACHINES x PER-MACHINE real Managed Servers on this machine instead, through
benches/push_to_applied.py (one machine: one cache; same push, same measure).
"""
import argparse, asyncio, base64, os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from master_pin import git_run, start_master, steward_exe  # noqa: E402
from node_poll import measure  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTH = "Basic " + base64.b64encode(b"admin:admin").decode()
INTERVAL = 2.0


def names(machines, per):
    return [(f"n{n:03}", f"s{n:03}_{k}") for n in range(machines) for k in range(per)]


def domain_toml(machines, per, level):
    out = ['[domain]\nname = "wide"\n\n[master]\nnode = "m"\nlisten = "127.0.0.1:9736"\n'
           f'heartbeat-interval = "{INTERVAL:.0f}s"\nheartbeat-timeout = "10s"\n\n'
           '[nodes.m]\naddress = "127.0.0.1"\n']
    for n in range(machines):
        out.append(f'[nodes.n{n:03}]\naddress = "10.0.{n // 250}.{n % 250 + 1}"\n')
    for i, (node, s) in enumerate(names(machines, per)):
        out.append(f'[servers.{s}]\nnode = "{node}"\nlisten = "0.0.0.0:{20000 + 2 * (i % per)}"\n'
                   f'[servers.{s}.logging]\nlevel = "{level}"\n')
    return "\n".join(out)


def make_domain(path, machines, per):
    os.makedirs(os.path.join(path, "security"))
    for f in ("accounts.toml", "policies.toml"):
        shutil.copy(os.path.join(ROOT, "examples/domain1/security", f),
                    os.path.join(path, "security", f))
    with open(os.path.join(path, "domain.toml"), "w") as f:
        f.write(domain_toml(machines, per, "info"))
    git_run(path, "init", "-q", "-b", "main")
    git_run(path, "add", "-A")
    git_run(path, "commit", "-qm", "wide domain")


async def request(port, method, path, body=b"", headers=None):
    """One request on a connection of its own, as the servers' client makes them."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write((f"{method} {path} HTTP/1.1\r\nHost: m\r\nAuthorization: {AUTH}\r\n{extra}"
             f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
    await w.drain()
    data = await r.read()
    w.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        out = b""
        while True:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size.split(b";")[0] or b"0", 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        rest = out
    return int(head.split(b" ", 2)[1]), rest


def pkt(line):
    return f"{len(line) + 4:04x}{line}".encode()


class Machine:
    """A machine's cache: one fetch per new commit, shared by its servers. The fetch is what
    `git fetch` sends over protocol v2 (the ref advertisement, then `command=fetch` wanting the
    new pin and having the one before), made here without starting git: the client's processes
    would run on each machine, not on the Master's, and 200 of them on this one would measure this
    machine's process spawning rather than the Master."""

    def __init__(self, port, head):
        self.port, self.have, self.fetches, self.fetched = port, head, {}, {}

    def fetch(self, commit):
        if commit not in self.fetches:
            self.fetches[commit] = asyncio.ensure_future(self._fetch(commit))
        return self.fetches[commit]

    async def _fetch(self, commit):
        status, data = await request(self.port, "GET",
                                     "/git/domain.git/info/refs?service=git-upload-pack",
                                     headers={"Git-Protocol": "version=2"})
        if status != 200:
            raise RuntimeError(f"info/refs: {status} {data[:200]!r}")
        body = (pkt("command=fetch") + pkt("agent=git/2.43.0") + b"0001" + pkt("thin-pack\n")
                + pkt("no-progress\n") + pkt("ofs-delta\n") + pkt(f"want {commit}\n")
                + pkt(f"have {self.have}\n") + pkt("done\n") + b"0000")
        status, data = await request(
            self.port, "POST", "/git/domain.git/git-upload-pack", body,
            headers={"Git-Protocol": "version=2",
                     "Content-Type": "application/x-git-upload-pack-request"})
        if status != 200 or b"packfile" not in data:
            raise RuntimeError(f"upload-pack: {status} {data[:200]!r}")
        self.have = commit
        self.fetched[commit] = time.perf_counter()


class Server:
    def __init__(self, name, machine, port, applied):
        self.name, self.machine, self.port = name, machine, port
        self.commit = applied
        self.reported = {}  # commit -> when the Master answered its report
        self.seen = {}  # commit -> when its `pinned` event arrived
        self.subscribed = asyncio.Event()

    async def report(self):
        body = (f'{{"name":"{self.name}","state":"RUNNING","mode":"DEPENDENT",'
                f'"applied_commit":"{self.commit}","pid":1,"started_at":"2026-01-01T00:00:00Z"}}')
        status, data = await request(self.port, "POST", f"/v1/servers/{self.name}/heartbeat",
                                     body.encode())
        if status != 200:
            raise RuntimeError(f"heartbeat {self.name}: {status} {data[:200]!r}")
        self.reported.setdefault(self.commit, time.perf_counter())

    async def heartbeats(self):
        while True:
            await self.report()
            await asyncio.sleep(INTERVAL)

    async def events(self):
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        w.write(f"GET /v1/events?events=pinned,order HTTP/1.1\r\nHost: m\r\nAuthorization: {AUTH}\r\n\r\n".encode())
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"{self.name}: events: {head[:200]!r}")
        chunked = b"transfer-encoding: chunked" in head.lower()
        self.subscribed.set()
        buf = b""
        while True:
            if chunked:
                size = int((await r.readline()).split(b";")[0], 16)
                if size == 0:
                    raise RuntimeError(f"{self.name}: the event stream ended")
                data = await r.readexactly(size + 2)
                buf += data[:-2]
            else:
                data = await r.read(65536)
                if not data:
                    raise RuntimeError(f"{self.name}: the event stream ended")
                buf += data
            buf = buf.replace(b"\r\n", b"\n")
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                fields = dict(l.split(b":", 1) for l in frame.split(b"\n") if b":" in l[1:])
                kind = fields.get(b"event", b"").strip()
                ident = fields.get(b"id", b"").strip().decode()
                if kind == b"pinned" and ident and ident != self.commit:
                    self.seen.setdefault(ident, time.perf_counter())
                    await self.machine.fetch(ident)
                    self.commit = ident
                    await self.report()


async def simulated(a, exe):
    tmp = tempfile.mkdtemp(prefix="steward-pushapplied-")
    master = None
    try:
        src = os.path.join(tmp, "src")
        make_domain(src, a.machines, a.per_machine)
        _, port, master = start_master(exe, src, tmp, subprocess.DEVNULL)
        url = f"http://admin:admin@127.0.0.1:{port}/git/domain.git"
        clone = os.path.join(tmp, "clone")
        git_run(tmp, "clone", "-q", url, clone)
        head = git_run(clone, "rev-parse", "HEAD").stdout.strip()
        machines = {f"n{n:03}": Machine(port, head) for n in range(a.machines)}
        servers = [Server(s, machines[node], port, head)
                   for node, s in names(a.machines, a.per_machine)]
        tasks = [asyncio.ensure_future(t) for s in servers for t in (s.events(), s.heartbeats())]
        await asyncio.wait_for(asyncio.gather(*(s.subscribed.wait() for s in servers)), 120)
        await asyncio.sleep(INTERVAL * 2)  # every server reported, every connection's password checked
        times, phases = [], []
        for n in range(a.pushes):
            level = "debug" if n % 2 == 0 else "info"
            with open(os.path.join(clone, "domain.toml"), "w") as f:
                f.write(domain_toml(a.machines, a.per_machine, level))
            git_run(clone, "commit", "-qam", f"level {level}")
            commit = git_run(clone, "rev-parse", "HEAD").stdout.strip()
            await asyncio.to_thread(git_run, clone, "push", "-q", "origin", "main")
            t0 = time.perf_counter()
            deadline = t0 + 60
            while not all(commit in s.reported for s in servers):
                failed = [t for t in tasks if t.done()]
                if failed:
                    failed[0].result()  # raises what stopped a simulated server
                if time.perf_counter() > deadline:
                    late = sum(commit not in s.reported for s in servers)
                    sys.exit(f"{late} servers did not report {commit[:7]} within 60 s")
                await asyncio.sleep(0.005)
            last = lambda d: (max(x[commit] for x in d) - t0) * 1000  # noqa: E731
            times.append(last(s.reported for s in servers))
            phases.append((last(s.seen for s in servers), last(m.fetched for m in machines.values()),
                           times[-1]))
            await asyncio.sleep(INTERVAL)
        cpu, rss = await asyncio.to_thread(measure, master.pid, a.idle)
        for t in tasks:
            t.cancel()
        total = len(servers)
        print(f"{a.machines} machines x {a.per_machine} servers ({total} simulated servers), "
              f"{a.pushes} live pushes, {'debug' if a.debug else 'release'} build")
        print(f"  push returned -> applied on every server: median {statistics.median(times):.0f} ms "
              f"(runs: {', '.join(f'{t:.0f}' for t in times)}; goal for 1,000 servers: < 1000 ms)")
        mid = sorted(phases, key=lambda p: p[2])[len(phases) // 2]
        print(f"  the median push, from its return: last `pinned` event {mid[0]:.0f} ms, last "
              f"machine's fetch done {mid[1]:.0f} ms, last report answered {mid[2]:.0f} ms")
        print(f"  Master idle with {total} servers reporting every {INTERVAL:.0f} s and following "
              f"events: CPU {cpu:.1f} %, RSS {rss:.1f} MiB ({a.idle:.0f} s window)")
    finally:
        if master:
            master.kill()
            master.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--machines", type=int, default=200)
    p.add_argument("--per-machine", type=int, default=5)
    p.add_argument("--pushes", type=int, default=5)
    p.add_argument("--idle", type=float, default=10)
    p.add_argument("--real", action="store_true", help="real Managed Servers on this machine")
    p.add_argument("--exe")
    p.add_argument("--debug", action="store_true", help="use the dev build (not for figures)")
    a = p.parse_args()
    if a.real:
        args = [sys.executable, os.path.join(ROOT, "benches/push_to_applied.py"),
                "--servers", str(a.machines * a.per_machine), "--pushes", str(a.pushes)]
        sys.exit(subprocess.run(args + (["--debug"] if a.debug else [])).returncode)
    asyncio.run(simulated(a, steward_exe(a)))


if __name__ == "__main__":
    main()
