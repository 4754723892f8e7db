//! Log files named as JEUS names them: `<log>_<YYYYMMDD>.log<NNNNN>` with `NNNNN` = 00001..99999,
//! a new number when the current file would pass its size limit, a new date (numbering from 00001
//! again) when the day changes. [`LogFile`] is the writer (launcher, server and access logs all use
//! it), [`mark`], [`read_since`] and [`tail`] the readers the launchers show boot lines with. The
//! lines themselves come from [`crate::logging`] (re-exported here: `logfile::Logger` is its
//! historical path).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::clock::Local;
pub use crate::logging::{Echo, Level, Logger};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {what}: {error}")]
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
}

/// The highest file number; past it the last file keeps growing rather than losing lines.
pub const MAX_NUMBER: u32 = 99_999;

/// How a log rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Start a new file before this many bytes would be exceeded (0: never by size).
    pub max_size: u64,
    /// Start a new file when the local date changes.
    pub daily: bool,
    /// Keep at most this many files of this log (0: keep all).
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_size: 10 << 20,
            daily: true,
            keep: 30,
        }
    }
}

/// One log file of a log, as found on disk.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPath {
    pub date: String,
    pub number: u32,
    pub path: PathBuf,
}

/// The file name of `base` for `date` (`YYYYMMDD`) and `number`.
pub fn file_name(base: &str, date: &str, number: u32) -> String {
    format!("{base}_{date}.log{number:05}")
}

/// Every file of the log `base` in `dir`, oldest first.
pub fn files(dir: &Path, base: &str) -> Vec<LogPath> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let prefix = format!("{base}_");
    let mut out: Vec<LogPath> = read
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix(&prefix)?;
            let (date, number) = rest.split_once(".log")?;
            if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) || number.len() != 5 {
                return None;
            }
            let number: u32 = number.parse().ok()?;
            Some(LogPath {
                date: date.to_owned(),
                number,
                path: e.path(),
            })
        })
        .collect();
    out.sort();
    out
}

/// A rotating log file writer. Each `write` goes whole into one file.
#[derive(Debug)]
pub struct LogFile {
    dir: PathBuf,
    base: String,
    rotation: Rotation,
    current: Option<Current>,
}

#[derive(Debug)]
struct Current {
    file: File,
    path: PathBuf,
    date: String,
    number: u32,
    size: u64,
}

impl LogFile {
    /// Opens the log `base` in `dir` (created if missing), continuing today's newest file if it
    /// has room.
    pub fn open(dir: &Path, base: &str, rotation: Rotation) -> Result<LogFile, LogError> {
        std::fs::create_dir_all(dir).map_err(|error| LogError::Io {
            path: dir.to_owned(),
            what: "cannot create the log directory",
            error,
        })?;
        let mut log = LogFile {
            dir: dir.to_owned(),
            base: base.to_owned(),
            rotation,
            current: None,
        };
        log.roll(0)?;
        Ok(log)
    }

    /// The file being written.
    pub fn path(&self) -> Option<&Path> {
        self.current.as_ref().map(|c| c.path.as_path())
    }

    /// A second handle on the current file (appending), e.g. for a child's stderr.
    pub fn try_clone_file(&self) -> Option<File> {
        self.current.as_ref().and_then(|c| c.file.try_clone().ok())
    }

    pub fn set_rotation(&mut self, rotation: Rotation) {
        self.rotation = rotation;
    }

    /// Makes sure the current file is the right one for a write of `len` bytes now.
    fn roll(&mut self, len: u64) -> Result<(), LogError> {
        let today = Local::now().date_stamp();
        if let Some(c) = &self.current {
            let date_ok = !self.rotation.daily || c.date == today;
            let size_ok = self.rotation.max_size == 0
                || c.size == 0
                || c.size + len <= self.rotation.max_size
                || c.number >= MAX_NUMBER;
            if date_ok && size_ok {
                return Ok(());
            }
        }
        let date = match (&self.current, self.rotation.daily) {
            (Some(c), false) => c.date.clone(),
            _ => today,
        };
        // Continue after the highest number on disk for this date: another process (an earlier
        // run) may have written files since this one started.
        let existing = files(&self.dir, &self.base)
            .into_iter()
            .filter(|f| f.date == date)
            .map(|f| f.number)
            .max();
        let number = match (existing, &self.current) {
            (None, _) => 1,
            (Some(n), Some(c)) if c.date == date && c.number >= n => (n + 1).min(MAX_NUMBER),
            (Some(n), _) => {
                // A fresh start appends to the newest file of the day while it has room.
                let path = self.dir.join(file_name(&self.base, &date, n));
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if self.current.is_none()
                    && (self.rotation.max_size == 0 || size + len <= self.rotation.max_size)
                {
                    n
                } else {
                    (n + 1).min(MAX_NUMBER)
                }
            }
        };
        let path = self.dir.join(file_name(&self.base, &date, number));
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|error| LogError::Io {
                path: path.clone(),
                what: "cannot open the log file",
                error,
            })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.current = Some(Current {
            file,
            path,
            date,
            number,
            size,
        });
        self.prune();
        Ok(())
    }

    /// Removes the oldest files beyond `keep`.
    fn prune(&self) {
        if self.rotation.keep == 0 {
            return;
        }
        let all = files(&self.dir, &self.base);
        let excess = all.len().saturating_sub(self.rotation.keep as usize);
        for f in all.into_iter().take(excess) {
            if Some(f.path.as_path()) != self.path() {
                let _ = std::fs::remove_file(&f.path);
            }
        }
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.roll(buf.len() as u64).map_err(std::io::Error::other)?;
        let Some(c) = self.current.as_mut() else {
            return Err(std::io::Error::other("log file not open"));
        };
        c.file.write_all(buf)?;
        c.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.current.as_mut() {
            Some(c) => c.file.flush(),
            None => Ok(()),
        }
    }
}

