#!/usr/bin/env python3
"""Benchmark: the Master under floods (issue 8), and idle.

    python3 benches/master_flood.py [--flood 300] [--idle 10000] [--cpu-seconds 10]
                                    [--debug | --exe PATH] [--from DIR]

Builds and uses the release binary (`--debug`: the dev build, for a quick check; `--exe`: any
binary), runs `steward init` on the example domain (admin/admin) and `steward master` on a free
port of 127.0.0.1, then:

1. idle: the Master's CPU time (utime + stime from /proc/PID/stat) over CPU_SECONDS of idleness,
   as a percentage of one core, and its ref-watcher wake-ups meanwhile. Target: under 1 %.
2. password flood: FLOOD concurrent `GET /v1/domain` with `admin:wrong<i>`, each on its own
   connection, while one client keeps asking `/healthz` and another `GET /v1/domain` as admin
   (logged in before the flood). Reports the Master's peak RSS, the latencies (p50/p99/max) of
   both, and the answers the flood got. Targets: RSS under 100 MB, both answered within 1 s.
3. connection flood: IDLE connections opened and held without a byte sent, then `/healthz`
   latencies, a heartbeat of server1 and a `git push`, with the Master's RSS. Target: all served.

Everything stays on 127.0.0.1 and stops by itself (the flood's threads end with their answers;
the idle connections are closed at the end, and the Master closes them after 10 s anyway).
"""
import argparse, base64, json, os, resource, shutil, socket, statistics, subprocess, sys
import tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


ADMIN = basic("admin", "admin")


# Shared with master_pin: the git helper, and building and starting the Master.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from master_pin import git_run as git, start_master, steward_exe  # noqa: E402


def request(port, method, path, auth=None, body=None, timeout=30.0):
    """One request on its own connection; returns (status, headers text, body, seconds)."""
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        if auth:
            head += f"Authorization: {auth}\r\n"
        data = b""
        if body is not None:
            data = body.encode()
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        s.sendall((head + "\r\n").encode() + data)
        raw = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    finally:
        s.close()
    took = time.perf_counter() - t0
    text = raw.decode("utf-8", "replace")
    headers, _, rest = text.partition("\r\n\r\n")
    parts = headers.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, headers, rest, took


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def summary(name, xs):
    ms = [x * 1000 for x in xs]
    return (f"{name}: n={len(ms)} p50={pct(ms, 0.5):.1f} ms p99={pct(ms, 0.99):.1f} ms "
            f"max={max(ms):.1f} ms")


class Sampler(threading.Thread):
    """Samples the Master's RSS every 20 ms until stopped."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)


def wakeups(port):
    _, _, body, _ = request(port, "GET", "/v1/domain", ADMIN)
    return json.loads(body)["master"]["watch_wakeups"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--flood", type=int, default=300)
    p.add_argument("--idle", type=int, default=10000)
    p.add_argument("--cpu-seconds", type=float, default=10.0)
    p.add_argument("--exe")
    p.add_argument("--debug", action="store_true", help="use the dev build (not for figures)")
    p.add_argument("--from", dest="src", default=os.path.join(ROOT, "examples/domain1"))
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < a.idle + 256:
        sys.exit(f"--idle {a.idle} needs more descriptors than the hard limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    exe = steward_exe(a)
    tmp = tempfile.mkdtemp(prefix="steward-bench-flood-")
    master = None
    try:
        _, port, master = start_master(exe, a.src, tmp, open(os.path.join(tmp, "master.log"), "w"))
        pid = master.pid
        status, _, body, _ = request(port, "GET", "/v1/domain", ADMIN)  # admin now cached
        pinned = json.loads(body)["pinned"]["commit"]
        wc = os.path.join(tmp, "wc")
        git(tmp, "clone", "-q", f"http://admin:admin@127.0.0.1:{port}/git/domain.git", wc)
        print(f"binary: {exe}")
        print(f"Master RSS at rest: {rss_mb(pid):.1f} MB")

        # 1. idle
        time.sleep(1.0)
        w0, c0, t0 = wakeups(port), cpu_ticks(pid), time.perf_counter()
        time.sleep(a.cpu_seconds)
        c1, t1, w1 = cpu_ticks(pid), time.perf_counter(), wakeups(port)
        hz = os.sysconf("SC_CLK_TCK")
        idle_pct = (c1 - c0) / hz / (t1 - t0) * 100
        print(f"idle: CPU {idle_pct:.2f} % of one core over {t1 - t0:.1f} s "
              f"({c1 - c0} ticks); watcher wake-ups {w1 - w0}  (target < 1 %)")

        # 2. password flood
        sampler = Sampler(pid)
        sampler.start()
        answers, lock = {}, threading.Lock()

        def guess(i):
            try:
                st = request(port, "GET", "/v1/domain", basic("admin", f"wrong{i}"), timeout=60)[0]
            except OSError as e:
                st = type(e).__name__
            with lock:
                answers[st] = answers.get(st, 0) + 1

        health, valid = [], []
        flood = [threading.Thread(target=guess, args=(i,)) for i in range(a.flood)]
        for t in flood:
            t.start()
        while any(t.is_alive() for t in flood):
            st, _, _, took = request(port, "GET", "/healthz")
            assert st == 200, st
            health.append(took)
            st, _, _, took = request(port, "GET", "/v1/domain", ADMIN)
            assert st == 200, st
            valid.append(took)
        for t in flood:
            t.join()
        sampler.stop.set()
        sampler.join()
        print(f"password flood ({a.flood} concurrent wrong passwords): peak RSS "
              f"{sampler.peak:.1f} MB (target < 100 MB); answers {dict(sorted(answers.items(), key=str))}")
        print("  " + summary("/healthz", health) + "  (target < 1 s)")
        print("  " + summary("valid user GET /v1/domain", valid) + "  (target < 1 s)")

        # 3. connection flood
        sampler = Sampler(pid)
        sampler.start()
        held = []
        t0 = time.perf_counter()
        for _ in range(a.idle):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            held.append(s)
        opened = time.perf_counter() - t0
        health = []
        for _ in range(50):
            st, _, _, took = request(port, "GET", "/healthz")
            assert st == 200, st
            health.append(took)
        report = json.dumps({"name": "server1", "state": "running", "mode": "DEPENDENT",
                             "applied_commit": pinned, "pending_restart": [],
                             "failed_applications": [], "last_error": None})
        st, _, _, beat = request(port, "POST", "/v1/servers/server1/heartbeat", ADMIN, report)
        with open(os.path.join(wc, "domain.toml"), "a") as f:
            f.write("\n# bench\n")
        git(wc, "commit", "-qam", "bench")
        tp = time.perf_counter()
        pushed = git(wc, "push", "-q", "origin", "main", check=False)
        push_s = time.perf_counter() - tp
        _, _, body, _ = request(port, "GET", "/v1/domain", ADMIN)
        conns = json.loads(body)["master"]["connections"]
        sampler.stop.set()
        sampler.join()
        for s in held:
            s.close()
        print(f"connection flood ({a.idle} idle connections, opened in {opened:.2f} s): "
              f"peak RSS {sampler.peak:.1f} MB; Master holds {conns['open']} (cap {conns['cap']})")
        print("  " + summary("/healthz", health))
        print(f"  heartbeat: {st} in {beat * 1000:.1f} ms; git push: "
              f"{'ok' if pushed.returncode == 0 else 'FAILED ' + pushed.stderr.strip()} "
              f"in {push_s * 1000:.0f} ms")
    finally:
        if master:
            master.terminate()
            try:
                master.wait(10)
            except subprocess.TimeoutExpired:
                master.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
