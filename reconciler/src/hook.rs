//! Steward's Git server hook: reading what `pre-receive` is given, the check itself ([`check`]),
//! and installing the hook into a bare repository. The hook (`steward hook pre-receive`) opens
//! the repository with [`Repo::open_from_env`] to see the pushed objects; the Master runs the
//! same check in its own process on a [`Repo::open_with_pack`] and skips its repository's hook
//! while the hook is only this one (see `runtime::master::precheck`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use gix::bstr::ByteSlice;

use crate::git::{GitError, Oid, Repo};

/// File name of the copy of a foreign `pre-receive` hook that [`install`] replaced.
pub const BACKUP_NAME: &str = "pre-receive.steward-backup";

/// Marks a hook script as Steward's own, so reinstalling does not back it up over the original.
const MARKER: &str = "# Installed by `steward hook install`";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("pre-receive input line {line}: {reason}: {text:?}")]
    Malformed {
        line: usize,
        text: String,
        reason: &'static str,
    },
    #[error(
        "{path}: not a bare Git repository ({reason}); install the hook on the server's repository"
    )]
    NotBare { path: PathBuf, reason: String },
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("{path}: {what}: {error}")]
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
}

type Result<T, E = HookError> = std::result::Result<T, E>;

/// One line of `pre-receive` input: `ref` moves from `old` to `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// The ref's current value, all zeros when the push creates it.
    pub old: Oid,
    /// The pushed value, all zeros when the push deletes the ref. For an annotated tag this is the
    /// tag object; [`Repo::resolve`](crate::git::Repo::resolve) peels it to its commit.
    pub new: Oid,
    /// The full ref name, e.g. `refs/heads/main`.
    pub name: String,
}

impl RefUpdate {
    /// The push deletes the ref: there is no new commit to validate.
    pub fn is_delete(&self) -> bool {
        self.new.is_null()
    }

    /// The push creates the ref: there is no previous commit to diff against.
    pub fn is_create(&self) -> bool {
        self.old.is_null()
    }
}

/// Parse the standard input git gives `pre-receive`: one `<old> SP <new> SP <ref> LF` per
/// updated ref. Blank lines are ignored; anything else malformed is an error, since silently
/// skipping an update would let it through unvalidated.
pub fn parse_pre_receive(input: &str) -> Result<Vec<RefUpdate>> {
    let mut out = Vec::new();
    for (i, raw) in input.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |reason| HookError::Malformed {
            line: i + 1,
            text: line.to_owned(),
            reason,
        };
        let mut fields = line.split(' ');
        let (Some(old), Some(new), Some(name), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(malformed("expected `<old-id> <new-id> <ref-name>`"));
        };
        let old = Oid::from_hex(old).map_err(|_| malformed("the old value is not an object id"))?;
        let new = Oid::from_hex(new).map_err(|_| malformed("the new value is not an object id"))?;
        if name.is_empty() {
            return Err(malformed("the ref name is empty"));
        }
        if old.as_gix().kind() != new.as_gix().kind() {
            return Err(malformed("the old and new ids use different hash kinds"));
        }
        out.push(RefUpdate {
            old,
            new,
            name: name.to_owned(),
        });
    }
    Ok(out)
}

/// What the check says of a push.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Every updated ref is valid (warnings allowed): the push may go on.
    pub accepted: bool,
    /// What the pusher is shown, in lines: a hook's stderr, which git passes on as `remote:`
    /// lines, or side band 2 of the Master's answer.
    pub messages: String,
    /// The model of each valid commit, so that deciding on it need not validate it again.
    pub valid: Vec<(Oid, schema::Loaded)>,
}

