#!/usr/bin/env python3
"""Benchmark: the launcher, start to RUNNING, and what an incremental fetch transfers.

    python3 benches/launcher_start.py [--runs 21] [--exe PATH] [--history 1000]

Uses an already built binary (default: target/release/steward if present, else target/debug);
build it first (`cargo build --release --bin steward` for numbers worth publishing).

1. warm start: `steward init` on the example domain (admin/admin), `steward master` on a free
   port, one cold start of server1 (fills the cache), then RUNS starts with the Master up and the
   cache warm. Each start is timed from exec of `steward start-server` to its exit, which happens
   when the server has reported READY (sd_notify) — i.e. start to RUNNING. Reports the median,
   the 90th percentile and the launcher's own figure (Launcher-0040). Target (issue 4): median
   under 100 ms; JEUS's seed log shows 4,079 ms.
2. fetch sizes: a Git URL with HISTORY commits. A cold cache fetches the tip only (depth 1); then
   one more commit is pushed and the next start fetches only its objects (Launcher-0021 reports
   objects and bytes). Both are compared with the whole history (what a full clone carries).
"""
import argparse, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def git(cwd, *args, stdin=None):
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null",
               GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.com",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.com")
    r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       input=stdin)
    if r.returncode != 0:
        sys.exit(f"git {' '.join(args)}: {r.stderr}")
    return r.stdout.strip()


def domain(tmp, port):
    src = os.path.join(tmp, "src")
    shutil.copytree(os.path.join(ROOT, "examples/domain1"), src)
    path = os.path.join(src, "domain.toml")
    with open(path) as f:
        text = f.read().replace("127.0.0.1:9741", f"127.0.0.1:{port}")
    with open(path, "w") as f:
        f.write(text)
    git(src, "init", "-q", "-b", "main")
    git(src, "add", "-A")
    git(src, "commit", "-qm", "the example domain")
    return src


def run(exe, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "STEWARD_USER", "STEWARD_PASSWORD")}
    t = time.perf_counter()
    r = subprocess.run([exe, *args], capture_output=True, text=True, env=env)
    return time.perf_counter() - t, r


def wait_http(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing listens on {port}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--history", type=int, default=1000)
    ap.add_argument("--exe")
    a = ap.parse_args()
    exe = a.exe
    if not exe:
        rel = os.path.join(ROOT, "target/release/steward")
        exe = rel if os.path.exists(rel) else os.path.join(ROOT, "target/debug/steward")
    print(f"binary: {exe}")
    tmp = tempfile.mkdtemp(prefix="steward-bench-launcher-")
    master = None
    try:
        port = free_port()
        src = domain(tmp, port)
        mhome = os.path.join(tmp, "master")
        _, r = run(exe, "init", mhome, "--from", src)
        if r.returncode:
            sys.exit(r.stderr)
        mport = free_port()
        master = subprocess.Popen([exe, "master", "--domain-home", mhome, "--listen",
                                   f"127.0.0.1:{mport}"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        wait_http(mport)
        home = os.path.join(tmp, "home")
        start = ["start-server", "--domain-home", home, "--server", "server1",
                 "--master-url", f"127.0.0.1:{mport}", "-u", "admin", "-p", "admin"]
        stop = ["stop-server", "--domain-home", home, "--server", "server1"]
        cold, r = run(exe, *start)
        if r.returncode:
            sys.exit(r.stdout + r.stderr)
        run(exe, *stop)
        walls, own = [], []
        for _ in range(a.runs):
            wall, r = run(exe, *start)
            if r.returncode:
                sys.exit(r.stdout + r.stderr)
            walls.append(wall * 1000)
            m = re.search(r"RUNNING \((\d+) ms\)", r.stdout)
            if m:
                own.append(int(m.group(1)))
            run(exe, *stop)
        walls.sort()
        p90 = walls[min(len(walls) - 1, int(len(walls) * 0.9))]
        print(f"cold start (empty cache, fetch from the Master): {cold * 1000:.0f} ms")
        print(f"warm start to RUNNING, {a.runs} runs: median {statistics.median(walls):.1f} ms, "
              f"p90 {p90:.1f} ms, min {walls[0]:.1f} ms "
              f"(launcher's own figure: median {statistics.median(own)} ms)")

        # Incremental fetch on a long history.
        hist = os.path.join(tmp, "hist")
        shutil.copytree(src, hist)
        stream = []
        for i in range(1, a.history + 1):
            content = "".join(f"commit {i:04} line {j:02} ........\n" for j in range(64))
            msg = f"history {i}"
            stream.append(f"commit refs/heads/main\ncommitter b <b@example.com> {1700000000 + i} +0000\n"
                          f"data {len(msg)}\n{msg}\n")
            if i == 1:
                stream.append("from refs/heads/main^0\n")
            stream.append(f"M 644 inline notes/history.txt\ndata {len(content)}\n{content}\n")
        git(hist, "fast-import", "--quiet", stdin="".join(stream))
        git(hist, "reset", "-q", "--hard", "main")
        bare = os.path.join(tmp, "hist.git")
        git(tmp, "clone", "-q", "--bare", hist, bare)
        hist_objects = len(git(bare, "rev-list", "--objects", "--all").splitlines())
        size_pack = next(int(l.split(":")[1]) for l in git(bare, "count-objects", "-v").splitlines()
                         if l.startswith("size-pack:"))
        h2 = os.path.join(tmp, "home2")
        s2 = ["start-server", "--domain-home", h2, "--server", "server1", "--git-url", bare]
        st2 = ["stop-server", "--domain-home", h2, "--server", "server1"]

        def transfer(out):
            m = re.search(r"\[Launcher-0021\].*?, (\d+) objects, (\d+) bytes\)", out)
            return (int(m.group(1)), int(m.group(2))) if m else None

        t_full, r = run(exe, *s2)
        full = transfer(r.stdout)
        run(exe, *st2)
        path = os.path.join(hist, "domain.toml")
        with open(path) as f:
            text = f.read().replace("Example domain:", "Example domain, edited:")
        with open(path, "w") as f:
            f.write(text)
        git(hist, "commit", "-qam", "one more")
        git(hist, "push", "-q", bare, "main")
        t_inc, r = run(exe, *s2)
        inc = transfer(r.stdout)
        run(exe, *st2)
        print(f"history of {a.history + 1} commits: {hist_objects} objects, pack {size_pack} KiB "
              f"(what a full clone carries)")
        print(f"  cold cache (depth-1 fetch): {full[0]} objects, {full[1]} bytes "
              f"({t_full * 1000:.0f} ms to RUNNING)")
        print(f"  one new commit: {inc[0]} objects, {inc[1]} bytes "
              f"({t_inc * 1000:.0f} ms to RUNNING)")
    finally:
        if master:
            master.kill()
            master.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
