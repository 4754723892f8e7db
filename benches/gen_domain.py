#!/usr/bin/env python3
"""Generate a large domain repository for the validate/diff benchmark.

    benches/gen_domain.py DIR [--servers 1000] [--clusters 50] [--apps 5000]

Makes DIR a Git repository with two commits: a base domain, then a change touching live,
redeploy and restart settings and some application content. Uses the real `git` binary.
"""
import argparse, os, shutil, subprocess

HASH = "$argon2id$v=19$m=19456,t=2,p=1$3g8LTxBToLWYGF26MIvccw$mPeItzmyCRTynzZOK2s1cyWXKYOD+N7RSnZE0QqSWFk"


def domain(servers, clusters, apps, changed):
    out = ['[domain]\nname = "big"\n\n[master]\nlisten = "10.0.0.1:9736"\nnode = "master-node"\n']
    for i in range(servers):
        node = f"node-{i // 10}"
        base = 9741 + (i % 10) * 10
        level = "debug" if changed and i % 50 == 0 else "info"
        port = 8088 + (i % 10) + (1000 if changed and i % 200 == 0 else 0)
        out.append(
            f'[servers.s{i}]\nnode = "{node}"\nlisten = "0.0.0.0:{base}"\nrestart-policy = "rolling"\n'
            f'[servers.s{i}.process]\nenv = {{ INSTANCE = "s{i}" }}\n'
            f'[servers.s{i}.web.listeners.http]\nport = {port}\nthread-pool = {{ min = 2, max = 64 }}\n'
            f'[servers.s{i}.logging]\nlevel = "{level}"\n'
        )
    per = servers // clusters
    for c in range(clusters):
        members = ", ".join(f'"s{c * per + k}"' for k in range(per))
        out.append(f"[clusters.c{c}]\nservers = [{members}]\n")
    for a in range(apps):
        ctx = f"/app{a}" + ("-v2" if changed and a % 100 == 0 else "")
        out.append(
            f'[applications.app{a}]\nkind = "static"\nsource = "apps/app{a}"\n'
            f'context-path = "{ctx}"\ntargets = ["c{a % clusters}"]\n'
        )
    return "\n".join(out)


def git(d, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="b@e", GIT_COMMITTER_NAME="bench",
               GIT_COMMITTER_EMAIL="b@e")
    subprocess.run(["git", *args], cwd=d, check=True, env=env, stdout=subprocess.DEVNULL)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--servers", type=int, default=1000)
    p.add_argument("--clusters", type=int, default=50)
    p.add_argument("--apps", type=int, default=5000)
    a = p.parse_args()
    shutil.rmtree(a.dir, ignore_errors=True)
    os.makedirs(f"{a.dir}/security")
    with open(f"{a.dir}/security/accounts.toml", "w") as f:
        f.write(f'[users.admin]\npassword = "{HASH}"\ngroups = ["administrators"]\n[groups.administrators]\n')
    with open(f"{a.dir}/security/policies.toml", "w") as f:
        f.write('[roles.administrator]\npermissions = ["*"]\ngroups = ["administrators"]\n')
    for i in range(a.apps):
        os.makedirs(f"{a.dir}/apps/app{i}")
        with open(f"{a.dir}/apps/app{i}/index.html", "w") as f:
            f.write(f"<p>app {i}</p>\n")
    with open(f"{a.dir}/domain.toml", "w") as f:
        f.write(domain(a.servers, a.clusters, a.apps, False))
    git(a.dir, "init", "-q", "-b", "main")
    git(a.dir, "add", "-A")
    git(a.dir, "commit", "-q", "-m", "base")
    with open(f"{a.dir}/domain.toml", "w") as f:
        f.write(domain(a.servers, a.clusters, a.apps, True))
    for i in range(0, a.apps, 50):
        with open(f"{a.dir}/apps/app{i}/index.html", "a") as f:
            f.write("<p>changed</p>\n")
    git(a.dir, "add", "-A")
    git(a.dir, "commit", "-q", "-m", "change")


if __name__ == "__main__":
    main()
