//! A domain across machines: a Master and node agents (`steward node`) on machines simulated
//! with network namespaces ([`crate::util::netns`]). The Master orders starts, stops and restarts
//! (an operator's, a rolling restart's turn, a hung server's stop) through the agents; an agent
//! restarts a server that dies, keeps supervising while cut off,
//! and re-adopts its servers after its own restart; a Master restart stops nothing.

use std::path::{Path, PathBuf};
use std::process::Child;

use crate::util::master::hash;
use crate::util::netns::Net;
use crate::util::{TempDir, eventually, git_ok, steward_cmd};

const PORT: u16 = 9736;

/// A domain on machines `m` (the Master), `a` (servers s1, s2) and `b` (server s3), with its
/// processes: killed by the [`Net`] when the test ends.
struct Domain {
    net: Net,
    tmp: TempDir,
    master: Option<Child>,
    agents: Vec<(String, Child)>,
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A credentials file, mode 0600 as the launcher and the agent insist.
fn credentials(path: &Path, user: &str, password: &str) {
    use std::os::unix::fs::PermissionsExt;
    write(
        path,
        &format!("STEWARD_USER={user}\nSTEWARD_PASSWORD={password}\n"),
    );
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl Domain {
    fn up(name: &str) -> Option<Domain> {
        let net = Net::new(&["m", "a", "b"])?;
        let tmp = TempDir::new(name);
        let (m, a, b) = (net.addr("m"), net.addr("a"), net.addr("b"));
        let src = tmp.path().join("src");
        write(
            &src.join("domain.toml"),
            &format!(
                r#"[domain]
name = "net"

[master]
node = "m"
listen = "{m}:{PORT}"
heartbeat-interval = "1s"
heartbeat-timeout = "3s"

[nodes.m]
address = "{m}"

[nodes.a]
address = "{a}"
restart-backoff = "200ms"

[nodes.b]
address = "{b}"

[servers.s1]
node = "a"
listen = "{a}:9741"
restart-policy = "rolling"

[servers.s2]
node = "a"
listen = "{a}:9751"
restart-policy = "rolling"
stop-timeout = "2s"

[servers.s3]
node = "b"
listen = "{b}:9741"
restart-policy = "auto"

[clusters.c1]
servers = ["s1", "s2"]

[applications.hello]
kind = "static"
source = "apps/hello"
context-path = "/hello"
targets = ["s1", "s2", "s3"]
"#
            ),
        );
        write(&src.join("apps/hello/index.html"), "v1\n");
        let (admin, _) = crate::util::master::hashes();
        write(
            &src.join("security/accounts.toml"),
            &format!(
                "[users.admin]\npassword = \"{admin}\"\n\n[users.steward-server]\npassword = \"{}\"\n\n[users.steward-node]\npassword = \"{}\"\n",
                hash("server"),
                hash("node")
            ),
        );
        write(
            &src.join("security/policies.toml"),
            "[roles.admin]\npermissions = [\"*\"]\nusers = [\"admin\"]\n\n\
             [roles.server]\npermissions = [\"domain:read\", \"git:read\", \"events:read\", \"servers:register\"]\nusers = [\"steward-server\"]\n\n\
             [roles.node]\npermissions = [\"domain:read\", \"git:read\", \"nodes:register\"]\nusers = [\"steward-node\"]\n",
        );
        crate::util::master::init(&tmp.path().join("m"), &src);
        for machine in ["a", "b"] {
            let home = tmp.path().join(machine);
            credentials(
                &home.join("config/server-credentials"),
                "steward-server",
                "server",
            );
            credentials(
                &home.join("config/node-credentials"),
                "steward-node",
                "node",
            );
        }
        let mut d = Domain {
            net,
            tmp,
            master: None,
            agents: Vec::new(),
        };
        d.start_master();
        d.start_agent("a");
        d.start_agent("b");
        d.wait_connected(&["a", "b"]);
        Some(d)
    }

    fn home(&self, machine: &str) -> PathBuf {
        self.tmp.path().join(machine)
    }

    fn master_url(&self) -> String {
        format!("http://{}:{PORT}", self.net.addr("m"))
    }

    fn start_master(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("master.out"))
            .unwrap();
        let child = self
            .net
            .cmd("m", env!("CARGO_BIN_EXE_steward"))
            .args(["master", "--domain-home"])
            .arg(self.home("m"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.master = Some(child);
        let url = format!("{}/healthz", self.master_url());
        eventually("the Master answers", 30, || {
            (self.net.http("m", "GET", &url, None).0 == 200).then_some(())
        });
    }

    fn kill_master(&mut self) {
        if let Some(mut c) = self.master.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn start_agent(&mut self, machine: &str) {
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.tmp.path().join(format!("agent-{machine}.out")))
            .unwrap();
        let child = self
            .net
            .cmd(machine, env!("CARGO_BIN_EXE_steward"))
            .args(["node", "--domain-home"])
            .arg(self.home(machine))
            .args(["--master-url", &self.master_url(), "--node", machine])
            .env_remove("STEWARD_USER")
            .env_remove("STEWARD_PASSWORD")
            .env_remove("NOTIFY_SOCKET")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.agents.push((machine.to_owned(), child));
    }

    /// SIGKILL to the agent of `machine`.
    fn kill_agent(&mut self, machine: &str) {
        if let Some(i) = self.agents.iter().position(|(m, _)| m == machine) {
            let (_, mut c) = self.agents.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn api(&self, method: &str, path: &str) -> (u16, String) {
        let url = format!("{}{path}", self.master_url());
        self.net.http("m", method, &url, Some("admin:admin"))
    }

    /// `GET /v1/nodes`; `None` when the Master did not answer 200 (busy checking passwords on a
    /// loaded machine: callers ask again).
    fn nodes(&self) -> Option<serde_json::Value> {
        let (status, body) = self.api("GET", "/v1/nodes");
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    }

    /// Whether the Master shows `node` connected (`None`: it did not say).
    fn connected(&self, node: &str) -> Option<bool> {
        Some(
            self.nodes()?
                .as_array()?
                .iter()
                .any(|n| n["name"] == node && n["connected"] == true),
        )
    }

    fn wait_connected(&self, nodes: &[&str]) {
        for n in nodes {
            eventually(&format!("node {n} connects"), 90, || {
                self.connected(n)?.then_some(())
            });
        }
    }

    /// `steward admin ARGS` run on the Master's machine as `admin`.
    fn admin(&self, args: &[&str]) -> crate::util::Run {
        self.net
            .cmd("m", env!("CARGO_BIN_EXE_steward"))
            .arg("admin")
            .args(args)
            .args(["--master", &self.master_url()])
            .env("STEWARD_USER", "admin")
            .env("STEWARD_PASSWORD", "admin")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
            .into()
    }

    fn admin_ok(&self, args: &[&str]) -> String {
        let r = self.admin(args);
        assert_eq!(
            r.code,
            0,
            "admin {args:?}:\n{}{}\n--- master log:\n{}",
            r.stdout,
            r.stderr,
            std::fs::read_to_string(self.tmp.path().join("master.out")).unwrap_or_default()
        );
        r.stdout
    }

    /// The pid in server `s`'s pid file on `machine`, if any.
    fn pid(&self, machine: &str, s: &str) -> Option<i32> {
        std::fs::read_to_string(
            self.home(machine)
                .join(format!("servers/{s}/.workspace/server.pid")),
        )
        .ok()
        .and_then(|t| t.trim().parse().ok())
    }

    /// Every line of the logs named `base` (`node`, `master`) of `machine`'s domain home.
    fn log(&self, machine: &str, base: &str) -> String {
        let mut all = String::new();
        let dir = self.home(machine).join("logs");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{base}_"))
            })
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files {
            all.push_str(&std::fs::read_to_string(f).unwrap_or_default());
        }
        all
    }

    /// What server `s` on `machine` serves at `/hello/`, asked from `from`.
    fn hello(&self, from: &str, machine: &str, port: u16) -> (u16, String) {
        let url = format!("http://{}:{port}/hello/", self.net.addr(machine));
        self.net.http(from, "GET", &url, None)
    }

    /// A new version of the static application, pushed to the Master from its machine.
    fn push_hello(&self, text: &str) -> String {
        self.push(text.trim(), |clone| {
            std::fs::write(clone.join("apps/hello/index.html"), text).unwrap();
        })
    }

    /// A commit made by `edit` in a fresh clone (`name`: the clone's, unique per test), pushed to
    /// the Master from its machine. Returns its id.
    fn push(&self, name: &str, edit: impl FnOnce(&Path)) -> String {
        let clone = self.tmp.path().join(format!("clone-{name}"));
        let url = format!(
            "http://admin:admin@{}:{PORT}/git/domain.git",
            self.net.addr("m")
        );
        let git = |dir: &Path, args: &[&str]| {
            let mut cmd = self.net.cmd("m", "git");
            cmd.args(args).current_dir(dir);
            crate::util::isolated_git(&mut cmd);
            let r: crate::util::Run = cmd.output().unwrap().into();
            assert_eq!(r.code, 0, "git {args:?}: {}", r.stderr);
        };
        git(
            self.tmp.path(),
            &["clone", "-q", &url, clone.to_str().unwrap()],
        );
        edit(&clone);
        git(&clone, &["commit", "-qam", name]);
        git(&clone, &["push", "-q", "origin", "main"]);
        git_ok(&clone, &["rev-parse", "HEAD"])
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        // The agents first, so that none starts again what is being stopped.
        for (_, mut agent) in std::mem::take(&mut self.agents) {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        for (machine, servers) in [("a", &["s1", "s2"][..]), ("b", &["s3"][..])] {
            for s in servers {
                let _ = steward_cmd(&["stop-server", "--server", s, "--domain-home"])
                    .arg(self.home(machine))
                    .output();
            }
        }
        self.kill_master();
    }
}

/// Whether `pid` runs (a zombie waiting for its reaper does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

#[test]
fn the_master_starts_stops_and_restarts_remote_servers_through_their_node() {
    let Some(mut d) = Domain::up("node-orders") else {
        return;
    };
    // Started on machines a and b by their agents, on the Master's order.
    d.admin_ok(&["start", "s1", "s2", "s3"]);
    assert_eq!(d.hello("m", "a", 9742), (200, "v1\n".to_owned()));
    assert_eq!(d.hello("m", "b", 9742), (200, "v1\n".to_owned()));
    let status = d.admin_ok(&["status"]);
    assert!(status.contains("CONNECTED"), "{status}");
    let agent_a = d.log("a", "node");
    assert!(
        agent_a.contains("[Node-0040] The Master orders to start server s1"),
        "{agent_a}"
    );

    // A change that needs a restart: s1 and s2 (`rolling`, cluster c1) are restarted by the
    // agent of their machine on the Master's order, one at a time; s3 (`auto`) restarts itself
    // through its launcher on machine b, and its agent follows.
    let old = [("a", "s1"), ("a", "s2"), ("b", "s3")].map(|(m, s)| d.pid(m, s).unwrap());
    d.push("env", |clone| {
        let toml = clone.join("domain.toml");
        let mut text = std::fs::read_to_string(&toml).unwrap();
        for s in ["s1", "s2", "s3"] {
            text.push_str(&format!("\n[servers.{s}.process.env]\nGREETING = \"v2\"\n"));
        }
        std::fs::write(toml, text).unwrap();
    });
    eventually("s1, s2 and s3 run as new processes", 180, || {
        let now = [("a", "s1"), ("a", "s2"), ("b", "s3")].map(|(m, s)| d.pid(m, s));
        now.iter()
            .zip(old)
            .all(|(p, o)| p.is_some_and(|p| p != o && alive(p)))
            .then_some(())
    });
    eventually("nothing is pending any more", 60, || {
        let (_, body) = d.api("GET", "/v1/servers");
        let views: serde_json::Value = serde_json::from_str(&body).ok()?;
        views
            .as_array()?
            .iter()
            .all(|v| {
                v["state"] == "RUNNING"
                    && v["pending_restart"]
                        .as_array()
                        .is_some_and(|p| p.is_empty())
            })
            .then_some(())
    });
    let agent_a = d.log("a", "node");
    let master = std::fs::read_to_string(d.tmp.path().join("master.out")).unwrap();
    for s in ["s1", "s2"] {
        assert!(
            agent_a.contains(&format!(
                "[Node-0040] The Master orders to restart server {s} (rollout rolling)"
            )),
            "{agent_a}"
        );
        assert!(
            master.contains(&format!("Ordering {s} to restart"))
                && master.contains("through the node agent of a"),
            "{master}"
        );
    }
    let s3 = d.pid("b", "s3").unwrap();
    eventually("the agent of b supervises the restarted s3", 30, || {
        d.log("b", "node")
            .contains(&format!("[Node-0010] Supervising server s3 [pid : {s3}]"))
            .then_some(())
    });
    assert_eq!(d.hello("m", "a", 9742), (200, "v1\n".to_owned()));

    // A restart: a new process.
    let before = d.pid("a", "s1").unwrap();
    d.admin_ok(&["restart", "s1"]);
    let after = d.pid("a", "s1").unwrap();
    assert_ne!(before, after);
    assert!(!alive(before));

    // A stop: gone, and its agent leaves it stopped.
    d.admin_ok(&["stop", "s3"]);
    assert_eq!(d.pid("b", "s3"), None);
    eventually("node b reports s3 stopped", 30, || {
        let nodes = d.nodes()?;
        let b = nodes.as_array()?.iter().find(|n| n["name"] == "b")?.clone();
        (b["servers"][0]["state"] == "STOPPED").then_some(())
    });

    // A server killed: its agent starts it again.
    let victim = d.pid("a", "s2").unwrap();
    assert!(crate::util::run_ok("kill", &["-9", &victim.to_string()]));
    let back = eventually("s2 is started again by its agent", 60, || {
        d.pid("a", "s2").filter(|p| *p != victim && alive(*p))
    });
    eventually("s2 serves again", 30, || {
        (d.hello("m", "a", 9752).0 == 200).then_some(())
    });
    eventually(
        "the agent says s2 died and supervises the new process",
        30,
        || {
            let log = d.log("a", "node");
            (log.contains(&format!("[Node-0012] Server s2 [pid : {victim}] died"))
                && log.contains(&format!("[Node-0010] Supervising server s2 [pid : {back}]")))
            .then_some(())
        },
    );

    // A server the Master cannot reach (hung: SIGSTOP) is stopped through its node agent, which
    // still sees its process (killed after its stop-timeout).
    assert!(crate::util::run_ok("kill", &["-STOP", &back.to_string()]));
    eventually("the Master sees s2 UNREACHABLE", 30, || {
        let (_, body) = d.api("GET", "/v1/servers/s2");
        body.contains("\"state\":\"UNREACHABLE\"").then_some(())
    });
    let out = d.admin_ok(&["stop", "s2"]);
    assert!(out.contains("stopped by its node agent"), "{out}");
    assert_eq!(d.pid("a", "s2"), None);
    assert!(!alive(back));

    // A node whose agent is gone: a start there fails, naming it.
    d.kill_agent("b");
    eventually("node b is seen disconnected", 30, || {
        (!d.connected("b")?).then_some(())
    });
    let r = d.admin(&["start", "s3"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(said.contains("node `b` is not connected"), "{said}");
    let status = d.admin_ok(&["status"]);
    assert!(status.contains("NOT CONNECTED"), "{status}");
}

#[test]
fn a_node_cut_off_keeps_serving_supervises_from_its_cache_and_catches_up() {
    let Some(d) = Domain::up("node-partition") else {
        return;
    };
    d.admin_ok(&["start", "s1", "s3"]);
    let count = |id: &str| d.log("a", "node").matches(id).count();
    let (lost, connected) = (count("[Node-0021]"), count("[Node-0020]"));
    d.net.link("a", false);

    // A commit while machine a is cut off: b applies it, a keeps serving the old one.
    d.push_hello("v2\n");
    eventually("s3 serves v2", 30, || {
        (d.hello("m", "b", 9742) == (200, "v2\n".to_owned())).then_some(())
    });
    assert_eq!(d.hello("a", "a", 9742), (200, "v1\n".to_owned()));
    eventually("the agent of a says it lost the Master", 30, || {
        (count("[Node-0021]") > lost).then_some(())
    });
    eventually("the Master says node a is not connected", 30, || {
        (!d.connected("a")?).then_some(())
    });

    // Cut off, the agent still restarts a server that dies, from the machine's cache.
    let victim = d.pid("a", "s1").unwrap();
    assert!(crate::util::run_ok("kill", &["-9", &victim.to_string()]));
    eventually("s1 is started again while cut off", 60, || {
        d.pid("a", "s1").filter(|p| *p != victim && alive(*p))
    });
    eventually("s1 serves again (the cached v1)", 30, || {
        (d.hello("a", "a", 9742) == (200, "v1\n".to_owned())).then_some(())
    });

    // The link returns: the server catches up, the agent reports back.
    d.net.link("a", true);
    eventually("s1 serves v2", 60, || {
        (d.hello("m", "a", 9742) == (200, "v2\n".to_owned())).then_some(())
    });
    d.wait_connected(&["a"]);
    eventually("the agent of a says it is connected again", 30, || {
        (count("[Node-0020]") > connected).then_some(())
    });
}

#[test]
fn restarting_the_agent_or_the_master_stops_nothing() {
    let Some(mut d) = Domain::up("node-readopt") else {
        return;
    };
    d.admin_ok(&["start", "s1", "s2"]);
    let pids = (d.pid("a", "s1").unwrap(), d.pid("a", "s2").unwrap());

    // The agent killed and started again: it re-adopts the running servers.
    d.kill_agent("a");
    d.start_agent("a");
    eventually("the new agent supervises s1 and s2", 30, || {
        let log = d.log("a", "node");
        // What the new agent wrote: from its start line on.
        let new = &log[log.rfind("[Node-0001]")?..];
        let adopted = |s: &str, p: i32| {
            new.contains(&format!("[Node-0010] Supervising server {s} [pid : {p}]"))
        };
        (adopted("s1", pids.0) && adopted("s2", pids.1)).then_some(())
    });
    assert_eq!((d.pid("a", "s1").unwrap(), d.pid("a", "s2").unwrap()), pids);
    assert!(alive(pids.0) && alive(pids.1));

    // The Master killed and started again: nothing stops; the agent reconnects and takes orders.
    d.kill_master();
    assert_eq!(d.hello("a", "a", 9742), (200, "v1\n".to_owned()));
    d.start_master();
    d.wait_connected(&["a"]);
    assert_eq!((d.pid("a", "s1").unwrap(), d.pid("a", "s2").unwrap()), pids);
    // The servers register again at their next heartbeat; then a restart goes through the node.
    eventually("s1 registers again", 30, || {
        let (_, body) = d.api("GET", "/v1/servers/s1");
        body.contains("\"reachable\":true").then_some(())
    });
    d.admin_ok(&["restart", "s1"]);
    assert_ne!(d.pid("a", "s1").unwrap(), pids.0);
    assert_eq!(d.pid("a", "s2").unwrap(), pids.1);
}
