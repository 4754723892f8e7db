//! One Master per domain home: an exclusive lock on `config/master.lock`, held for the life of the
//! process; the file holds the pid, for the message a second Master prints.
//!
//! A POSIX record lock (`fcntl(F_SETLK)`), not `flock`: a record lock belongs to the process, so
//! no child of the Master ever holds it. An `flock` belongs to the open file, and every child
//! holds a copy of the Master's files from its start until it runs its program (which closes
//! them): a Master killed while it was starting `git` kept its home locked for that moment, and a
//! Master restarted at once found it "already running". The kernel releases a record lock however
//! the process ends, `kill -9` included. The one rule it brings: the Master must never open and
//! close this file elsewhere, which would release the lock (only [`lock_home`] opens it).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::{MasterError, Result};

const LOCK_FILE: &str = "master.lock";

/// Takes the domain home's lock (in its `config` directory) for the life of the returned file, or
/// says which Master holds it.
pub(super) fn lock_home(config: &Path) -> Result<File> {
    use std::io::{Read, Seek, Write};
    let path = config.join(LOCK_FILE);
    let err = |error| MasterError::Lock {
        path: path.clone(),
        error,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(err)?;
    if !try_lock(&file).map_err(err)? {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim().to_owned();
        return Err(MasterError::AlreadyRunning {
            pid: (!pid.is_empty()).then_some(pid),
        });
    }
    file.set_len(0).map_err(err)?;
    file.rewind().map_err(err)?;
    write!(file, "{}", std::process::id()).map_err(err)?;
    Ok(file)
}

/// The pid of the Master running on the domain home `home`, if one runs: the one holding the lock
/// of [`lock_home`] (so a stale pid never counts). `Some(None)`: it runs, but its pid is not known
/// (it has not written it yet, and the kernel does not say).
pub fn running(home: &Path) -> Result<Option<Option<u32>>> {
    let path = home.join("config").join(LOCK_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(MasterError::Lock { path, error }),
    };
    let Some(holder) = holder(&file).map_err(|error| MasterError::Lock {
        path: path.clone(),
        error,
    })?
    else {
        return Ok(None);
    };
    let written = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    Ok(Some(written.or(holder)))
}

/// A record lock of `kind` on the whole file.
fn whole_file(kind: libc::c_int) -> libc::flock {
    // SAFETY: `flock` is plain data, for which all zeros is a valid value (from offset 0 to the
    // end of the file, whatever its length).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}

/// Takes the exclusive lock on `file` (open for writing); `false` when another process holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    let lock = whole_file(libc::F_WRLCK);
    // SAFETY: the descriptor is open for as long as `file` lives; `lock` is a valid `flock`.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EAGAIN) => Ok(false),
        _ => Err(e),
    }
}

/// Whether another process holds the exclusive lock on `file`: `Some` with its pid as the kernel
/// gives it (`None` inside: from another pid namespace), `None` when nobody holds it.
fn holder(file: &File) -> io::Result<Option<Option<u32>>> {
    let mut lock = whole_file(libc::F_RDLCK);
    // SAFETY: as in `try_lock`; F_GETLK only writes into `lock`.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lock.l_type == libc::F_UNLCK as libc::c_short {
        return Ok(None);
    }
    Ok(Some(u32::try_from(lock.l_pid).ok().filter(|p| *p != 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What made a restarted Master find its home "already running": a child of the old one that
    /// still had the lock file open. With a record lock, such a child holds nothing.
    #[test]
    fn a_child_with_the_lock_file_open_does_not_hold_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path();
        let config = home.join("config");
        std::fs::create_dir(&config).expect("mkdir");
        assert!(running(home).expect("running").is_none());
        let lock = lock_home(&config).expect("lock");
        assert_eq!(
            std::fs::read_to_string(config.join(LOCK_FILE)).expect("pid"),
            std::process::id().to_string()
        );
        // A descriptor without close-on-exec: the child keeps it open while it runs.
        // SAFETY: duplicates a descriptor `lock` keeps open.
        let inherited = unsafe { libc::dup(lock.as_raw_fd()) };
        assert!(inherited >= 0);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        // SAFETY: closes the duplicate made above, which nothing else uses.
        unsafe { libc::close(inherited) };
        // This process lets go, as a Master killed would.
        drop(lock);
        let free = running(home).expect("running").is_none();
        let _ = child.kill();
        let _ = child.wait();
        assert!(free, "the child held the lock");
        let again = lock_home(&config).expect("a new Master takes it at once");
        drop(again);
    }
}