/// Validates the commit each update (but a deletion) brings, as read from `repo`, which must see
/// the pushed objects.
pub fn check(repo: &Repo, updates: &[RefUpdate]) -> Result<Verdict> {
    let mut verdict = Verdict {
        accepted: true,
        messages: String::new(),
        valid: Vec::new(),
    };
    for u in updates.iter().filter(|u| !u.is_delete()) {
        // An annotated tag is validated as the commit it names.
        let commit = match repo.resolve(&u.new.to_hex()) {
            Ok(Some(commit)) => commit,
            Ok(None) => {
                verdict.accepted = false;
                verdict.messages.push_str(&format!(
                    "steward: push to {} refused: its object {} is not in the push\n",
                    u.name, u.new
                ));
                continue;
            }
            Err(GitError::NotACommit { kind, .. }) => {
                verdict.accepted = false;
                verdict.messages.push_str(&format!(
                    "steward: push to {} refused: it names a {kind}, not a commit\n",
                    u.name
                ));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let tree = repo.tree(commit)?;
        let v = schema::validate(&tree);
        let report = &v.report;
        let out = &mut verdict.messages;
        if let Some(loaded) = v.loaded.clone() {
            verdict.valid.push((commit, loaded));
        }
        if report.problems.is_empty() {
            out.push_str(&format!(
                "steward: {} {} is valid\n",
                u.name, report.revision
            ));
            continue;
        }
        out.push_str(&report.render_short());
        if !report.is_valid() {
            verdict.accepted = false;
            out.push_str(&report.render_human(false));
            out.push_str(&format!(
                "steward: push to {} refused: fix the problems above and push again\n",
                u.name
            ));
        }
    }
    Ok(verdict)
}

/// Whether a hook's `content` is what [`install`] writes.
fn written_by_install(content: &[u8]) -> bool {
    content.find(MARKER.as_bytes()).is_some()
}

/// Hooks `git receive-pack` runs, besides `pre-receive`.
const RECEIVE_HOOKS: [&str; 6] = [
    "update",
    "proc-receive",
    "post-receive",
    "post-update",
    "reference-transaction",
    "push-to-checkout",
];

/// Whether the only hook `git receive-pack` would run on the bare repository `git_dir` is the
/// `pre-receive` [`install`] wrote: then whoever ran [`check`] on the push may start
/// `receive-pack` with hooks off (`core.hooksPath=/dev/null`) and lose nothing. A hook of the
/// operator's (a site policy, a notification), or hooks kept elsewhere (`core.hooksPath` in any
/// configuration git reads), make it `false`.
pub fn only_stewards_hook(git_dir: &Path) -> bool {
    let hooks = git_dir.join("hooks");
    if !fs::read(hooks.join("pre-receive")).is_ok_and(|b| written_by_install(&b)) {
        return false;
    }
    if RECEIVE_HOOKS.iter().any(|h| hooks.join(h).exists()) {
        return false;
    }
    gix::config::File::from_git_dir(git_dir.to_owned())
        .is_ok_and(|c| c.string("core.hooksPath").is_none())
}

/// Why `path` is not a bare repository, or `None` when it is one.
fn not_bare_reason(path: &Path) -> Option<String> {
    if !path.is_dir() {
        return Some("no such directory".to_owned());
    }
    let missing: Vec<&str> = [("objects", true), ("refs", true), ("HEAD", false)]
        .into_iter()
        .filter(|(name, dir)| {
            let p = path.join(name);
            if *dir { !p.is_dir() } else { !p.is_file() }
        })
        .map(|(name, _)| name)
        .collect();
    if !missing.is_empty() {
        return Some(format!("missing {}", missing.join(", ")));
    }
    // A work tree's `.git` directory has the same layout; ask git's rules whether it is bare.
    let opts = gix::open::Options::default().open_path_as_is(true);
    match gix::ThreadSafeRepository::open_opts(path, opts) {
        Ok(repo) if repo.work_dir().is_none() => None,
        Ok(_) => Some("it belongs to a work tree".to_owned()),
        Err(e) => Some(e.to_string()),
    }
}

/// Install Steward as the `pre-receive` hook of the bare repository `bare_repo`, running
/// `steward_exe` (made absolute against the current directory, since git runs hooks from the
/// repository). Returns the hook's path.
///
/// The script is written to a temporary file next to it and renamed into place, so a push never
/// runs a half-written hook. An existing `pre-receive` hook is replaced: the first time, when it
/// is not already Steward's, its content is kept as [`BACKUP_NAME`] in the hooks directory (an
/// existing backup is never overwritten). Nothing else of the old hook is preserved or chained.
pub fn install(bare_repo: &Path, steward_exe: &Path) -> Result<PathBuf> {
    if let Some(reason) = not_bare_reason(bare_repo) {
        return Err(HookError::NotBare {
            path: bare_repo.to_owned(),
            reason,
        });
    }
    let exe = std::path::absolute(steward_exe).map_err(|error| HookError::Io {
        path: steward_exe.to_owned(),
        what: "cannot make the executable path absolute",
        error,
    })?;
    let io = |path: &Path, what: &'static str| {
        let path = path.to_owned();
        move |error| HookError::Io { path, what, error }
    };

    let hooks = bare_repo.join("hooks");
    fs::create_dir_all(&hooks).map_err(io(&hooks, "cannot create the hooks directory"))?;
    let hook = hooks.join("pre-receive");
    let backup = hooks.join(BACKUP_NAME);

    match fs::read(&hook) {
        Ok(existing) => {
            let ours = written_by_install(&existing);
            if !ours && !backup.exists() {
                // A copy, not a rename: the old hook stays active until the new one replaces it.
                fs::copy(&hook, &backup)
                    .map_err(io(&backup, "cannot back up the existing hook"))?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&hook, "cannot read the existing hook")(e)),
    }

    let script = script(&exe).map_err(io(&exe, "cannot use this executable path"))?;
    let tmp = hooks.join(format!(".pre-receive.steward-{}.tmp", std::process::id()));
    let written = write_executable(&tmp, &script).and_then(|()| fs::rename(&tmp, &hook));
    if let Err(error) = written {
        let _ = fs::remove_file(&tmp);
        return Err(HookError::Io {
            path: hook,
            what: "cannot write the hook",
            error,
        });
    }
    Ok(hook)
}

/// The argument of the hook's `#!` line: the kernel runs `STEWARD hook <the hook's path>`, which
/// `steward` reads as `steward hook pre-receive`.
pub const SHEBANG_ARG: &str = "hook";

/// The longest `#!` line every kernel reads whole (Linux before 5.1 read 127 bytes of it).
const SHEBANG_MAX: usize = 127;

/// The hook script. Where the executable's path allows it, its first line has the kernel start
/// Steward itself (`#!/path/to/steward hook`): no shell between git and the validation, which
/// saves starting one on every push (about 1 ms here). A path a `#!` line cannot carry (with
/// white space, or too long) gets a `sh` script that `exec`s it instead. Either way git sees
/// Steward's exit status and output directly, and the file stays a short text file to read.
fn script(exe: &Path) -> std::io::Result<Vec<u8>> {
    let path = gix::path::os_str_into_bstr(exe.as_os_str())
        .map_err(|_| std::io::Error::other("the path is not valid Unicode"))?;
    let mut s = Vec::new();
    let shebang = 2 + path.len() + 1 + SHEBANG_ARG.len();
    if shebang <= SHEBANG_MAX && !path.iter().any(|b| b.is_ascii_whitespace() || *b < 0x20) {
        s.extend_from_slice(b"#!");
        s.extend_from_slice(path);
        s.extend_from_slice(format!(" {SHEBANG_ARG}\n").as_bytes());
        s.extend_from_slice(MARKER.as_bytes());
        s.extend_from_slice(b": validates every pushed commit.\n");
        s.extend_from_slice(
            b"# The system runs it as `steward hook <this file>`: `steward hook pre-receive`.\n",
        );
        return Ok(s);
    }
    s.extend_from_slice(b"#!/bin/sh\n");
    s.extend_from_slice(MARKER.as_bytes());
    s.extend_from_slice(b": validates every pushed commit.\n");
    s.extend_from_slice(b"exec ");
    s.extend_from_slice(&gix::quote::single(path));
    s.extend_from_slice(b" hook pre-receive\n");
    Ok(s)
}

/// Whether `steward hook ARG` was started by a hook's `#!` line (see [`script`]): `ARG` is then the
/// hook's own path, which ends in `/pre-receive`.
pub fn started_by_hook_line(arg: &Path) -> bool {
    arg.file_name().is_some_and(|n| n == "pre-receive")
        && arg.parent().is_some_and(|p| !p.as_os_str().is_empty())
}

fn write_executable(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o755);
    }
    let mut file = options.open(path)?;
    file.write_all(content)?;
    #[cfg(unix)]
    {
        // `mode` above is filtered by the umask; hooks must be executable regardless.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o755))?;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const Z: &str = "0000000000000000000000000000000000000000";

    #[test]
    fn parses_updates_creates_and_deletes() {
        let input =
            format!("{A} {B} refs/heads/main\n{Z} {A} refs/heads/new\n\n{B} {Z} refs/tags/v1\n");
        let updates = parse_pre_receive(&input).expect("valid input");
        assert_eq!(updates.len(), 3);
        assert_eq!(updates[0].old.to_hex(), A);
        assert_eq!(updates[0].new.to_hex(), B);
        assert_eq!(updates[0].name, "refs/heads/main");
        assert!(!updates[0].is_delete() && !updates[0].is_create());
        assert!(updates[1].is_create() && !updates[1].is_delete());
        assert!(updates[2].is_delete());
        assert_eq!(updates[2].name, "refs/tags/v1");
    }

    #[test]
    fn empty_input_is_no_updates() {
        assert_eq!(parse_pre_receive("").expect("empty is valid"), vec![]);
    }

    #[test]
    fn rejects_malformed_lines_with_their_number() {
        let cases = [
            format!("{A} {B}"),
            format!("{A} {B} refs/heads/main extra"),
            format!("{A}  {B} refs/heads/main"),
            format!("1234 {B} refs/heads/main"),
            format!("{A} {}x refs/heads/main", &B[..39]),
            format!("{A} {B} "),
            "garbage".to_owned(),
        ];
        for case in cases {
            let input = format!("{A} {B} refs/heads/ok\n{case}\n");
            match parse_pre_receive(&input) {
                Err(HookError::Malformed { line, text, .. }) => {
                    assert_eq!(line, 2, "{case:?}");
                    assert_eq!(text, case);
                }
                other => panic!("{case:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn the_kernel_starts_steward_itself_where_the_path_allows_it() {
        let s = script(Path::new("/usr/local/bin/steward")).expect("unicode path");
        let s = String::from_utf8(s).expect("utf-8");
        assert!(s.starts_with("#!/usr/local/bin/steward hook\n"), "{s}");
        assert!(s.contains(MARKER), "{s}");
        // Too long for every kernel's `#!` line: a shell script instead.
        let long = format!("/{}/steward", "d".repeat(120));
        let s = String::from_utf8(script(Path::new(&long)).expect("path")).expect("utf-8");
        assert!(s.starts_with("#!/bin/sh\n"), "{s}");
        assert!(
            s.contains(&format!("exec '{long}' hook pre-receive")),
            "{s}"
        );
        assert!(started_by_hook_line(Path::new("hooks/pre-receive")));
        assert!(started_by_hook_line(Path::new(
            "/srv/domain.git/hooks/pre-receive"
        )));
        assert!(!started_by_hook_line(Path::new("pre-receive")));
        assert!(!started_by_hook_line(Path::new("hooks/post-receive")));
    }

    #[test]
    fn script_quotes_the_path() {
        let s = script(Path::new("/opt/it's here/steward")).expect("unicode path");
        let s = String::from_utf8(s).expect("utf-8");
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(
            s.contains(r#"exec '/opt/it'\''s here/steward' hook pre-receive"#),
            "{s}"
        );
    }
}
