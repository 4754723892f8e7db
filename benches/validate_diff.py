#!/usr/bin/env python3
"""Benchmark: `steward validate` and `steward diff` on a generated domain of 1,000 servers,
50 clusters and 5,000 applications, whole process, median of several runs.

    python3 benches/validate_diff.py [--runs 15] [--keep DIR]

Builds the release binary, generates the domain (benches/gen_domain.py), then times each
command. Target (issue 2): each under 100 ms.
"""
import argparse, os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd, cwd, runs, ok_codes):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append((time.perf_counter() - t) * 1000)
        if r.returncode not in ok_codes:
            sys.exit(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.decode()[:2000]}")
    return times


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--keep")
    a = p.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "steward"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    exe = os.path.join(target, "release/steward")
    repo = a.keep or tempfile.mkdtemp(prefix="steward-bench-")
    if not os.path.exists(os.path.join(repo, ".git")):
        subprocess.run([sys.executable, os.path.join(ROOT, "benches/gen_domain.py"), repo], check=True)
    size = os.path.getsize(os.path.join(repo, "domain.toml"))
    print(f"domain: 1000 servers, 50 clusters, 5000 applications; domain.toml {size / 1024:.0f} KiB")
    for name, cmd, ok in [
        ("validate HEAD", [exe, "validate"], {0}),
        ("diff HEAD~1..HEAD", [exe, "diff"], {2}),
        ("diff --format json", [exe, "diff", "--format", "json"], {2}),
    ]:
        timed(cmd, repo, 2, ok)  # warm the page cache
        t = timed(cmd, repo, a.runs, ok)
        print(f"{name:24} median {statistics.median(t):7.1f} ms   min {min(t):7.1f} ms   "
              f"max {max(t):7.1f} ms   ({a.runs} runs)   target < 100 ms")


if __name__ == "__main__":
    main()
