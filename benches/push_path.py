#!/usr/bin/env python3
"""Benchmark (issue 14, item 5): a `git push` through the Master against a plain push.

    python3 benches/push_path.py [--runs 20] [--debug | --exe PATH] [--from DIR] [--trace]

Builds and uses the release binary (`--debug`: the dev build; `--exe`: any binary), runs
`steward init` on the example domain (admin/admin) and `steward master` on a free port, then, in
the same run and alternating so that the machine's noise hits both alike:

- through the Master: commit a one-line change and `git push` it over HTTP; the push returns
  once the commit is validated and pinned (the Master holds the report until then);
- the anchor: the same kind of commit pushed by stock git to a plain bare repository on the
  same disk (`git push /path/bare.git`, no hook, no HTTP).

Prints the medians side by side and the ratio. Goal: at most 2x the plain push. Also the CPU
time a push costs (user + system of every process it ran, the Master's included): unlike the
wall clock, the load of a shared machine does not stretch it.
`--trace`: after the runs, one more push through the Master with `GIT_TRACE2_PERF` on the
client, and its phases (time from the start of the command) printed, to see where time goes.
"""
import argparse, os, resource, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from master_pin import ROOT, git, git_run, start_master, steward_exe  # noqa: E402


def cpu_ms(pid):
    """CPU time (user + system, ms) of this script's finished children, plus, with `pid`, that
    process's own and its finished children's (from /proc: clock ticks)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = (ru.ru_utime + ru.ru_stime) * 1000
    if pid is not None:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        total += ticks * 1000 / os.sysconf("SC_CLK_TCK")
    return total


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--exe")
    p.add_argument("--debug", action="store_true", help="use the dev build (not for figures)")
    p.add_argument("--from", dest="src", default=os.path.join(ROOT, "examples/domain1"))
    p.add_argument("--trace", action="store_true")
    a = p.parse_args()
    exe = steward_exe(a)
    tmp = tempfile.mkdtemp(prefix="steward-bench-push-")
    master = None
    try:
        home, port, master = start_master(exe, a.src, tmp, subprocess.DEVNULL)
        wc = os.path.join(tmp, "wc")
        git(tmp, "clone", "-q", f"http://admin:admin@127.0.0.1:{port}/git/domain.git", wc)
        bare = os.path.join(tmp, "plain.git")
        git(tmp, "clone", "-q", "--bare", wc, bare)
        plain = os.path.join(tmp, "plain-wc")
        git(tmp, "clone", "-q", bare, plain)

        def commit(cwd, n):
            with open(os.path.join(cwd, "domain.toml"), "a") as f:
                f.write(f"# bench change {n}\n")
            git(cwd, "commit", "-qam", f"bench {n}")

        def timed_push(cwd):
            t0 = time.perf_counter()
            git(cwd, "push", "-q", "origin", "main")
            return (time.perf_counter() - t0) * 1000

        # One warm-up each (credential cache, page cache), not counted.
        for cwd in (wc, plain):
            commit(cwd, -1)
            timed_push(cwd)
        master_ms, plain_ms = [], []
        master_cpu, plain_cpu = [], []
        for n in range(a.runs):
            commit(wc, n)
            c0 = cpu_ms(master.pid)
            master_ms.append(timed_push(wc))
            time.sleep(0.2)  # the Master's housekeeping after the answer counts too
            master_cpu.append(cpu_ms(master.pid) - c0)
            commit(plain, n)
            c0 = cpu_ms(None)
            plain_ms.append(timed_push(plain))
            plain_cpu.append(cpu_ms(None) - c0)
        m, b = statistics.median(master_ms), statistics.median(plain_ms)
        print(f"push through the Master (validated, pinned)  median {m:7.1f} ms   "
              f"min {min(master_ms):6.1f}   max {max(master_ms):6.1f}   ({a.runs} runs)")
        print(f"anchor: plain push to a bare repository      median {b:7.1f} ms   "
              f"min {min(plain_ms):6.1f}   max {max(plain_ms):6.1f}   ({a.runs} runs)")
        print(f"ratio {m / b:4.2f}x   goal <= 2.00x")
        # CPU time of every process a push ran (the client's and, through the Master, the
        # Master's and its children's): what the load on a shared machine cannot stretch.
        mc, pc = sum(master_cpu) / a.runs, sum(plain_cpu) / a.runs
        print(f"CPU per push (user+sys, all processes): through the Master {mc:6.1f} ms, "
              f"plain {pc:6.1f} ms, ratio {mc / pc:4.2f}x")
        if a.trace:
            commit(wc, a.runs)
            perf = os.path.join(tmp, "trace2.txt")
            os.environ["GIT_TRACE2_PERF"] = perf
            git_run(wc, "push", "-q", "origin", "main")
            del os.environ["GIT_TRACE2_PERF"]
            with open(perf) as f:
                for line in f:
                    cols = [c.strip() for c in line.split("|")]
                    if len(cols) > 8 and cols[2] in ("start", "exit", "child_start",
                                                      "child_exit", "region_enter",
                                                      "region_leave", "atexit"):
                        print("  " + " | ".join(cols[1:4] + cols[5:6] + cols[8:9])[:160])
    finally:
        if master:
            master.kill()
            master.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
