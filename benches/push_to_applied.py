#!/usr/bin/env python3
"""Benchmark: from `git push` returning to every Managed Server reporting the new commit as
applied (GET /v1/status), for a live change. Median of several pushes.

    python3 benches/push_to_applied.py [--servers 3] [--pushes 15] [--debug]

Builds the release binary (or uses the debug one with --debug), generates a domain of N
servers on free loopback ports, runs `steward init`, the Master and every server through its
launcher, then pushes live changes (the log level of every server) and polls each server's
status every 2 ms. Targets (issue 5): < 100 ms with 3 servers, < 1 s with 50.
"""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HASH = "$argon2id$v=19$m=19456,t=2,p=1$3g8LTxBToLWYGF26MIvccw$mPeItzmyCRTynzZOK2s1cyWXKYOD+N7RSnZE0QqSWFk"


def free_ports(n):
    """n free ports, no two adjacent: a server without listeners takes its base port + 1. Taken
    below the kernel's ephemeral range: with a hundred servers running, an outgoing connection's
    ephemeral port can otherwise take a base port between this choice and the server's bind."""
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    socks, ports = [], []
    candidate = max(1024, low - 4 * n - 4000) + os.getpid() % 2000
    while len(ports) < n:
        p, candidate = candidate, candidate + 3
        if p + 1 >= low:
            sys.exit("no free ports below the ephemeral range")
        s, probe = socket.socket(), socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            probe.bind(("127.0.0.1", p + 1))  # the default web listener takes base + 1
        except OSError:
            s.close()
            continue
        finally:
            probe.close()
        socks.append(s)
        ports.append(p)
    for s in socks:
        s.close()
    return ports


def domain(master, bases, level):
    out = [f'[domain]\nname = "bench"\n\n[master]\nlisten = "127.0.0.1:{master}"\nheartbeat-interval = "2s"\n']
    for i, p in enumerate(bases):
        out.append(f'[servers.s{i}]\nlisten = "127.0.0.1:{p}"\n[servers.s{i}.logging]\nlevel = "{level}"\n')
    return "\n".join(out)


def git(cwd, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@e", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@e")
    return subprocess.run(["git", *args], cwd=cwd, check=True, env=env, capture_output=True, text=True).stdout.strip()


def status(port):
    # The route needs servers:read: the administrator of start_domain's accounts.
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/status", headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return json.load(r)
    except Exception:
        return {}


def start_domain(exe, src, home, domain_toml, master):
    """Writes the domain repository `src` (domain.toml, an admin account), runs `steward init`
    into `home` and starts its Master; returns the admin's environment and the processes started
    (the Master), once the Master answers /healthz."""
    os.makedirs(os.path.join(src, "security"), exist_ok=True)
    with open(os.path.join(src, "domain.toml"), "w") as f:
        f.write(domain_toml)
    with open(os.path.join(src, "security/accounts.toml"), "w") as f:
        f.write(f'[users.admin]\npassword = "{HASH}"\ngroups = ["administrators"]\n[groups.administrators]\n')
    with open(os.path.join(src, "security/policies.toml"), "w") as f:
        f.write('[roles.administrator]\npermissions = ["*"]\ngroups = ["administrators"]\n')
    subprocess.run([exe, "init", home, "--from", src], check=True, capture_output=True)
    env = dict(os.environ, STEWARD_USER="admin", STEWARD_PASSWORD="admin")
    procs = [subprocess.Popen([exe, "master", "--domain-home", home], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{master}/healthz", timeout=1)
            break
        except Exception:
            time.sleep(0.05)
    return env, procs


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--servers", type=int, default=3)
    a.add_argument("--pushes", type=int, default=15)
    a.add_argument("--debug", action="store_true")
    a.add_argument("--keep", action="store_true", help="keep the temporary domain home (logs) and print its path")
    a = a.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    if a.debug:
        exe = os.path.join(target, "debug/steward")
    else:
        subprocess.run(["cargo", "build", "--release", "-q", "--bin", "steward"], cwd=ROOT, check=True)
        exe = os.path.join(target, "release/steward")
    tmp = tempfile.mkdtemp(prefix="steward-push-bench-")
    src, home, clone = (os.path.join(tmp, d) for d in ("src", "home", "clone"))
    ports = free_ports(a.servers + 1)
    master, bases = ports[0], ports[1:]
    env, procs = start_domain(exe, src, home, domain(master, bases, "info"), master)
    try:
        for i in range(a.servers):
            r = subprocess.run([exe, "start-server", "--domain-home", home, "--server", f"s{i}",
                                "--master-url", f"127.0.0.1:{master}"], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"start-server s{i} failed:\n{r.stdout}{r.stderr}")
        git(tmp, "clone", "-q", f"http://admin:admin@127.0.0.1:{master}/git/domain.git", clone)
        times = []
        for n in range(a.pushes):
            level = "debug" if n % 2 == 0 else "info"
            with open(os.path.join(clone, "domain.toml"), "w") as f:
                f.write(domain(master, bases, level))
            git(clone, "commit", "-qam", f"level {level}")
            head = git(clone, "rev-parse", "HEAD")
            git(clone, "push", "-q", "origin", "main")
            t0 = time.perf_counter()
            pending = set(bases)
            while pending:
                pending = {p for p in pending if status(p).get("applied_commit") != head}
                if pending:
                    if time.perf_counter() - t0 > 30:
                        sys.exit(f"servers {sorted(pending)} did not apply {head[:7]} within 30 s")
                    time.sleep(0.002)
            times.append((time.perf_counter() - t0) * 1000)
        print(f"{a.servers} servers, {a.pushes} live pushes ({'debug' if a.debug else 'release'}): push returned -> applied on every server: "
              f"median {statistics.median(times):.1f} ms, min {min(times):.1f} ms, max {max(times):.1f} ms")
    finally:
        for i in range(a.servers):
            subprocess.run([exe, "stop-server", "--domain-home", home, "--server", f"s{i}"], capture_output=True)
        for p in procs:
            p.terminate()
            p.wait()
        if a.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
