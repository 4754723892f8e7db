#!/usr/bin/env python3
"""Benchmark: `steward admin set --dry-run` against `steward diff` of the same change.

    python3 benches/admin_set.py [--servers 200] [--clusters 20] [--apps 1000] [--runs 9]
                                 [--debug | --exe PATH]

Makes a domain with benches/gen_domain.py, `steward init`s it and runs its Master on a free
port. Then, RUNS times each, medians printed:

- `steward admin set servers.s1.logging.level=warn --dry-run`: fetch into the work clone, reset,
  edit with toml_edit, validate, plan from the pin, print (the first run, which clones, is
  reported apart);
- `steward diff --repo CLONE --worktree` on a clone holding the same edit: validate and plan
  alone, the floor of what `admin set` can cost.
"""
import argparse, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from master_pin import git_run, start_master, steward_exe  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd, env, ok):
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = (time.perf_counter() - t) * 1000
    if r.returncode not in ok:
        sys.exit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return dt, r.stdout


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--servers", type=int, default=200)
    p.add_argument("--clusters", type=int, default=20)
    p.add_argument("--apps", type=int, default=1000)
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--debug", action="store_true")
    p.add_argument("--exe")
    a = p.parse_args()
    exe = steward_exe(a)
    with tempfile.TemporaryDirectory(prefix="steward-admin-set-") as tmp:
        src = os.path.join(tmp, "src")
        subprocess.run([sys.executable, os.path.join(ROOT, "benches/gen_domain.py"), src,
                        "--servers", str(a.servers), "--clusters", str(a.clusters),
                        "--apps", str(a.apps)], check=True)
        with open(os.path.join(tmp, "master.log"), "w") as log:
            _, port, master = start_master(exe, src, tmp, log)
        try:
            env = dict(os.environ, STEWARD_MASTER=f"http://127.0.0.1:{port}", STEWARD_USER="admin",
                       STEWARD_PASSWORD="admin", XDG_CACHE_HOME=os.path.join(tmp, "cache"))
            env.pop("STEWARD_CREDENTIALS", None)
            set_cmd = [exe, "admin", "set", "servers.s1.logging.level=warn", "--dry-run"]
            first, out = timed(set_cmd, env, (0,))
            if "[LIVE]" not in out:
                sys.exit(f"no marked plan:\n{out}")
            sets = [timed(set_cmd, env, (0,))[0] for _ in range(a.runs)]

            clone = os.path.join(tmp, "clone")
            git_run(tmp, "clone", "-q", f"http://admin:admin@127.0.0.1:{port}/git/domain.git", clone)
            path = os.path.join(clone, "domain.toml")
            with open(path) as f:
                text = f.read()
            head = "[servers.s1.logging]\nlevel = "
            i = text.index(head) + len(head)
            j = text.index("\n", i)
            with open(path, "w") as f:
                f.write(text[:i] + '"warn"' + text[j:])
            diff_cmd = [exe, "diff", "--repo", clone, "--worktree"]
            diffs = [timed(diff_cmd, env, (2,))[0] for _ in range(a.runs)]
        finally:
            master.kill()
            master.wait()
    med_set, med_diff = statistics.median(sets), statistics.median(diffs)
    print(f"domain: {a.servers} servers, {a.clusters} clusters, {a.apps} applications; "
          f"{a.runs} runs each; exe {exe}")
    print(f"admin set --dry-run, first (clones):  {first:8.1f} ms")
    print(f"admin set --dry-run, median:          {med_set:8.1f} ms")
    print(f"diff --worktree, same change, median: {med_diff:8.1f} ms")
    print(f"ratio: {med_set / med_diff:.2f}x")


if __name__ == "__main__":
    main()
