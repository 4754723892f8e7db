//! The sd_notify protocol, both sides: a server tells whoever started it (systemd with
//! `Type=notify`, or the launcher) that it is ready by sending `READY=1` as one datagram to the
//! unix socket named by `NOTIFY_SOCKET`; a name starting with `@` is in the abstract namespace.
//! Hand-written: the sd_notify crates implement the sending side only, and the launcher must also
//! receive (bind, wait with a timeout); both sides are one datagram over std's `UnixDatagram`.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={socket}: {error}")]
    Send {
        socket: String,
        error: std::io::Error,
    },
    #[error("{path}: cannot bind the notify socket: {error}")]
    Bind { path: String, error: std::io::Error },
    #[error("notify socket: {0}")]
    Io(std::io::Error),
}

fn address(socket: &str) -> std::io::Result<SocketAddr> {
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        SocketAddr::from_pathname(socket)
    }
}

/// Sends `state` (e.g. `READY=1\nSTATUS=RUNNING`) to `$NOTIFY_SOCKET`. Without the variable this
/// does nothing (the server was started by hand) and returns `Ok(false)`.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = socket.to_string_lossy().into_owned();
    send(&socket, state)?;
    Ok(true)
}

/// Sends `state` to the notify socket `socket` (a path or `@abstract`).
pub fn send(socket: &str, state: &str) -> Result<(), NotifyError> {
    let err = |error| NotifyError::Send {
        socket: socket.to_owned(),
        error,
    };
    let addr = address(socket).map_err(err)?;
    let sock = UnixDatagram::unbound().map_err(err)?;
    sock.send_to_addr(state.as_bytes(), &addr).map_err(err)?;
    Ok(())
}

/// The receiving side, as the launcher binds it: a datagram socket whose name goes into the
/// child's `NOTIFY_SOCKET`. Removed on drop.
#[derive(Debug)]
pub struct Listener {
    sock: UnixDatagram,
    name: String,
    path: Option<PathBuf>,
}

/// Paths of unix sockets are limited to 107 bytes; longer ones go to the abstract namespace.
const MAX_PATH: usize = 100;

impl Listener {
    /// Binds `dir/notify-<pid>.sock`, or an abstract name if that path is too long.
    pub fn bind(dir: &Path) -> Result<Listener, NotifyError> {
        let path = dir.join(format!("notify-{}.sock", std::process::id()));
        let (sock, name, path) = if path.as_os_str().len() <= MAX_PATH {
            let _ = std::fs::remove_file(&path);
            let sock = UnixDatagram::bind(&path).map_err(|error| NotifyError::Bind {
                path: path.display().to_string(),
                error,
            })?;
            (sock, path.display().to_string(), Some(path))
        } else {
            let name = format!(
                "@steward-notify-{}-{}",
                std::process::id(),
                crate::clock::unix_now()
            );
            let addr = address(&name).map_err(NotifyError::Io)?;
            let sock = UnixDatagram::bind_addr(&addr).map_err(|error| NotifyError::Bind {
                path: name.clone(),
                error,
            })?;
            (sock, name, None)
        };
        Ok(Listener { sock, name, path })
    }

    /// The value for the child's `NOTIFY_SOCKET`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits up to `timeout` for one message; `None` on timeout.
    pub fn recv(&self, timeout: Duration) -> Result<Option<String>, NotifyError> {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(NotifyError::Io)?;
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(NotifyError::Io(e)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The value of `KEY=` in a notify message, if present.
pub fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_abstract_sockets_carry_ready() {
        let dir = std::env::temp_dir();
        let l = Listener::bind(&dir).unwrap();
        send(l.name(), "READY=1\nMAINPID=42").unwrap();
        let m = l.recv(Duration::from_secs(2)).unwrap().unwrap();
        assert_eq!(field(&m, "READY"), Some("1"));
        assert_eq!(field(&m, "MAINPID"), Some("42"));
        drop(l);

        let long = dir.join("x".repeat(120));
        let _ = std::fs::create_dir_all(&long);
        let l = Listener::bind(&long).unwrap();
        assert!(l.name().starts_with('@'));
        send(l.name(), "READY=1").unwrap();
        assert_eq!(
            l.recv(Duration::from_secs(2)).unwrap().as_deref(),
            Some("READY=1")
        );
        assert_eq!(l.recv(Duration::from_millis(10)).unwrap(), None);
        let _ = std::fs::remove_dir_all(&long);
    }
}
