//! The Git server hook: installation into real bare repositories, and reading pushed commits from
//! inside a real `pre-receive` hook run by `git push`.

use std::io::Read;
use std::path::Path;

use crate::util::{git, git_output, write};
use reconciler::git::Repo;
use reconciler::hook::{self, HookError};
use schema::tree::Tree;

/// Set in the environment of a hook that re-runs this test binary (see [`hook_child`]).
const CHILD_OUT: &str = "STEWARD_TEST_HOOK_OUT";

/// Not a test on its own: when `git push` runs this test binary as a `pre-receive` hook (with
/// `CHILD_OUT` set), this reads the pushed commits the way `steward hook pre-receive` does and
/// writes what it saw to `CHILD_OUT`. In a normal test run it returns at once.
#[test]
fn hook_child() {
    let Some(out) = std::env::var_os(CHILD_OUT) else {
        return;
    };
    let mut report = String::new();
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .expect("hook stdin");
    let updates = hook::parse_pre_receive(&input).expect("git's input parses");
    let repo = Repo::open_from_env().expect("open from the hook environment");
    // Without the hook's object directories the pushed commit is invisible: that is the point.
    let plain = Repo::open(Path::new(".")).expect("plain open in the hook's directory");
    for u in &updates {
        let id = repo
            .resolve(&u.new.to_hex())
            .expect("resolve")
            .expect("the pushed commit is readable");
        let tree = repo.tree(id).expect("tree of the pushed commit");
        let read = |p: &str| {
            tree.read(p)
                .expect("read")
                .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        };
        let parent = repo.parent(id).expect("parent").map(|p| p.to_hex());
        let info = repo.commit_info(id).expect("info");
        report.push_str(&format!(
            "ref={} new={} old={} plain={:?} parent={} summary={} domain={:?} kept={:?}\n",
            u.name,
            u.new,
            u.old,
            plain
                .resolve(&u.new.to_hex())
                .expect("plain resolve")
                .map(|i| i.to_hex()),
            parent.unwrap_or_default(),
            info.summary,
            read("domain.toml"),
            read("kept/old.txt"),
        ));
    }
    std::fs::write(out, report).expect("write report");
}

#[cfg(unix)]
#[test]
fn pushed_commits_are_readable_inside_pre_receive() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = tmp.path().join("server.git");
    let work = tmp.path().join("work");
    let report = tmp.path().join("report.txt");
    let log = tmp.path().join("hook.log");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(tmp.path(), &["init", "-q", "--bare", "server.git"]);

    // History already on the server: its objects are in the repository, not in the quarantine.
    git(&work, &["init", "-q"]);
    write(&work.join("domain.toml"), "v1");
    write(&work.join("kept/old.txt"), "unchanged");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let server_arg = server.to_str().expect("utf-8 temp path");
    git(&work, &["push", "-q", server_arg, "HEAD:refs/heads/main"]);
    let first = git(&work, &["rev-parse", "HEAD"]);

    // Now the hook: this very test binary, running only `hook_child`.
    let exe = std::env::current_exe().expect("test binary path");
    let q = |p: &Path| {
        let s = p.to_str().expect("utf-8 path");
        format!("'{}'", s.replace('\'', r"'\''"))
    };
    let script = format!(
        "#!/bin/sh\n{CHILD_OUT}={} exec {} --exact hook::hook_child --nocapture --test-threads=1 >{} 2>&1\n",
        q(&report),
        q(&exe),
        q(&log),
    );
    let hook_path = server.join("hooks/pre-receive");
    std::fs::write(&hook_path, script).expect("write hook");
    crate::util::chmod(&hook_path, 0o755);

    // Small pushes arrive as loose objects; with the server's `receive.unpackLimit` at 1 they
    // stay a pack in the quarantine. Both must be readable.
    let mut parent = first;
    for (n, unpack_limit) in [(2, "100"), (3, "1")] {
        git(&server, &["config", "receive.unpackLimit", unpack_limit]);
        let _ = std::fs::remove_file(&report);
        write(&work.join("domain.toml"), &format!("v{n}"));
        git(&work, &["commit", "-q", "-am", &format!("change {n}")]);
        let new = git(&work, &["rev-parse", "HEAD"]);
        let push = git_output(&work, &["push", server_arg, "HEAD:refs/heads/main"]);
        let hook_log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            push.status.success(),
            "push rejected: {}\nhook log:\n{hook_log}",
            String::from_utf8_lossy(&push.stderr)
        );
        let seen = std::fs::read_to_string(&report).expect("the hook wrote its report");
        assert_eq!(
            seen,
            format!(
                "ref=refs/heads/main new={new} old={parent} plain=None parent={parent} \
                 summary=change {n} domain=Some(\"v{n}\") kept=Some(\"unchanged\")\n"
            ),
            "unpack limit {unpack_limit}; hook log:\n{hook_log}"
        );
        // The hook accepted, so git moved the objects into the repository.
        let after = Repo::open(&server).expect("open server");
        assert_eq!(
            after.resolve("main").expect("resolve").map(|i| i.to_hex()),
            Some(new.clone())
        );
        parent = new;
    }
}

