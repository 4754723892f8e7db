#!/usr/bin/env python3
"""Benchmark: the Master's `GET /metrics` with 200 servers registered: scrape time and size, side
by side with `GET /v1/servers` (the anchor: the same registry as JSON) in the same run.

    python3 benches/metrics_scrape.py [--servers 200] [--runs 50] [--debug | --exe PATH]

Makes the domain of benches/admin_status.py (SERVERS servers, the example's accounts), runs its
Master on a free port, has every server report once (a heartbeat, as running servers do), then
times RUNS requests of each route, alternating, each on a new connection (Python's http.client
in this process, as the scraper `scraper`/`scraper` for /metrics and `admin` for /v1/servers),
and prints the medians, the minimums and the body sizes. Credentials are verified before the
runs, so both routes are answered from the Master's cache of verified passwords.
"""
import argparse, base64, http.client, json, os, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from admin_status import master_with_servers, request  # noqa: E402
from master_pin import steward_exe  # noqa: E402

SCRAPER = "Basic " + base64.b64encode(b"scraper:scraper").decode()
ADMIN = "Basic " + base64.b64encode(b"admin:admin").decode()


def timed_get(port, path, auth):
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path, headers={"Authorization": auth})
    r = c.getresponse()
    body = r.read()
    c.close()
    took = (time.perf_counter() - t) * 1000
    if r.status != 200:
        sys.exit(f"GET {path}: {r.status} {body[:200]!r}")
    return took, body


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--servers", type=int, default=200)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--debug", action="store_true")
    p.add_argument("--exe")
    a = p.parse_args()
    exe = steward_exe(a)
    tmp = tempfile.mkdtemp(prefix="steward-metrics-bench-")
    master = None
    try:
        port, master, _ = master_with_servers(exe, tmp, a.servers)
        # Warm up: the first check of each password pays Argon2; later ones hit the cache.
        _, metrics = timed_get(port, "/metrics", SCRAPER)
        _, servers = timed_get(port, "/v1/servers", ADMIN)
        running = [line for line in metrics.decode().splitlines()
                   if line.startswith('steward_master_servers{state="RUNNING",mode="DEPENDENT"}')]
        if running != [f'steward_master_servers{{state="RUNNING",mode="DEPENDENT"}} {a.servers}']:
            sys.exit(f"unexpected servers gauge: {running}")
        m_times, s_times = [], []
        for _ in range(a.runs):
            m_times.append(timed_get(port, "/metrics", SCRAPER)[0])
            s_times.append(timed_get(port, "/v1/servers", ADMIN)[0])
        lines = metrics.count(b"\n")
        print(f"Master with {a.servers} servers registered, {a.runs} requests each "
              f"(new connection each; median / min; body size):")
        print(f"  GET /metrics      {statistics.median(m_times):6.2f} ms  {min(m_times):6.2f} ms"
              f"  {len(metrics):7d} bytes  {lines:4d} lines")
        print(f"  GET /v1/servers   {statistics.median(s_times):6.2f} ms  {min(s_times):6.2f} ms"
              f"  {len(servers):7d} bytes  (the anchor)")
    finally:
        if master:
            master.kill()
            master.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
