#!/usr/bin/env python3
"""Benchmark: `steward validate --worktree` on files full of problems, whole process, median of
several runs, with peak memory (issue 8, item 3).

    python3 benches/validate_problems.py [--runs 5]

Builds the release binary, then validates `domain.toml` files of `= = =` lines (four syntax
errors each): 10,000 and 50,000 lines, one just under the 4 MiB file limit, one of duplicate
keys just under it, and a 30 MB file (refused by the size limit). Prints each figure beside the
behaviour the issue measured before the fix.
"""
import argparse, os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(exe, repo):
    """Seconds and peak RSS (MiB) of one `steward validate --worktree` in `repo`."""
    t = time.perf_counter()
    p = subprocess.Popen([exe, "validate", "--worktree", "--format", "json"], cwd=repo,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate()
    secs = time.perf_counter() - t
    if p.returncode != 1:
        sys.exit(f"validate exited {p.returncode}: {err.decode()[:2000]}")
    return secs, len(out)


def peak_rss_mib(exe, repo):
    pid = os.fork()
    if pid == 0:
        os.chdir(repo)
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.execv(exe, [exe, "validate", "--worktree", "--format", "json"])
    _, _, usage = os.wait4(pid, 0)
    return usage.ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--debug", action="store_true", help="time the debug build (no release build)")
    a = p.parse_args()
    profile = "debug" if a.debug else "release"
    cmd = ["cargo", "build", "-q", "--bin", "steward"] + ([] if a.debug else ["--release"])
    subprocess.run(cmd, cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    exe = os.path.join(target, profile, "steward")
    print(f"{profile} build")
    cases = [
        ("10k '= = =' lines", "= = =\n" * 10_000, "18 s"),
        ("50k '= = =' lines", "= = =\n" * 50_000, "> 60 s"),
        ("4 MiB of '= = =' lines", "= = =\n" * ((4 << 20) // 6 - 1), "(not measured)"),
        ("4 MiB of duplicate keys", "a=1\n" * ((4 << 20) // 4 - 1), "(not measured)"),
        ("30 MB file", "= = =\n" * 5_000_000, "> 120 s, 9.4 GB"),
    ]
    with tempfile.TemporaryDirectory(prefix="steward-bench-") as tmp:
        for name, text, anchor in cases:
            repo = os.path.join(tmp, str(abs(hash(name))))
            os.makedirs(repo)
            with open(os.path.join(repo, "domain.toml"), "w") as f:
                f.write(text)
            run(exe, repo)  # warm the page cache
            times, size = [], 0
            for _ in range(a.runs):
                secs, size = run(exe, repo)
                times.append(secs)
            rss = peak_rss_mib(exe, repo)
            print(f"{name:26} {len(text) / 1e6:6.1f} MB   median {statistics.median(times):6.3f} s   "
                  f"max {max(times):6.3f} s   peak RSS {rss:6.0f} MiB   output {size / 1024:5.0f} KiB   "
                  f"({a.runs} runs)   before: {anchor}")


if __name__ == "__main__":
    main()