/// A stand-in for the steward binary at `dir/steward`: records its arguments (`dir/args`) and
/// standard input (`dir/stdin`), prints `say` to stderr and exits with `code`.
#[cfg(unix)]
fn recording_steward(dir: &Path, say: &str, code: u8) -> std::path::PathBuf {
    let fake = dir.join("steward");
    write(
        &fake,
        &format!(
            "#!/bin/sh\nd=$(dirname \"$0\")\necho \"$@\" > \"$d/args\"\ncat > \"$d/stdin\"\necho '{say}' >&2\nexit {code}\n"
        ),
    );
    crate::util::chmod(&fake, 0o755);
    fake
}

/// A new, empty bare repository `tmp/server.git`.
fn bare_server(tmp: &Path) -> std::path::PathBuf {
    git(tmp, &["init", "-q", "--bare", "server.git"]);
    tmp.join("server.git")
}

/// A new repository in `tmp/work` with one commit, pushed to `server` as its `main` by stock git;
/// returns git's output and the commit.
fn push_one_commit(tmp: &Path, server: &Path) -> (std::process::Output, String) {
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "-q"]);
    write(&work.join("domain.toml"), "x");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "one"]);
    let push = git_output(
        &work,
        &[
            "push",
            server.to_str().expect("utf-8"),
            "HEAD:refs/heads/main",
        ],
    );
    (push, git(&work, &["rev-parse", "HEAD"]))
}

