#!/usr/bin/env python3
"""Benchmark: the WebAdmin page with 200 servers, from navigation to the server list painted,
measured in a real headless Chromium.

    python3 benches/webadmin_paint.py [--servers 200] [--runs 15] [--debug | --exe PATH]

Makes a domain of SERVERS servers in 20 clusters (as benches/admin_status.py does: the example's
accounts, admin/admin), runs its Master, has every server report once, then loads `/` RUNS times
in Chromium (Debian's `chromium` and `chromium-driver`, driven over WebDriver's JSON protocol with
plain urllib), each time after `about:blank`. From the browser's Performance API it reads, relative
to the navigation's start: `steward:servers-rendered` (the mark the page's script sets once the
list is in the document), `first-contentful-paint`, and `loadEventEnd`. Medians are printed beside
the anchors: `GET /v1/servers` and `GET /` by Python's http.client in this process.
"""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from admin_status import master_with_servers, request  # noqa: E402
from master_pin import steward_exe  # noqa: E402

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Driver:
    """Just enough W3C WebDriver: a session, navigation, scripts."""

    def __init__(self):
        for path in (CHROMEDRIVER, CHROMIUM):
            if not os.path.exists(path):
                sys.exit(f"{path} is missing: apt-get install chromium chromium-driver")
        self.port = free_port()
        self.proc = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while True:
            try:
                self.call("GET", "/status")
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("chromedriver did not answer in 20 s")
                time.sleep(0.05)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1000"]}}}}
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["value"]

    def cmd(self, method, path, body=None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def close(self):
        try:
            self.call("DELETE", f"/session/{self.session}")
        except OSError:
            pass
        self.proc.kill()
        self.proc.wait()


TIMINGS = """
const mark = performance.getEntriesByName('steward:servers-rendered')[0];
const fcp = performance.getEntriesByName('first-contentful-paint')[0];
const nav = performance.getEntriesByType('navigation')[0];
return { mark: mark ? mark.startTime : null, fcp: fcp ? fcp.startTime : null,
         load: nav ? nav.loadEventEnd : null,
         rows: document.querySelectorAll('#server-rows tr').length };
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--servers", type=int, default=200)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--debug", action="store_true")
    p.add_argument("--exe")
    a = p.parse_args()
    exe = steward_exe(a)
    tmp = tempfile.mkdtemp(prefix="steward-webadmin-bench-")
    master = driver = None
    try:
        port, master, _ = master_with_servers(exe, tmp, a.servers)

        driver = Driver()
        url = f"http://admin:admin@127.0.0.1:{port}/"
        driver.cmd("POST", "/url", {"url": url})  # logs in; not counted
        marks, fcps, loads = [], [], []
        for _ in range(a.runs):
            driver.cmd("POST", "/url", {"url": "about:blank"})
            driver.cmd("POST", "/url", {"url": url})
            t = None
            deadline = time.time() + 10
            while time.time() < deadline:
                t = driver.cmd("POST", "/execute/sync", {"script": TIMINGS, "args": []})
                if t["mark"] is not None and t["fcp"] is not None:
                    break
                time.sleep(0.05)
            if t is None or t["mark"] is None or t["rows"] != a.servers:
                sys.exit(f"the page did not render {a.servers} servers: {t}")
            marks.append(t["mark"])
            fcps.append(t["fcp"] if t["fcp"] is not None else float("nan"))
            loads.append(t["load"] or float("nan"))

        def anchor(path):
            times = []
            for _ in range(a.runs):
                t0 = time.perf_counter()
                request(port, "GET", path)
                times.append((time.perf_counter() - t0) * 1000)
            return statistics.median(times)

        med = statistics.median
        print(f"WebAdmin page, {a.servers} servers, headless Chromium ({a.runs} loads, medians, "
              "from the navigation's start):")
        print(f"  server list rendered (mark)   {med(marks):7.1f} ms   min {min(marks):7.1f}")
        print(f"  first contentful paint        {med(fcps):7.1f} ms")
        print(f"  load event end                {med(loads):7.1f} ms")
        print(f"  anchor: GET /v1/servers       {anchor('/v1/servers'):7.1f} ms   "
              "(Python http.client in-process)")
        print(f"  anchor: GET / (the HTML)      {anchor('/'):7.1f} ms")
    finally:
        if driver:
            driver.close()
        if master:
            master.kill()
            master.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
