#!/usr/bin/env python3
"""Benchmark: how fast a pushed commit becomes a pin event, and how fast one pin fans out.

    python3 benches/master_pin.py [--runs 20] [--subscribers 200] [--fanout-runs 5]
                                  [--debug | --exe PATH] [--from DIR]

Builds and uses the release binary (`--debug`: the dev build, for a quick check; `--exe`: any
binary), runs `steward init` on the example domain
(admin/admin) and `steward master` on a free port, then:

1. push -> event: for each run, commit a one-line change and `git push` it over HTTP while one
   SSE client listens on /v1/events. Reports the push's duration, and the time from the push
   returning to the `pinned` event arriving (negative: the event arrived before `git push`
   returned; the Master holds the end of the push response until the pin is decided).
   Target (issue 3): median under 50 ms.
2. fan-out: SUBSCRIBERS SSE clients, then FANOUT_RUNS pushes; for each, the time between the
   first and the last subscriber getting the event; reports the median. Target: under 50 ms for
   200 subscribers.
3. memory: the Master's resident set size after 200 servers have reported.
"""
import argparse, base64, json, os, selectors, shutil, socket, statistics, subprocess, sys
import tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTH = "Basic " + base64.b64encode(b"admin:admin").decode()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def git_run(cwd, *args, check=True):
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null",
               GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.com",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.com")
    r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"git {' '.join(args)}: {r.stderr}")
    return r


def git(cwd, *args):
    return git_run(cwd, *args).stdout.strip()


def steward_exe(a):
    """`--exe`, else the release build (`--debug`: the dev build) of this checkout, built now."""
    if a.exe:
        return a.exe
    profile = [] if a.debug else ["--release"]
    subprocess.run(["cargo", "build", *profile, "-q", "--bin", "steward"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "debug" if a.debug else "release", "steward")


def start_master(exe, src, tmp, stderr):
    """`steward init` of `src` into TMP/home and its Master on a free port, once it listens.
    Returns (home, port, process)."""
    home = os.path.join(tmp, "home")
    subprocess.run([exe, "init", home, "--from", src], check=True, capture_output=True)
    port = free_port()
    master = subprocess.Popen([exe, "master", "--domain-home", home, "--listen", f"127.0.0.1:{port}"],
                              stderr=stderr)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.01)
    return home, port, master


def subscribe(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("events: connection closed")
        head += chunk
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        sys.exit(f"events: {head[:200]!r}")
    s.setblocking(False)
    return s


def wait_event(socks, commit, timeout=30.0):
    """Waits until every socket has seen `event: pinned` for `commit`; returns arrival times."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ, bytearray())
    arrived = {}
    deadline = time.perf_counter() + timeout
    needle = commit.encode()
    while len(arrived) < len(socks):
        left = deadline - time.perf_counter()
        if left <= 0:
            sys.exit(f"only {len(arrived)}/{len(socks)} subscribers saw {commit}")
        for key, _ in sel.select(left):
            try:
                data = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            now = time.perf_counter()
            key.data.extend(data)
            if key.fileobj not in arrived and b"event: pinned" in key.data and needle in key.data:
                arrived[key.fileobj] = now
                key.data.clear()
    sel.close()
    return list(arrived.values())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--subscribers", type=int, default=200)
    p.add_argument("--fanout-runs", type=int, default=5)
    p.add_argument("--exe")
    p.add_argument("--debug", action="store_true", help="use the dev build (not for figures)")
    p.add_argument("--from", dest="src", default=os.path.join(ROOT, "examples/domain1"))
    a = p.parse_args()
    exe = steward_exe(a)
    tmp = tempfile.mkdtemp(prefix="steward-bench-master-")
    master = None
    try:
        home, port, master = start_master(exe, a.src, tmp, subprocess.DEVNULL)
        wc = os.path.join(tmp, "wc")
        git(tmp, "clone", "-q", f"http://admin:admin@127.0.0.1:{port}/git/domain.git", wc)
        conf = os.path.join(wc, "domain.toml")

        def commit(n):
            with open(conf, "a") as f:
                f.write(f"# bench change {n}\n")
            git(wc, "commit", "-qam", f"bench {n}")
            return git(wc, "rev-parse", "HEAD")

        sub = subscribe(port)
        pushes, after = [], []
        for n in range(a.runs):
            c = commit(n)
            got = []
            reader = threading.Thread(target=lambda: got.extend(wait_event([sub], c)))
            reader.start()
            t0 = time.perf_counter()
            git(wc, "push", "-q", "origin", "main")
            t1 = time.perf_counter()
            reader.join()
            [t_ev] = got
            pushes.append((t1 - t0) * 1000)
            after.append((t_ev - t1) * 1000)
        sub.close()
        print(f"git push (whole command)     median {statistics.median(pushes):7.1f} ms   "
              f"min {min(pushes):7.1f}   max {max(pushes):7.1f}   ({a.runs} runs)")
        print(f"push returned -> pin event   median {statistics.median(after):7.1f} ms   "
              f"min {min(after):7.1f}   max {max(after):7.1f}   target < 50 ms "
              f"(negative: event before the push returned)")

        subs = [subscribe(port) for _ in range(a.subscribers)]
        spreads = []
        for n in range(a.fanout_runs):
            c = commit(a.runs + n)
            git(wc, "push", "-q", "origin", "main")
            times = wait_event(subs, c)
            spreads.append((max(times) - min(times)) * 1000)
        print(f"fan-out to {a.subscribers} subscribers     first -> last median "
              f"{statistics.median(spreads):7.1f} ms   min {min(spreads):7.1f}   max {max(spreads):7.1f}   "
              f"({a.fanout_runs} pushes)   target < 50 ms")
        for s in subs:
            s.close()
        # 200 servers reporting (heartbeats register unknown names too), then the memory.
        for i in range(200):
            body = json.dumps({"name": f"bench{i}", "state": "RUNNING", "mode": "DEPENDENT",
                               "applied_commit": c, "pending_restart": [],
                               "failed_applications": [], "last_error": None}).encode()
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(f"POST /v1/servers/bench{i}/heartbeat HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: {AUTH}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            resp = b""
            while chunk := s.recv(65536):
                resp += chunk
            s.close()
            if b" 200 " not in resp.split(b"\r\n", 1)[0]:
                sys.exit(f"heartbeat: {resp[:200]!r}")
        with open(f"/proc/{master.pid}/status") as f:
            rss = next(l for l in f if l.startswith("VmRSS")).split()[1]
        print(f"master resident memory       {int(rss) / 1024:7.1f} MiB with 200 servers reporting "
              f"and {a.subscribers} subscribers served   target < 50 MB")
    finally:
        if master:
            master.kill()
            master.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
