#!/usr/bin/env python3
"""Benchmark: `steward admin status` on a domain of 200 servers, time to print.

    python3 benches/admin_status.py [--servers 200] [--runs 15] [--debug | --exe PATH]

Makes a domain of SERVERS servers in 20 clusters (the example's accounts: admin/admin),
`steward init`s it, runs its Master on a free port, has every server report (a heartbeat each,
as running servers do, with a pid and start time), then runs `steward admin status` RUNS times
for people and RUNS times with `--format json`, and prints the medians: the whole command, from
exec to exit (process start, two requests, rendering). For scale, the same two requests by
Python's own HTTP client in this process are printed beside it.
"""
import argparse, base64, http.client, json, os, shutil, socket, statistics, subprocess, sys
import tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from master_pin import git_run, start_master, steward_exe  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTH = "Basic " + base64.b64encode(b"admin:admin").decode()


def make_domain(path, servers):
    os.makedirs(os.path.join(path, "security"))
    for f in ("accounts.toml", "policies.toml"):
        shutil.copy(os.path.join(ROOT, "examples/domain1/security", f),
                    os.path.join(path, "security", f))
    out = ['[domain]\nname = "big"\n\n[master]\nlisten = "127.0.0.1:9736"\n']
    for i in range(servers):
        out.append(f'[servers.s{i:03}]\nnode = "localhost"\nlisten = "127.0.0.1:{20000 + 2 * i}"\n'
                   f'restart-policy = "manual"\n')
    per = max(1, servers // 20)
    for c in range(0, servers, per):
        members = ", ".join(f'"s{k:03}"' for k in range(c, min(c + per, servers)))
        out.append(f'[clusters.c{c // per}]\nservers = [{members}]\n')
    with open(os.path.join(path, "domain.toml"), "w") as f:
        f.write("\n".join(out))
    git_run(path, "init", "-q", "-b", "main")
    git_run(path, "add", "-A")
    git_run(path, "commit", "-qm", "big domain")


def request(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": AUTH}
    if body is not None:
        headers["Content-Type"] = "application/json"
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        sys.exit(f"{method} {path}: {r.status} {data[:200]!r}")
    return data


def master_with_servers(exe, tmp, n):
    """A Master of a generated domain of `n` servers, each reported RUNNING on the pin by a
    heartbeat (with a pid and a start an hour ago), as 200 real servers would leave it.
    Returns (port, master process, pinned commit)."""
    src = os.path.join(tmp, "src")
    make_domain(src, n)
    _, port, master = start_master(exe, src, tmp, subprocess.DEVNULL)
    pin = json.loads(request(port, "GET", "/v1/domain"))["pinned"]["commit"]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    for i in range(n):
        body = json.dumps({"name": f"s{i:03}", "state": "RUNNING", "mode": "DEPENDENT",
                           "applied_commit": pin, "pending_restart": [],
                           "failed_applications": [], "last_error": None,
                           "pid": 10000 + i, "started_at": started})
        request(port, "POST", f"/v1/servers/s{i:03}/heartbeat", body)
    return port, master, pin


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--servers", type=int, default=200)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--debug", action="store_true")
    p.add_argument("--exe")
    a = p.parse_args()
    exe = steward_exe(a)
    tmp = tempfile.mkdtemp(prefix="steward-admin-bench-")
    master = None
    try:
        port, master, _ = master_with_servers(exe, tmp, a.servers)
        env = dict(os.environ, STEWARD_MASTER=f"http://127.0.0.1:{port}", STEWARD_USER="admin",
                   STEWARD_PASSWORD="admin")

        def timed(args):
            times = []
            for _ in range(a.runs):
                t = time.perf_counter()
                r = subprocess.run([exe, "admin", "status", *args], env=env, capture_output=True)
                times.append((time.perf_counter() - t) * 1000)
                if r.returncode != 0:
                    sys.exit(f"admin status: {r.stderr.decode()}")
                lines = r.stdout.count(b"\n")
            return statistics.median(times), min(times), lines

        def raw():
            times = []
            for _ in range(a.runs):
                t = time.perf_counter()
                request(port, "GET", "/v1/domain")
                request(port, "GET", "/v1/servers")
                times.append((time.perf_counter() - t) * 1000)
            return statistics.median(times)

        human = timed([])
        js = timed(["--format", "json"])
        print(f"steward admin status, {a.servers} servers ({a.runs} runs each, medians):")
        print(f"  human output      {human[0]:7.1f} ms   min {human[1]:7.1f}   ({human[2]} lines)")
        print(f"  --format json     {js[0]:7.1f} ms   min {js[1]:7.1f}")
        print(f"  the two requests  {raw():7.1f} ms   (Python http.client in-process, no exec)")
    finally:
        if master:
            master.kill()
            master.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