#[cfg(unix)]
#[test]
fn install_writes_an_executable_hook_that_git_runs() {
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempfile::tempdir().expect("tempdir");
    let server = bare_server(tmp.path());
    // A stand-in for the steward binary, at a path that needs quoting, recording how it ran.
    let bin = tmp.path().join("it's a dir");
    let fake = recording_steward(&bin, "rejected by fake steward", 1);

    let hook_path = hook::install(&server, &fake).expect("install");
    assert_eq!(hook_path, server.join("hooks/pre-receive"));
    let mode = std::fs::metadata(&hook_path)
        .expect("hook exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let script = std::fs::read_to_string(&hook_path).expect("read hook");
    assert!(script.starts_with("#!/bin/sh\n"), "{script}");
    assert!(
        script.contains("'\\''s a dir/steward' hook pre-receive"),
        "{script}"
    );
    assert!(!server.join("hooks").join(hook::BACKUP_NAME).exists());
    let leftovers: Vec<_> = std::fs::read_dir(server.join("hooks"))
        .expect("list hooks")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // git runs it: the push is rejected with the fake's message and the fake saw the ref lines.
    let (push, head) = push_one_commit(tmp.path(), &server);
    assert!(!push.status.success());
    assert!(
        String::from_utf8_lossy(&push.stderr).contains("rejected by fake steward"),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    let args = std::fs::read_to_string(bin.join("args")).expect("fake ran");
    assert_eq!(args.trim(), "hook pre-receive");
    let stdin = std::fs::read_to_string(bin.join("stdin")).expect("fake got input");
    let updates = hook::parse_pre_receive(&stdin).expect("parse");
    assert_eq!(updates.len(), 1);
    assert!(updates[0].is_create());
    assert_eq!(updates[0].new.to_hex(), head);
}

/// Where the executable's path fits a `#!` line, git's run of the hook is the kernel starting the
/// executable itself with `hook` and the hook's path (which `steward` reads as `hook pre-receive`).
#[cfg(unix)]
#[test]
fn the_hook_line_starts_the_executable_without_a_shell() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = bare_server(tmp.path());
    let bin = tmp.path().join("bin");
    let fake = recording_steward(&bin, "accepted", 0);
    let hook_path = hook::install(&server, &fake).expect("install");
    let script = std::fs::read_to_string(&hook_path).expect("read hook");
    assert!(
        script.starts_with(&format!("#!{} hook\n", fake.display())),
        "{script}"
    );

    let (push, _) = push_one_commit(tmp.path(), &server);
    assert!(push.status.success(), "{push:?}");
    let args = std::fs::read_to_string(bin.join("args")).expect("the executable ran");
    let args: Vec<&str> = args.split_whitespace().collect();
    assert_eq!(args.len(), 2, "{args:?}");
    assert_eq!(args[0], hook::SHEBANG_ARG);
    assert!(
        hook::started_by_hook_line(Path::new(args[1])),
        "{args:?}: not recognised as the hook's own path"
    );
    let stdin = std::fs::read_to_string(bin.join("stdin")).expect("input");
    assert_eq!(hook::parse_pre_receive(&stdin).expect("parse").len(), 1);
}

#[cfg(unix)]
#[test]
fn install_keeps_a_foreign_hook_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = bare_server(tmp.path());
    let hook_path = server.join("hooks/pre-receive");
    let backup = server.join("hooks").join(hook::BACKUP_NAME);
    let foreign = "#!/bin/sh\n# the team's own checks\nexit 0\n";
    write(&hook_path, foreign);

    let exe = tmp.path().join("steward");
    hook::install(&server, &exe).expect("install");
    assert_eq!(std::fs::read_to_string(&backup).expect("backup"), foreign);
    let ours = std::fs::read_to_string(&hook_path).expect("hook");
    assert!(ours.contains("hook pre-receive"));

    // Reinstalling (say, with a moved binary) replaces our hook but keeps the original backup.
    let moved = tmp.path().join("elsewhere/steward");
    hook::install(&server, &moved).expect("reinstall");
    assert_eq!(std::fs::read_to_string(&backup).expect("backup"), foreign);
    let ours = std::fs::read_to_string(&hook_path).expect("hook");
    assert!(ours.contains("elsewhere/steward"), "{ours}");
}

#[test]
fn install_makes_a_relative_executable_absolute() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = bare_server(tmp.path());
    let hook_path = hook::install(&server, Path::new("bin/steward")).expect("install");
    let script = std::fs::read_to_string(hook_path).expect("hook");
    let cwd = std::env::current_dir().expect("cwd");
    // The `#!` line names it (or, for a path that line cannot carry, the `sh` script does).
    let abs = format!("{}/bin/steward", cwd.display());
    assert!(
        script.starts_with(&format!("#!{abs} hook\n")) || script.contains(&format!("'{abs}'")),
        "{script}"
    );
}

#[test]
fn install_refuses_what_is_not_a_bare_repository() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "-q"]);
    let exe = Path::new("/usr/local/bin/steward");
    for path in [
        work.clone(),
        work.join(".git"),
        tmp.path().join("missing.git"),
        tmp.path().to_path_buf(),
    ] {
        match hook::install(&path, exe) {
            Err(HookError::NotBare { path: p, reason }) => {
                assert_eq!(p, path);
                assert!(!reason.is_empty());
            }
            other => panic!("{}: expected NotBare, got {other:?}", path.display()),
        }
    }
    assert!(!work.join(".git/hooks/pre-receive").exists());
}

