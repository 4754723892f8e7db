//! The running server process as other processes see it: its pid file, whether the pid really is
//! this server (a stale pid file, or a pid reused by another program, must not fool a stop), and
//! the graceful stop (SIGTERM, wait, then SIGKILL).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::layout::ServerHome;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{path}: {what}: {error}")]
    Io {
        path: std::path::PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("cannot signal pid {pid}: {error}")]
    Signal { pid: i32, error: std::io::Error },
}

/// Makes the process `cmd` spawns the leader of a new session: it has no controlling terminal,
/// so it outlives the shell that started it and a Ctrl-C (or a stop) aimed at its parent's group
/// does not reach it.
pub fn detach(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// What the pid file says about the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Running {
    /// The pid is alive and its command line is `steward server` for this home and server.
    Yes { pid: i32, argv: Vec<String> },
    /// No pid file.
    No,
    /// A pid file whose pid is dead or is some other process.
    Stale { pid: i32 },
}

/// The pid in the pid file, if it holds one.
pub fn read_pid(home: &ServerHome) -> Option<i32> {
    std::fs::read_to_string(home.pid_file())
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p: &i32| *p > 0)
}

/// Writes `pid` to the pid file (atomically).
pub fn write_pid(home: &ServerHome, pid: u32) -> Result<(), ProcessError> {
    let path = home.pid_file();
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, format!("{pid}\n")).map_err(|error| ProcessError::Io {
        path: tmp.clone(),
        what: "cannot write the pid file",
        error,
    })?;
    std::fs::rename(&tmp, &path).map_err(|error| ProcessError::Io {
        path,
        what: "cannot write the pid file",
        error,
    })
}

/// Removes the pid file if it still names `pid` (a newer server may have replaced it).
pub fn remove_pid(home: &ServerHome, pid: u32) {
    if read_pid(home) == Some(pid as i32) {
        let _ = std::fs::remove_file(home.pid_file());
    }
}

/// The command line of `pid`, if it is alive (zombies count as dead).
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    if !alive(pid) {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S …`: comm may contain spaces and parentheses, the state follows the last `)`.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Waits, up to `limit`, until a dead `pid` has let go of its files. After SIGKILL the thread
/// group's leader shows as a zombie while its other threads are still exiting, and the files
/// (a server's store locks among them) close only with the last of them: a server started
/// before then fails on those locks. A live process (a foreign pid) is not waited for.
pub fn wait_released(pid: i32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !alive(pid) && Instant::now() < deadline {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return;
        };
        let threads = status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse::<u32>().ok());
        if threads.is_none_or(|n| n <= 1) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value after `flag` in `argv`.
pub fn arg_value<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == flag)
        .and_then(|i| argv.get(i + 1))
        .map(String::as_str)
}

/// True when `argv` is `steward server --domain-home HOME --server NAME …` for `home`.
pub fn is_server_of(argv: &[String], home: &ServerHome) -> bool {
    let sub = argv.get(1).map(String::as_str) == Some("server");
    let name = arg_value(argv, "--server") == Some(home.name.as_str());
    let dir = arg_value(argv, "--domain-home")
        .map(|d| same_path(Path::new(d), &home.domain_home))
        .unwrap_or(false);
    sub && name && dir
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Whether the server of `home` runs, by its pid file and `/proc`.
pub fn running(home: &ServerHome) -> Running {
    let Some(pid) = read_pid(home) else {
        return Running::No;
    };
    match cmdline(pid) {
        Some(argv) if is_server_of(&argv, home) => Running::Yes { pid, argv },
        _ => Running::Stale { pid },
    }
}

pub fn signal(pid: i32, sig: libc::c_int) -> Result<(), ProcessError> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ESRCH) {
        return Ok(());
    }
    Err(ProcessError::Signal { pid, error })
}

/// Waits until `pid` is gone, up to `timeout`; true if it is gone.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How a stop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// Exited after SIGTERM, within the timeout.
    Gracefully { pid: i32, elapsed: Duration },
    /// Still there after the timeout: killed with SIGKILL.
    Killed { pid: i32 },
}

/// SIGTERM, wait up to `timeout`, then SIGKILL. The caller checked that `pid` is the server.
pub fn stop_pid(pid: i32, timeout: Duration) -> Result<Stopped, ProcessError> {
    let start = Instant::now();
    signal(pid, libc::SIGTERM)?;
    if wait_gone(pid, timeout) {
        return Ok(Stopped::Gracefully {
            pid,
            elapsed: start.elapsed(),
        });
    }
    signal(pid, libc::SIGKILL)?;
    wait_gone(pid, Duration::from_secs(5));
    Ok(Stopped::Killed { pid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_pid_is_stale() {
        let d = std::env::temp_dir().join(format!("steward-proc-{}", std::process::id()));
        let home = ServerHome::new(&d, "s1").unwrap();
        home.create().unwrap();
        assert_eq!(running(&home), Running::No);
        // This test process is alive but is not `steward server`.
        write_pid(&home, std::process::id()).unwrap();
        assert_eq!(
            running(&home),
            Running::Stale {
                pid: std::process::id() as i32
            }
        );
        assert!(alive(std::process::id() as i32));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn recognizes_its_server_command_line() {
        let home = ServerHome::new(Path::new("/srv/d1"), "s1").unwrap();
        let argv: Vec<String> = [
            "/usr/bin/steward",
            "server",
            "--domain-home",
            "/srv/d1",
            "--server",
            "s1",
        ]
        .map(String::from)
        .to_vec();
        assert!(is_server_of(&argv, &home));
        let mut other = argv.clone();
        other[5] = "s2".into();
        assert!(!is_server_of(&other, &home));
    }
}
