//! A small W3C WebDriver client for a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`): chromedriver on a free port, one session, JSON over the tests' own HTTP
//! client. Only what the WebAdmin test needs: navigate, find by CSS, text, click, execute script,
//! accept a `confirm()`.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::http::send_request_body;

/// The key W3C WebDriver gives element references under.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver process and its one browser session; both end on drop.
pub struct WebDriver {
    child: Child,
    port: u16,
    session: String,
}

impl WebDriver {
    /// Starts chromedriver and a headless Chromium session. Panics with what to install when
    /// either is missing: the test must fail, not pass without a browser.
    pub fn start() -> WebDriver {
        for (path, package) in [(CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: the WebAdmin browser test needs a real Chromium and its \
                 WebDriver (`apt-get install {package}`, as .ci/run does)"
            );
        }
        let port = super::free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, which the browsers it starts join: all end together on drop.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {CHROMEDRIVER}: {e}"));
        let mut driver = WebDriver {
            child,
            port,
            session: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited at start with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer in 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1400,1000"],
                },
            }}
        });
        let v = driver
            .call("POST", "/session", Some(caps))
            .unwrap_or_else(|e| panic!("Chromium did not start a WebDriver session: {e}"));
        driver.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {v}"))
            .to_owned();
        driver
    }

    /// One WebDriver command: its `value`, or the error it answered.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string());
        let (status, text) = exchange(self.port, method, path, body.as_deref())
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{method} {path}: {e}: {text}"))?;
        if status != 200 {
            return Err(format!("{method} {path}: {status} {}", v["value"]));
        }
        Ok(v["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.session_call(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })));
    }

    /// The first element `css` matches, if any.
    pub fn find(&self, css: &str) -> Option<String> {
        let v = self
            .session_call(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .ok()?;
        v[ELEMENT].as_str().map(str::to_owned)
    }

    /// How many elements `css` matches.
    pub fn count(&self, css: &str) -> usize {
        self.command(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        )
        .as_array()
        .map_or(0, Vec::len)
    }

    /// The rendered text of the first element `css` matches; `None` when there is none.
    pub fn text(&self, css: &str) -> Option<String> {
        let id = self.find(css)?;
        let v = self
            .session_call("GET", &format!("/element/{id}/text"), None)
            .ok()?;
        v.as_str().map(str::to_owned)
    }

    pub fn click(&self, css: &str) {
        let id = self
            .find(css)
            .unwrap_or_else(|| panic!("nothing to click at `{css}`"));
        self.command("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; what it returns.
    pub fn script(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Accepts the open `confirm()`, waiting up to 5 s for it to open.
    pub fn accept_alert(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.session_call("POST", "/alert/accept", Some(json!({}))) {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!("no dialog to accept: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Polls `f` until it gives `Some`, at most `secs`; panics with `what` and the page's text.
    pub fn wait<T>(&self, what: &str, secs: u64, mut f: impl FnMut(&WebDriver) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if Instant::now() > deadline {
                let page = self.text("body").unwrap_or_default();
                panic!("timed out after {secs} s waiting for {what}; the page says:\n{page}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        // chromedriver and any browser left of it (a session that never finished starting).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// One request to chromedriver; its status and body. The body is read by its `Content-Length`:
/// chromedriver answers `Connection: close` but keeps the connection open.
fn exchange(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    // Starting a browser on a busy machine can take a while.
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    send_request_body(&mut stream, port, method, path, None, body)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut len = 0;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut buf = vec![0; len];
    reader.read_exact(&mut buf)?;
    Ok((status, String::from_utf8_lossy(&buf).into_owned()))
}
