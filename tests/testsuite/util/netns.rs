//! Machines simulated with network namespaces: one namespace per machine, each joined by a veth
//! pair to a bridge in a "switch" namespace of its own, addresses in 10.231.N.0/24 inside those
//! namespaces only. Everything is made by the test and removed when the [`Net`] is dropped
//! (panics included): the processes left in the namespaces are killed, then the namespaces are
//! deleted. Where the kernel or the user may not make namespaces, [`Net::new`] says so and
//! returns `None`, and the test is skipped.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Net {
    /// The switch namespace.
    sw: String,
    /// (label, namespace, address)
    machines: Vec<(String, String, String)>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// Machines named `labels`, the first at 10.231.N.1, the next at .11, .12, …
    pub fn new(labels: &[&str]) -> Option<Net> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let base = format!("stw{}x{n}", std::process::id());
        let sw = format!("{base}sw");
        if let Err(e) = ip(&["netns", "add", &sw]) {
            println!("SKIPPED: cannot make network namespaces here ({e}); run as root on Linux");
            return None;
        }
        let mut net = Net {
            sw,
            machines: Vec::new(),
        };
        let subnet = 1 + n % 250;
        let made = (|| -> Result<(), String> {
            ip(&["-n", &net.sw, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &net.sw, "link", "set", "br0", "up"])?;
            for (i, label) in labels.iter().enumerate() {
                let ns = format!("{base}{label}");
                ip(&["netns", "add", &ns])?;
                let host = if i == 0 { 1 } else { 10 + i };
                let addr = format!("10.231.{subnet}.{host}");
                net.machines
                    .push(((*label).to_owned(), ns.clone(), addr.clone()));
                let port = format!("p{label}");
                ip(&[
                    "link", "add", "name", "eth0", "netns", &ns, "type", "veth", "peer", "name",
                    &port, "netns", &net.sw,
                ])?;
                ip(&["-n", &net.sw, "link", "set", &port, "master", "br0"])?;
                ip(&["-n", &net.sw, "link", "set", &port, "up"])?;
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "eth0",
                ])?;
                ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            }
            Ok(())
        })();
        match made {
            Ok(()) => Some(net),
            Err(e) => {
                println!("SKIPPED: cannot set up the simulated machines ({e})");
                None
            }
        }
    }

    fn machine(&self, label: &str) -> &(String, String, String) {
        self.machines
            .iter()
            .find(|m| m.0 == label)
            .unwrap_or_else(|| panic!("no machine {label}"))
    }

    /// The address of machine `label`.
    pub fn addr(&self, label: &str) -> &str {
        &self.machine(label).2
    }

    /// `program` run on machine `label` (in its namespace).
    pub fn cmd(&self, label: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.machine(label).1])
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// Cuts machine `label` off the network (`down`), or joins it again: its port on the switch.
    pub fn link(&self, label: &str, up: bool) {
        let port = format!("p{label}");
        ip(&[
            "-n",
            &self.sw,
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ])
        .expect("set the link");
    }

    /// An HTTP request from machine `from` with curl (bounded to 10 s): the status (0 when
    /// nothing answered) and the body.
    pub fn http(&self, from: &str, method: &str, url: &str, auth: Option<&str>) -> (u16, String) {
        let mut c = self.cmd(from, "curl");
        c.args([
            "-s",
            "--max-time",
            "10",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ]);
        if let Some(a) = auth {
            c.args(["-u", a]);
        }
        if method == "POST" {
            c.args(["-H", "Content-Type: application/json", "-d", "{}"]);
        }
        let out = c.arg(url).output().expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self
            .machines
            .iter()
            .map(|m| m.1.clone())
            .chain([self.sw.clone()])
        {
            // What still runs there (servers, agents, a Master) goes with the machine.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    }
                }
            }
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}