/// `receive-pack` may run with hooks off only while Steward's `pre-receive` is the one hook it
/// would run: git's samples do not count; any other receive hook, a foreign `pre-receive` or
/// hooks kept elsewhere (`core.hooksPath`) do.
#[cfg(unix)]
#[test]
fn only_stewards_hook_is_its_own_pre_receive_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = bare_server(tmp.path());
    assert!(!hook::only_stewards_hook(&server), "no hook at all");
    let fake = recording_steward(&tmp.path().join("bin"), "", 0);
    hook::install(&server, &fake).expect("install");
    assert!(hook::only_stewards_hook(&server));

    let post = server.join("hooks/post-receive");
    write(&post, "#!/bin/sh\n");
    assert!(
        !hook::only_stewards_hook(&server),
        "an operator's post-receive"
    );
    std::fs::remove_file(&post).expect("rm");
    assert!(hook::only_stewards_hook(&server));

    git(&server, &["config", "core.hooksPath", "/elsewhere"]);
    assert!(!hook::only_stewards_hook(&server), "hooks kept elsewhere");
    git(&server, &["config", "--unset", "core.hooksPath"]);
    assert!(hook::only_stewards_hook(&server));

    write(&server.join("hooks/pre-receive"), "#!/bin/sh\nexit 0\n");
    assert!(!hook::only_stewards_hook(&server), "a foreign pre-receive");
}

/// The Master's view of a push before git has it: a thin pack as `git push` sends it, indexed
/// beside the repository (completed from its objects), readable with them, gone once dropped.
#[test]
fn a_pushed_pack_is_readable_before_git_has_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = bare_server(tmp.path());
    let (push, _) = push_one_commit(tmp.path(), &server);
    assert!(push.status.success());
    let work = tmp.path().join("work");
    // A big file changed a little: the pack holds a delta against the server's copy.
    let big: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    write(&work.join("big.txt"), &big);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "big"]);
    git(
        &work,
        &["push", "-q", server.to_str().expect("utf-8"), "HEAD:main"],
    );
    let base = git(&work, &["rev-parse", "HEAD"]);
    write(&work.join("big.txt"), &format!("{big}one more\n"));
    git(&work, &["commit", "-q", "-am", "grown"]);
    let new = git(&work, &["rev-parse", "HEAD"]);
    let mut pack = std::process::Command::new("git")
        .args(["pack-objects", "--stdout", "--thin", "--revs", "-q"])
        .current_dir(&work)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("pack-objects");
    use std::io::Write;
    pack.stdin
        .take()
        .expect("stdin")
        .write_all(format!("{new}\n^{base}\n").as_bytes())
        .expect("revs");
    let pack = pack.wait_with_output().expect("pack").stdout;

    let repo = Repo::open_with_pack(&server, &mut &pack[..]).expect("open with the pack");
    let id = repo
        .resolve(&new)
        .expect("resolve")
        .expect("the pushed commit");
    let tree = repo.tree(id).expect("tree");
    let read = |p: &str| tree.read(p).expect("read").expect("present");
    assert_eq!(read("big.txt"), format!("{big}one more\n").into_bytes());
    assert_eq!(
        read("domain.toml"),
        b"x",
        "an object only the repository has"
    );
    assert_eq!(
        repo.parent(id).expect("parent").map(|p| p.to_hex()),
        Some(base)
    );
    let plain = Repo::open(&server).expect("plain");
    assert_eq!(
        plain.resolve(&new).expect("resolve"),
        None,
        "git has not got it"
    );

    let cut = &pack[..pack.len() - 10];
    let err = Repo::open_with_pack(&server, &mut &cut[..]).expect_err("a cut pack");
    assert!(
        err.to_string().contains("cannot read the pushed pack"),
        "{err}"
    );
}
