//! `steward admin timers` end to end (docs/admin.md, docs/components.md): the real binary against
//! a real Master and server1 running the Python component of [`crate::components`]. Listing
//! through the Master, a cancel committed before the answer (the timer never fires again, not
//! even after kill -9 and a restart), and the refusals: a declared timer, an unknown server,
//! application or id, a user without `servers:control`.

use std::path::{Path, PathBuf};

use insta::assert_snapshot;
use serde_json::Value;

use crate::admin::{admin, admin_as};
use crate::components::COMPONENT;
use crate::util::http::{Events, request};
use crate::util::master::{Master, kill9, start_running};
use crate::util::{Repo, TempDir, eventually};

/// The callbacks of timer `id` recorded in `file`.
fn fired(file: &Path, id: &str) -> usize {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|c| c["app"] == "jobs" && c["id"] == id)
        })
        .count()
}

/// `GET path` on the web listener: the component's JSON answer.
fn web(port: u16, path: &str) -> Value {
    let r = request(port, "GET", path, None).expect("GET");
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    serde_json::from_str(&r.body).expect("json")
}

/// The ids `steward admin timers --format json` lists, sorted.
fn listed(mport: u16) -> Vec<String> {
    let r = admin(
        mport,
        &["timers", "--server", "server1", "--format", "json"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let doc: Value = serde_json::from_str(&r.stdout).expect("json");
    let mut ids: Vec<String> = doc["timers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// The example domain on free ports with the component `jobs` on server1 (its declared timer
/// `newyear` fires in 2099) and a read-only `viewer`; initialised, its Master and server1 started
/// and `jobs` answering. Ends them when dropped.
pub(crate) struct Jobs {
    pub master: Master,
    pub home: PathBuf,
    /// The Master's, server1's base and server1's web ports.
    pub mport: u16,
    pub s1: u16,
    pub web1: u16,
    /// Every callback `jobs` got, one JSON line each.
    pub calls: PathBuf,
    /// Kept until the end: the domain home is in it.
    _tmp: TempDir,
}

impl Jobs {
    pub fn start(name: &str) -> Jobs {
        let repo = Repo::example(&format!("{name}-repo"));
        let ports = crate::util::example_on_free_ports(&repo);
        let (mport, s1, web1) = (ports[0], ports[1], ports[4]);
        let tmp = TempDir::new(&format!("{name}-home"));
        let calls = tmp.path().join("calls.jsonl");
        repo.write("apps/jobs/bin/component", COMPONENT);
        {
            use std::os::unix::fs::PermissionsExt;
            let file = repo.path().join("apps/jobs/bin/component");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let domain = repo.read("domain.toml");
        repo.write(
            "domain.toml",
            &format!(
                "{domain}
[applications.jobs]
kind = \"component\"
source = \"apps/jobs\"
context-path = \"/jobs\"
targets = [\"server1\"]
command = \"bin/component\"
env = {{ CALLS = \"{}\" }}

[applications.jobs.timers.newyear]
at = \"2099-01-01T00:00:00Z\"
",
                calls.display()
            ),
        );
        crate::util::master::add_viewer(&repo);
        repo.commit("a component with a declared timer, a viewer");
        let home = tmp.path().join("domain1");
        let r = crate::util::steward(
            repo.path(),
            &["init", home.to_str().unwrap(), "--from", "."],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let master = Master::start_on(&home, mport);
        start_running(&home, "server1", mport, s1);
        eventually("jobs answers", 60, || {
            request(web1, "GET", "/jobs/", None)
                .ok()
                .filter(|r| r.status == 200)
        });
        Jobs {
            master,
            home,
            mport,
            s1,
            web1,
            calls,
            _tmp: tmp,
        }
    }

    /// Has `jobs` create a run-time timer through its local API (`query`: the timer's fields).
    pub fn create(&self, query: &str) {
        let made = web(self.web1, &format!("/jobs/create?{query}"));
        assert_eq!(made["status"], 201, "{made}");
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        crate::util::master::stop_server(&self.home, "server1");
    }
}

#[test]
fn operators_list_and_cancel_timers_through_the_master() {
    let jobs = Jobs::start("admin-timers");
    let Jobs {
        master,
        home,
        mport,
        s1,
        calls,
        ..
    } = &jobs;
    let (mport, s1) = (*mport, *s1);

    // Run-time timers, made by the component through its local API.
    jobs.create("id=rt-far&at=2099-01-01T00%3A00%3A00Z");
    jobs.create("id=rt-tick&name=tick&interval=300ms");
    eventually("rt-tick fires twice", 30, || {
        (fired(calls, "rt-tick") >= 2).then_some(())
    });

    // Listed through the Master, for a user with servers:read.
    let r = admin_as(mport, "viewer", "reader", &["timers"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with("SERVER   APPLICATION  TIMER"),
        "{}",
        r.stdout
    );
    let tick = r
        .stdout
        .lines()
        .find(|l| l.contains("rt-tick"))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(
        tick.contains("rt-tick (/timers/tick)")
            && tick.contains("run-time")
            && tick.contains(" ok "),
        "{tick}"
    );
    assert_eq!(listed(mport), ["newyear", "rt-far", "rt-tick"]);
    let r = admin_as(
        mport,
        "viewer",
        "reader",
        &["timers", "--server", "server9"],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no server server9") && r.stderr.contains("server1, server2"),
        "{}",
        r.stderr
    );

    // Refusals: each says what exists or what to do, and nothing is removed.
    let refused = |user: &str, password: &str, args: &[&str], says: &[&str]| {
        let mut all = vec!["timers", "cancel"];
        all.extend_from_slice(args);
        let r = admin_as(mport, user, password, &all);
        assert_eq!(r.code, 1, "{args:?}: {}{}", r.stdout, r.stderr);
        for s in says {
            assert!(r.stderr.contains(s), "{args:?}: {s} not in {}", r.stderr);
        }
    };
    refused(
        "admin",
        "admin",
        &["server1", "jobs", "newyear"],
        &[
            "declared",
            "[applications.jobs.timers.newyear]",
            "domain.toml",
        ],
    );
    refused(
        "admin",
        "admin",
        &["server1", "jobs", "nope"],
        &["no timer with id \"nope\"", "newyear, rt-far, rt-tick"],
    );
    refused(
        "admin",
        "admin",
        &["server1", "nobody", "x"],
        &["no application nobody", "jobs"],
    );
    refused(
        "admin",
        "admin",
        &["server9", "jobs", "rt-tick"],
        &["no server server9", "server1, server2"],
    );
    refused(
        "viewer",
        "reader",
        &["server1", "jobs", "rt-tick"],
        &["lacks the permission `servers:control`"],
    );
    assert_eq!(listed(mport), ["newyear", "rt-far", "rt-tick"]);

    // The cancel: answered once committed, audited in the Master's log and events.
    let events = Events::subscribe(mport);
    let r = admin(mport, &["timers", "cancel", "server1", "jobs", "rt-tick"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "Timer jobs/rt-tick on server1 is cancelled.\n");
    let event = eventually("the timer event", 30, || {
        let (name, data) = events.next(std::time::Duration::from_secs(30));
        (name == "timer").then_some(data)
    });
    assert_eq!(
        (
            &event["server"],
            &event["application"],
            &event["id"],
            &event["by"]
        ),
        (
            &Value::from("server1"),
            &Value::from("jobs"),
            &Value::from("rt-tick"),
            &Value::from("admin")
        ),
        "{event}"
    );
    assert!(
        master
            .log()
            .contains("Timer jobs/rt-tick on server1 was cancelled by admin."),
        "{}",
        master.log()
    );
    assert_eq!(listed(mport), ["newyear", "rt-far"]);

    // It does not fire again: a witness timer fires three more times meanwhile (a callback in
    // flight at the cancel has landed by its first).
    jobs.create("id=witness&interval=300ms");
    eventually("the witness fires", 30, || {
        (fired(calls, "witness") >= 1).then_some(())
    });
    let after = fired(calls, "rt-tick");
    eventually("the witness fires three more times", 30, || {
        (fired(calls, "witness") >= 4).then_some(())
    });
    assert_eq!(fired(calls, "rt-tick"), after);
    let r = admin(mport, &["timers", "cancel", "server1", "jobs", "witness"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // The table an operator reads (the remaining timers never fired: nothing in it moves).
    let r = admin_as(
        mport,
        "viewer",
        "reader",
        &["timers", "--application", "jobs"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_snapshot!("timers_table", r.stdout);

    // Gone for good: kill -9 and a restart of server1 load the store without it.
    kill9(home, "server1", s1);
    start_running(home, "server1", mport, s1);
    eventually("the Master sees server1 running again", 30, || {
        let r = admin(mport, &["timers", "--format", "json"]);
        (r.code == 0).then_some(())
    });
    assert_eq!(listed(mport), ["newyear", "rt-far"]);
    assert_eq!(fired(calls, "rt-tick"), after);
}