/// The last `n` lines of the log `base` in `dir`, across files (newest file last).
pub fn tail(dir: &Path, base: &str, n: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for f in files(dir, base).iter().rev() {
        let text = std::fs::read_to_string(&f.path).unwrap_or_default();
        let mut these: Vec<String> = text.lines().map(str::to_owned).collect();
        these.append(&mut lines);
        lines = these;
        if lines.len() >= n {
            break;
        }
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

/// A position in a log: the newest file and its length at some moment.
#[derive(Debug, Clone, Default)]
pub struct Mark {
    file: Option<LogPath>,
    len: u64,
}

/// Where the log `base` in `dir` ends now.
pub fn mark(dir: &Path, base: &str) -> Mark {
    let file = files(dir, base).pop();
    let len = file
        .as_ref()
        .and_then(|f| std::fs::metadata(&f.path).ok())
        .map(|m| m.len())
        .unwrap_or(0);
    Mark { file, len }
}

/// Everything written to the log since `mark`, as `(text, new mark)`: follows rotation into newer
/// files. Partial last lines are left for the next call.
pub fn read_since(dir: &Path, base: &str, since: &Mark) -> (String, Mark) {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = Vec::new();
    let mut mark = since.clone();
    for f in files(dir, base) {
        let start = match &mark.file {
            Some(m) if f < *m => continue,
            Some(m) if f == *m => mark.len,
            _ => 0,
        };
        let Ok(mut file) = File::open(&f.path) else {
            continue;
        };
        if file.seek(SeekFrom::Start(start)).is_err() {
            continue;
        }
        let mut buf = Vec::new();
        let _ = file.read_to_end(&mut buf);
        // Only whole lines: the writer may be in the middle of one.
        let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        out.extend_from_slice(&buf[..whole]);
        mark = Mark {
            file: Some(f),
            len: start + whole as u64,
        };
    }
    (String::from_utf8_lossy(&out).into_owned(), mark)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("steward-logfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn names_and_rotates_by_size() {
        let dir = tmp("size");
        let rot = Rotation {
            max_size: 20,
            daily: true,
            keep: 0,
        };
        let mut log = LogFile::open(&dir, "server", rot).unwrap();
        let today = Local::now().date_stamp();
        assert_eq!(
            log.path().unwrap().file_name().unwrap().to_str().unwrap(),
            format!("server_{today}.log00001")
        );
        log.write_all(b"0123456789\n").unwrap();
        log.write_all(b"0123456789\n").unwrap(); // 22 > 20: a new file
        log.write_all(b"x\n").unwrap();
        let names: Vec<u32> = files(&dir, "server").iter().map(|f| f.number).collect();
        assert_eq!(names, vec![1, 2]);
        // A new writer (a restart) continues the newest file while it has room.
        let log2 = LogFile::open(&dir, "server", rot).unwrap();
        assert!(
            log2.path()
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with(".log00002")
        );
        assert_eq!(tail(&dir, "server", 2), vec!["0123456789", "x"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_new_day_starts_a_new_file_numbered_from_one() {
        let dir = tmp("day");
        let rot = Rotation {
            max_size: 0,
            daily: true,
            keep: 0,
        };
        let mut log = LogFile::open(&dir, "launcher", rot).unwrap();
        log.write_all(b"today\n").unwrap();
        // Pretend the file was opened yesterday (as number 7).
        let yesterday = dir.join(file_name("launcher", "19991231", 7));
        std::fs::rename(log.path().unwrap(), &yesterday).unwrap();
        if let Some(c) = log.current.as_mut() {
            c.date = "19991231".into();
            c.number = 7;
            c.path = yesterday.clone();
        }
        log.write_all(b"tomorrow\n").unwrap();
        let today = Local::now().date_stamp();
        let names: Vec<(String, u32)> = files(&dir, "launcher")
            .into_iter()
            .map(|f| (f.date, f.number))
            .collect();
        assert_eq!(names, vec![("19991231".into(), 7), (today, 1)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keeps_only_keep_files_and_reads_since_a_mark() {
        let dir = tmp("keep");
        let rot = Rotation {
            max_size: 2,
            daily: false,
            keep: 2,
        };
        let mut log = LogFile::open(&dir, "access", rot).unwrap();
        let m = mark(&dir, "access");
        for line in ["a\n", "b\n", "c\n", "d\n"] {
            log.write_all(line.as_bytes()).unwrap();
        }
        let kept: Vec<u32> = files(&dir, "access").iter().map(|f| f.number).collect();
        assert_eq!(kept, vec![3, 4]);
        let (text, _) = read_since(&dir, "access", &m);
        assert_eq!(text, "c\nd\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
