//! `steward up`: the quick start runs the Master and every server of a domain directory, prints
//! where everything is, and stops it all on SIGINT.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use util::{Repo, TempDir};

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

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

#[test]
fn up_runs_the_whole_domain_and_stops_it() {
    // The example domain, moved to free ports.
    let repo = Repo::example("up-domain");
    let ports = util::example_on_free_ports(&repo);
    let home = TempDir::new("up-home");
    let home = home.path().join("domain1");
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
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let up = Up(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !log
        .iter()
        .any(|l: &String| l.contains("Ctrl-C stops everything"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => log.push(l),
            Err(_) => panic!("no banner; output so far:\n{}", log.join("\n")),
        }
    }
    let all = log.join("\n");
    assert!(
        all.contains(&format!(
            "push URL      http://admin:admin@127.0.0.1:{}/git/domain.git",
            ports[0]
        )),
        "{all}"
    );
    assert!(all.contains("credentials   admin / admin"), "{all}");
    assert!(
        all.contains(&format!("web: http://127.0.0.1:{}/shop", ports[4])),
        "{all}"
    );
    for port in &ports[1..4] {
        let status = get(*port, "/v1/status").unwrap_or_default();
        assert!(status.contains("\"mode\":\"DEPENDENT\""), "{status}");
        assert!(status.contains("\"state\":\"RUNNING\""), "{status}");
    }
    // The applications are really served: the shop on server1's listener, the process API on
    // server3's default listener (base port + 1).
    let shop = get(ports[4], "/shop/").unwrap_or_default();
    let index = std::fs::read_to_string(util::example_dir().join("apps/shop/index.html")).unwrap();
    assert!(shop.contains(" 200 "), "{shop}");
    assert!(shop.ends_with(&index), "{shop}");
    let api = get(ports[3] + 1, "/api/orders").unwrap_or_default();
    assert!(api.contains(" 200 "), "{api}");
    assert!(
        api.contains("\"greeting\": \"hello from the api\""),
        "{api}"
    );
    assert!(api.contains("\"path\": \"/api/orders\""), "{api}");
    let health = get(ports[0], "/healthz").unwrap_or_default();
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );

    // SIGINT: everything stops, servers first, and `up` exits 0.
    let mut up = up;
    assert!(
        Command::new("kill")
            .arg("-INT")
            .arg(up.0.id().to_string())
            .status()
            .unwrap()
            .success()
    );
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = up.0.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "up did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    let rest: Vec<String> = rx.try_iter().collect();
    let stopped = rest.join("\n");
    let server_stop = stopped.find("The server stopped").unwrap_or(usize::MAX);
    let master_stop = stopped.find("[Master-0002]").unwrap_or(0);
    assert!(
        server_stop < master_stop,
        "servers stop before the Master:\n{stopped}"
    );
    for port in &ports[..4] {
        assert!(
            TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "port {port} still open"
        );
    }
}

#[test]
fn up_refuses_an_invalid_domain() {
    let repo = Repo::example("up-invalid");
    repo.edit("domain.toml", "port = 8088", "prot = 8088");
    let home = TempDir::new("up-invalid-home");
    let r = util::steward(
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
