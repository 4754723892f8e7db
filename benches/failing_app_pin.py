#!/usr/bin/env python3
"""Benchmark: how long a live pin takes to apply while an application's deployment keeps failing
(issue 8, item 12). Median of several pushes.

    python3 benches/failing_app_pin.py [--mib 300] [--pushes 7] [--exe PATH]

One server; an application whose archive (a .tar.gz) holds a large entry of MIB MiB followed by a
`../escape` entry, so each deployment attempt unpacks MIB MiB and is then refused. Then live
changes (the log level) are pushed, and the time from `git push` returning to the server
reporting the commit as applied (GET /v1/status, polled every 2 ms) is measured. With the
retry on the pin's path, every pin waits for one failing attempt; with background retries it
does not. `--exe` runs another `steward` binary (e.g. an older build) for comparison; by default
the debug binary of this checkout.
"""
import argparse, io, os, statistics, subprocess, sys, tarfile, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from push_to_applied import ROOT, domain, free_ports, git, start_domain, status  # noqa: E402

APP = '\n[applications.bad]\nkind = "static"\nsource = "apps/bad.tar.gz"\ncontext-path = "/bad"\ntargets = ["s0"]\n'


class Zeros(io.RawIOBase):
    def __init__(self, n):
        self.left = n

    def readable(self):
        return True

    def readinto(self, b):
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def bad_archive(path, mib):
    with tarfile.open(path, "w:gz", compresslevel=1) as t:
        big = tarfile.TarInfo("big.bin")
        big.size = mib << 20
        t.addfile(big, io.BufferedReader(Zeros(big.size)))
        evil = tarfile.TarInfo("../escape")
        evil.size = 4
        t.addfile(evil, io.BytesIO(b"evil"))


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--mib", type=int, default=300)
    a.add_argument("--pushes", type=int, default=7)
    a.add_argument("--exe", default=None)
    a = a.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    exe = a.exe or os.path.join(target, "debug/steward")
    tmp = tempfile.mkdtemp(prefix="steward-failing-bench-")
    src, home, clone = (os.path.join(tmp, d) for d in ("src", "home", "clone"))
    master, base = free_ports(2)
    os.makedirs(os.path.join(src, "apps"))
    bad_archive(os.path.join(src, "apps/bad.tar.gz"), a.mib)
    env, procs = start_domain(exe, src, home, domain(master, [base], "info") + APP, master)
    try:
        r = subprocess.run([exe, "start-server", "--domain-home", home, "--server", "s0",
                            "--master-url", f"127.0.0.1:{master}"], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"start-server failed:\n{r.stdout}{r.stderr}")
        if status(base).get("failed_applications") != ["bad"]:
            sys.exit(f"expected the application to fail: {status(base)}")
        git(tmp, "clone", "-q", f"http://admin:admin@127.0.0.1:{master}/git/domain.git", clone)
        times = []
        for n in range(a.pushes):
            level = "debug" if n % 2 == 0 else "info"
            with open(os.path.join(clone, "domain.toml"), "w") as f:
                f.write(domain(master, [base], level) + APP)
            git(clone, "commit", "-qam", f"level {level}")
            head = git(clone, "rev-parse", "HEAD")
            git(clone, "push", "-q", "origin", "main")
            t0 = time.perf_counter()
            while status(base).get("applied_commit") != head:
                if time.perf_counter() - t0 > 300:
                    sys.exit(f"s0 did not apply {head[:7]} within 300 s")
                time.sleep(0.002)
            times.append((time.perf_counter() - t0) * 1000)
        print(f"{os.path.relpath(exe)}: failing {a.mib} MiB archive, {a.pushes} live pushes: push returned -> applied: "
              f"median {statistics.median(times):.0f} ms, min {min(times):.0f} ms, max {max(times):.0f} ms")
    finally:
        subprocess.run([exe, "stop-server", "--domain-home", home, "--server", "s0"], capture_output=True)
        for p in procs:
            p.terminate()
            p.wait()
        import shutil
        if os.environ.get("STEWARD_KEEP_TMP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
