//! `steward up`: the quick start runs the Master and every server of a domain directory, prints
//! where everything is, and stops it all on SIGINT.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::util::http::{get, status};
use crate::util::{Repo, TempDir};

struct Up(Child);
impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.0.id().to_string())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
    }
}

/// `up`'s output, line by line, as it comes.
struct Output {
    rx: mpsc::Receiver<String>,
    lines: Vec<String>,
}

impl Output {
    fn new(stdout: impl Read + Send + 'static) -> Output {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Output {
            rx,
            lines: Vec::new(),
        }
    }

    /// Reads until a line satisfies `f` (searching from line `from`); returns its index.
    fn until(&mut self, from: usize, what: &str, f: impl Fn(&str) -> bool) -> usize {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(i) = (from..self.lines.len()).find(|&i| f(&self.lines[i])) {
                return i;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => self.lines.push(l),
                Err(_) => panic!("no {what}; output so far:\n{}", self.lines.join("\n")),
            }
        }
    }
}

#[test]
fn up_follows_restarts_refuses_a_second_up_and_stops_everything() {
    use std::os::unix::process::CommandExt;
    // The example domain, moved to free ports.
    let repo = Repo::example("up-domain");
    let ports = crate::util::example_on_free_ports(&repo);
    let tmp = TempDir::new("up-home");
    let home = tmp.path().join("domain1");
    let mut child = Command::new(env!("CARGO_BIN_EXE_steward"))
        .arg("up")
        .arg(repo.path())
        .arg("--home")
        .arg(&home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env_remove("STEWARD_USER")
        .env_remove("STEWARD_PASSWORD")
        // A process group of its own, as a shell gives a foreground job: Ctrl-C is sent to it.
        .process_group(0)
        .spawn()
        .unwrap();
    let mut out = Output::new(child.stdout.take().unwrap());
    let up = Up(child);
    let banner = out.until(0, "banner", |l| l.contains("Ctrl-C stops everything"));
    let all = out.lines.join("\n");
    assert!(
        all.contains(&format!(
            "push URL      http://admin:admin@127.0.0.1:{}/git/domain.git",
            ports[0]
        )),
        "{all}"
    );
    assert!(all.contains("credentials   admin / admin"), "{all}");
    assert!(
        all.contains(&format!("WebAdmin      http://127.0.0.1:{}/ ", ports[0])),
        "{all}"
    );
    // The servers use their own account, from a file only its owner can read.
    let creds = home.join("config/server-credentials");
    assert!(
        all.contains(&format!(
            "servers       log in as steward-server (from {})",
            creds.display()
        )),
        "{all}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(all.contains("it is kept when `up` ends"), "{all}");
    assert!(
        all.contains(&format!("web: http://127.0.0.1:{}/shop", ports[4])),
        "{all}"
    );
    for port in &ports[1..4] {
        let status = status(*port);
        assert_eq!(status["mode"], "DEPENDENT", "{status}");
        assert_eq!(status["state"], "RUNNING", "{status}");
    }
    // The applications are really served: the shop on server1's listener, the process API on
    // server3's default listener (base port + 1).
    let shop = get(ports[4], "/shop/").expect("server1's listener answers");
    let index =
        std::fs::read_to_string(crate::util::example_dir().join("apps/shop/index.html")).unwrap();
    assert_eq!(shop.status, 200, "{}", shop.body);
    assert_eq!(shop.body, index);
    let api = get(ports[3] + 1, "/api/orders").expect("server3's listener answers");
    assert_eq!(api.status, 200, "{}", api.body);
    assert!(
        api.body.contains("\"greeting\": \"hello from the api\""),
        "{}",
        api.body
    );

    // A second `up` of the same domain: it names the busy port, starts and creates nothing.
    let other = tmp.path().join("second");
    let second = crate::util::steward(repo.path(), &["up", ".", "--home", other.to_str().unwrap()]);
    assert_eq!(second.code, 1, "{}{}", second.stdout, second.stderr);
    assert!(
        second.stderr.contains(&format!(
            "port {} (the Master's listen) is in use",
            ports[0]
        )),
        "{}",
        second.stderr
    );
    assert!(!other.exists(), "nothing is created by a refused up");
    assert!(second.stdout.is_empty(), "{}", second.stdout);

    // server3 (restart-policy auto) restarts itself for a restart-class change, server1
    // (rolling) when the Master orders it; `up` follows the new processes and keeps streaming
    // their logs.
    let old = crate::util::master::pid_of(&home, "server3");
    let old1 = crate::util::master::pid_of(&home, "server1");
    let clone = crate::util::master::clone_domain(ports[0], tmp.path().join("clone"));
    let toml = std::fs::read_to_string(clone.join("domain.toml")).unwrap();
    let toml = toml.replace(
        "[servers.server3.component.timer-service]",
        "[servers.server3.process]\nenv = { RESTARTED = \"yes\" }\n\n[servers.server3.component.timer-service]",
    );
    let toml = toml.replace(
        "env = { STEWARD_EXAMPLE = \"server1\" }",
        "env = { STEWARD_EXAMPLE = \"server1, restarted\" }",
    );
    std::fs::write(clone.join("domain.toml"), toml).unwrap();
    assert_eq!(
        crate::util::git(&clone, &["commit", "-qam", "server1, server3: new env"]).code,
        0
    );
    let push = crate::util::git(&clone, &["push", "-q", "origin", "main"]);
    assert_eq!(push.code, 0, "{}", push.stderr);
    let running_again = |server: &'static str, old: String| {
        move |l: &str| {
            l.contains(&format!(" up | {server} "))
                && (l.contains("is running [pid : ") || l.contains("was restarted"))
                && !l.contains(&format!(": {old}]"))
                && !l.contains(&format!("-> {old}]"))
        }
    };
    let rolling = out.until(banner, "restart of server1", running_again("server1", old1));
    assert!(
        out.lines[banner..rolling]
            .iter()
            .any(|l| l.contains("[Master-0022] Ordering server1 to restart")),
        "{}",
        out.lines[banner..rolling].join("\n")
    );
    let auto = out.until(
        banner,
        "restart of server3",
        running_again("server3", old.clone()),
    );
    let new = crate::util::master::pid_of(&home, "server3");
    assert_ne!(new, old);
    assert!(out.lines[auto].contains(&new), "{}", out.lines[auto]);
    out.until(auto, "server3's log after its restart", |l| {
        l.starts_with("server3 | ") && l.contains("[SERVER-0248] The server is RUNNING.")
    });

    // And by hand: stop-server, start-server.
    crate::util::master::stop_server(&home, "server1");
    crate::util::master::start_server(&home, "server1", ports[0]);
    let by_hand = crate::util::master::pid_of(&home, "server1");
    let hand = out.until(auto.max(rolling), "server1 back", |l| {
        l.contains(" up | server1 ")
            && (l.contains(&format!("is running [pid : {by_hand}]"))
                || l.contains(&format!("-> {by_hand}]")))
    });

    // Ctrl-C as a terminal sends it: to the whole process group. Only `up` acts on it: every
    // server stops (whatever its pid now), then the Master.
    let mut up = up;
    let group = format!("-{}", up.0.id());
    assert!(
        Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .unwrap()
            .success()
    );
    let status = crate::util::eventually("up to stop", 60, || up.0.try_wait().unwrap());
    assert!(status.success(), "{status}");
    out.lines.extend(out.rx.try_iter());
    let stopped = out.lines[hand..].join("\n");
    let line = |f: &dyn Fn(&str) -> bool| out.lines[hand..].iter().position(|l| f(l));
    let master_stop = line(&|l| l.contains("[Master-0002]"))
        .unwrap_or_else(|| panic!("no Master stop:\n{stopped}"));
    for s in ["server1", "server2", "server3"] {
        let at = line(&|l| {
            l.starts_with(&format!("{s} | ")) && l.contains("[SERVER-0301] The server stopped.")
        })
        .unwrap_or_else(|| panic!("{s} did not stop:\n{stopped}"));
        assert!(at < master_stop, "{s} stops before the Master:\n{stopped}");
    }
    assert!(
        stopped.contains(&format!("`steward up --home {}`", home.display())),
        "{stopped}"
    );
    for port in ports[..4].iter().chain([&(ports[3] + 1)]) {
        assert!(
            TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "port {port} still open"
        );
    }
    // Nothing of this domain home runs: no server, no launcher, no process application.
    let left = crate::util::processes_with(home.to_str().unwrap());
    assert!(left.is_empty(), "still running: {left:?}");
}

#[test]
fn up_stops_everything_when_a_server_cannot_start() {
    let repo = Repo::example("up-fail");
    let ports = crate::util::example_on_free_ports(&repo);
    let tmp = TempDir::new("up-fail-home");
    let home = tmp.path().join("domain1");
    // The launchers inherit a wrong password: the Master refuses them.
    let r: crate::util::Run = Command::new(env!("CARGO_BIN_EXE_steward"))
        .arg("up")
        .arg(repo.path())
        .arg("--home")
        .arg(&home)
        .env("STEWARD_USER", "steward-server")
        .env("STEWARD_PASSWORD", "wrong")
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("[Launcher-0068]"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("did not start (see the lines above); stopped everything"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("is up;"), "{}", r.stdout);
    assert!(r.stdout.contains("[Master-0002]"), "{}", r.stdout);
    for port in &ports[..4] {
        assert!(
            TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "port {port} still open"
        );
    }
    assert!(crate::util::processes_with(home.to_str().unwrap()).is_empty());
}

#[test]
fn init_works_from_any_directory_with_the_built_in_example() {
    let cwd = TempDir::new("init-anywhere");
    let home = cwd.path().join("home");
    let r = crate::util::steward(cwd.path(), &["init", "home"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("wrote the servers' credentials (steward-server")
    );
    // The first commit holds exactly the example domain of the source tree.
    let git_dir = home.join("config/domain.git");
    let files = crate::util::git(&git_dir, &["ls-tree", "-r", "--name-only", "main"]).stdout;
    let mut expected = Vec::new();
    fn walk(dir: &std::path::Path, rel: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let name = format!("{rel}{}", e.file_name().to_string_lossy());
            if e.path().is_dir() {
                walk(&e.path(), &format!("{name}/"), out);
            } else {
                out.push(name);
            }
        }
    }
    walk(&crate::util::example_dir(), "", &mut expected);
    expected.sort();
    let mut got: Vec<String> = files.lines().map(str::to_owned).collect();
    got.sort();
    assert_eq!(got, expected);
    for f in &expected {
        let blob = crate::util::git(&git_dir, &["show", &format!("main:{f}")]).stdout;
        let disk = std::fs::read_to_string(crate::util::example_dir().join(f)).unwrap();
        assert_eq!(blob, disk, "{f}");
    }
    // The process application stays executable.
    let mode = crate::util::git(&git_dir, &["ls-tree", "main", "apps/api/bin/api"]).stdout;
    assert!(mode.starts_with("100755"), "{mode}");
    let log = crate::util::git(&git_dir, &["log", "-1", "--format=%B", "main"]).stdout;
    assert!(
        log.contains("the example domain built into steward"),
        "{log}"
    );
}

#[test]
fn up_refuses_an_invalid_domain() {
    let repo = Repo::example("up-invalid");
    repo.edit("domain.toml", "port = 8088", "prot = 8088");
    let home = TempDir::new("up-invalid-home");
    let r = crate::util::steward(
        repo.path(),
        &["up", ".", "--home", home.path().join("h").to_str().unwrap()],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("unknown key `prot`"), "{}", r.stderr);
    assert!(
        !home.path().join("h").exists(),
        "nothing is created for an invalid domain"
    );
}

#[test]
fn up_from_any_directory_runs_the_built_in_example_and_checks_its_ports_first() {
    // Hold the example's Master port (or find it held already): `up`, run from a directory with
    // no examples/ in it, must read the built-in example (it knows that port from it), name the
    // port, and start and create nothing.
    let _held = std::net::TcpListener::bind("127.0.0.1:9736");
    let cwd = TempDir::new("up-anywhere");
    let r = crate::util::steward(cwd.path(), &["up", "--home", "h"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("port 9736 (the Master's listen) is in use"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("no such directory"), "{}", r.stderr);
    assert!(!cwd.path().join("h").exists());
}

#[test]
fn up_refuses_a_credentials_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let repo = Repo::example("up-exposed");
    crate::util::example_on_free_ports(&repo);
    let tmp = TempDir::new("up-exposed-home");
    let home = tmp.path().join("h");
    let h = home.to_str().unwrap();
    let init = repo.steward(&["init", h, "--from", "."]);
    assert_eq!(init.code, 0, "{}", init.stderr);
    let file = home.join("config/server-credentials");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = repo.steward(&["up", "--home", h]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("readable by others (mode 644)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("chmod 600 {}", file.display())),
        "{}",
        r.stderr
    );
    assert!(
        !r.stdout.contains("Master-0001"),
        "nothing started: {}",
        r.stdout
    );
}

#[test]
fn up_names_a_server_left_running_in_the_home_it_reuses() {
    let repo = Repo::example("up-leftover");
    crate::util::example_on_free_ports(&repo);
    let tmp = TempDir::new("up-leftover-home");
    let home = tmp.path().join("h");
    let h = home.to_str().unwrap();
    assert_eq!(repo.steward(&["init", h, "--from", "."]).code, 0);
    // server1 runs from the home's own repository (no Master): as if an earlier `up` was killed.
    let git_url = home.join("config/domain.git");
    let started = repo.steward(&[
        "start-server",
        "--domain-home",
        h,
        "--server",
        "server1",
        "--git-url",
        git_url.to_str().unwrap(),
    ]);
    let _stop = crate::util::master::Servers(&home, &["server1"]);
    assert_eq!(started.code, 0, "{}", started.stdout);
    let pid = crate::util::master::pid_of(&home, "server1");
    let r = repo.steward(&["up", "--home", h]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "server1 of this domain home still runs [pid : {pid}]: `steward stop-server --domain-home {h} --server server1`"
        )),
        "{}",
        r.stderr
    );
    assert_eq!(
        crate::util::master::pid_of(&home, "server1"),
        pid,
        "left alone"
    );
}
