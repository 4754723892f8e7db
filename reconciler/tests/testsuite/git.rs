//! `Repo`, `CommitTree` and `WorkTree` against repositories made by the real `git` binary.

use std::path::Path;

use crate::util::{git, write};
use reconciler::git::{GitEnv, GitError, Oid, Repo, WorkTree};
use schema::tree::{EntryKind, Tree};

/// Two commits: the first with `domain.toml` and one application, the second changing
/// `domain.toml` and adding an application. Returns (first, second) ids from `git rev-parse`.
fn two_commits(dir: &Path) -> (String, String) {
    git(dir, &["init", "-q"]);
    write(&dir.join("domain.toml"), "[domain]\nname = \"one\"\n");
    write(&dir.join("apps/web/app.toml"), "kind = \"web\"\n");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "First commit"]);
    write(&dir.join("domain.toml"), "[domain]\nname = \"two\"\n");
    write(&dir.join("apps/api/app.toml"), "kind = \"api\"\n");
    git(dir, &["add", "-A"]);
    git(
        dir,
        &[
            "commit",
            "-q",
            "-m",
            "Second commit\n\nWith a body that is not the summary.",
        ],
    );
    (
        git(dir, &["rev-parse", "HEAD~1"]),
        git(dir, &["rev-parse", "HEAD"]),
    )
}

#[test]
fn resolves_revisions_like_rev_parse() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let (first, second) = two_commits(dir);
    git(dir, &["tag", "-a", "-m", "release", "v1", "HEAD~1"]);
    git(dir, &["tag", "light", "HEAD"]);
    let repo = Repo::open(dir).expect("open work tree");

    let hex = |rev: &str| repo.resolve(rev).expect(rev).map(|id| id.to_hex());
    assert_eq!(hex("HEAD").as_deref(), Some(second.as_str()));
    assert_eq!(hex("main").as_deref(), Some(second.as_str()));
    assert_eq!(hex("refs/heads/main").as_deref(), Some(second.as_str()));
    assert_eq!(hex("HEAD~1").as_deref(), Some(first.as_str()));
    assert_eq!(hex("HEAD^").as_deref(), Some(first.as_str()));
    assert_eq!(hex(&second).as_deref(), Some(second.as_str()));
    assert_eq!(hex(&first[..7]).as_deref(), Some(first.as_str()));
    assert_eq!(
        hex("v1").as_deref(),
        Some(first.as_str()),
        "annotated tag peeled"
    );
    assert_eq!(hex("light").as_deref(), Some(second.as_str()));

    // Things that do not exist.
    assert_eq!(hex("no-such-branch"), None);
    assert_eq!(hex("HEAD~2"), None);
    assert_eq!(hex("HEAD~7"), None);
    assert_eq!(hex("HEAD^2"), None, "no second parent");
    assert_eq!(hex("HEAD~1^"), None);
    assert_eq!(hex("HEAD^0").as_deref(), Some(second.as_str()));
    assert_eq!(hex("main~1^0").as_deref(), Some(first.as_str()));
    assert_eq!(hex("no-such-branch~1"), None);
    assert_eq!(hex("0123456789abcdef0123456789abcdef01234567"), None);

    // Things that exist but are not commits.
    let tree = git(dir, &["rev-parse", "HEAD^{tree}"]);
    for rev in ["HEAD:domain.toml", "HEAD^{tree}", tree.as_str()] {
        match repo.resolve(rev) {
            Err(GitError::NotACommit { .. }) => {}
            other => panic!("{rev}: expected NotACommit, got {other:?}"),
        }
    }
}

#[test]
fn unborn_head_resolves_to_none() {
    let tmp = tempfile::tempdir().expect("tempdir");
    git(tmp.path(), &["init", "-q"]);
    let repo = Repo::open(tmp.path()).expect("open empty repository");
    assert_eq!(repo.resolve("HEAD").expect("resolve"), None);
    assert_eq!(repo.resolve("main").expect("resolve"), None);
}

#[test]
fn open_refuses_what_is_not_a_repository() {
    let tmp = tempfile::tempdir().expect("tempdir");
    match Repo::open(tmp.path()) {
        Err(GitError::Open { path, .. }) => assert_eq!(path, tmp.path()),
        other => panic!("expected Open error, got {other:?}"),
    }
}

#[test]
fn parents_and_commit_info() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let (first, second) = two_commits(dir);
    let repo = Repo::open(dir).expect("open");
    let first = Oid::from_hex(&first).expect("hex");
    let second = Oid::from_hex(&second).expect("hex");

    assert_eq!(repo.parent(second).expect("parent"), Some(first));
    assert_eq!(repo.parent(first).expect("parent"), None);

    let info = repo.commit_info(second).expect("info");
    assert_eq!(info.id, second.to_hex());
    assert_eq!(info.short_id, second.to_hex()[..7]);
    assert_eq!(info.short_id, git(dir, &["rev-parse", "--short=7", "HEAD"]));
    assert_eq!(info.author_name, "Ada Lovelace");
    assert_eq!(info.author_email, "ada@example.com");
    assert_eq!(info.time, 1_700_000_000);
    assert_eq!(info.commit_time, 1_700_000_100);
    assert_eq!(info.summary, "Second commit");
}

#[test]
fn commit_trees_read_files_and_report_git_ids() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let (first, second) = two_commits(dir);
    // Read from a bare clone too: the server's repository is bare.
    let bare = tmp.path().join("server.git");
    git(
        dir,
        &[
            "clone",
            "-q",
            "--bare",
            ".",
            bare.to_str().expect("utf-8 temp path"),
        ],
    );

    for path in [dir, bare.as_path()] {
        let repo = Repo::open(path).expect("open");
        let old = repo
            .tree(Oid::from_hex(&first).expect("hex"))
            .expect("tree");
        let new = repo
            .tree(Oid::from_hex(&second).expect("hex"))
            .expect("tree");

        assert_eq!(new.label(), second[..7]);
        assert_eq!(
            old.read("domain.toml").expect("read").as_deref(),
            Some(&b"[domain]\nname = \"one\"\n"[..])
        );
        assert_eq!(
            new.read("domain.toml").expect("read").as_deref(),
            Some(&b"[domain]\nname = \"two\"\n"[..])
        );
        assert_eq!(old.read("apps/api/app.toml").expect("read"), None);
        assert_eq!(
            new.read("apps/api/app.toml").expect("read").as_deref(),
            Some(&b"kind = \"api\"\n"[..])
        );
        assert_eq!(
            new.read("apps").expect("read dir"),
            None,
            "a directory is no file"
        );
        assert_eq!(new.read("missing.toml").expect("read"), None);
        assert_eq!(new.read("domain.toml/below").expect("read"), None);
        assert_eq!(new.read("../domain.toml").expect("read"), None);

        for (p, rev, kind) in [
            ("", "HEAD^{tree}", EntryKind::Dir),
            (".", "HEAD^{tree}", EntryKind::Dir),
            ("apps", "HEAD:apps", EntryKind::Dir),
            ("apps/web", "HEAD:apps/web", EntryKind::Dir),
            ("apps/web/", "HEAD:apps/web", EntryKind::Dir),
            (
                "apps/web/app.toml",
                "HEAD:apps/web/app.toml",
                EntryKind::File,
            ),
            ("domain.toml", "HEAD:domain.toml", EntryKind::File),
        ] {
            let entry = new
                .entry(p)
                .expect("entry")
                .unwrap_or_else(|| panic!("{p:?}"));
            assert_eq!(entry.kind, kind, "{p:?}");
            assert_eq!(entry.id, git(dir, &["rev-parse", rev]), "{p:?}");
        }
        // Unchanged content has the same id in both commits; changed content does not.
        let id = |t: &dyn Tree, p: &str| t.entry(p).expect("entry").map(|e| e.id);
        assert_eq!(id(&old, "apps/web"), id(&new, "apps/web"));
        assert_ne!(id(&old, "apps"), id(&new, "apps"));
        assert_ne!(id(&old, "domain.toml"), id(&new, "domain.toml"));
        assert_eq!(id(&new, "apps/nothing"), None);
        assert_eq!(id(&new, "domain.toml/x"), None);
    }
}

/// A domain-sized tree: thousands of lookups in one commit, every one right. How fast they are
/// (the tree cache) is for `benches/`, not a clock in a test.
#[test]
fn many_entries_in_one_tree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    git(dir, &["init", "-q"]);
    let n = 2000;
    for i in 0..n {
        write(
            &dir.join(format!("apps/app{i:04}/app.toml")),
            &format!("n = {i}\n"),
        );
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "many"]);
    let repo = Repo::open(dir).expect("open");
    let head = repo.resolve("HEAD").expect("resolve").expect("HEAD exists");
    let tree = repo.tree(head).expect("tree");
    for i in 0..n {
        let app = format!("apps/app{i:04}");
        assert_eq!(
            tree.entry(&app).expect("entry").map(|e| e.kind),
            Some(EntryKind::Dir)
        );
        let file = format!("{app}/app.toml");
        assert_eq!(
            tree.read(&file).expect("read"),
            Some(format!("n = {i}\n").into_bytes())
        );
    }
}

/// Content covering what git's tree encoding cares about: nesting, names that sort differently
/// as directories (`a` sorts as `a/`, after `a-b` and `a.txt`), an executable, symbolic links to
/// a file and to a directory, and directories git cannot record (empty, or only empty below).
#[cfg(unix)]
fn tricky_content(dir: &Path) {
    write(&dir.join("domain.toml"), "[domain]\nname = \"d\"\n");
    write(&dir.join("a/b/c.txt"), "deep\n");
    write(&dir.join("a/z.txt"), "z\n");
    write(&dir.join("a-b"), "dash\n");
    write(&dir.join("a.txt"), "dot\n");
    write(&dir.join("bin/run.sh"), "#!/bin/sh\necho hi\n");
    crate::util::chmod(&dir.join("bin/run.sh"), 0o755);
    write(&dir.join("bin/data"), "not executable for the owner\n");
    crate::util::chmod(&dir.join("bin/data"), 0o654);
    std::os::unix::fs::symlink("../domain.toml", dir.join("a/link")).expect("symlink");
    std::os::unix::fs::symlink("a/b", dir.join("dirlink")).expect("symlink");
    std::fs::create_dir_all(dir.join("empty")).expect("mkdir");
    std::fs::create_dir_all(dir.join("hollow/inside/deeper")).expect("mkdir");
}

#[cfg(unix)]
#[test]
fn work_tree_ids_equal_commit_ids() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    tricky_content(dir);
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "content"]);

    let work = WorkTree::new(dir);
    let repo = Repo::open(dir).expect("open");
    let head = repo.resolve("HEAD").expect("resolve").expect("HEAD exists");
    let commit = repo.tree(head).expect("tree");

    let present = [
        ("", EntryKind::Dir),
        ("a", EntryKind::Dir),
        ("a/b", EntryKind::Dir),
        ("a/b/c.txt", EntryKind::File),
        ("a/link", EntryKind::Symlink),
        ("a-b", EntryKind::File),
        ("a.txt", EntryKind::File),
        ("bin", EntryKind::Dir),
        ("bin/run.sh", EntryKind::File),
        ("bin/data", EntryKind::File),
        ("dirlink", EntryKind::Symlink),
        ("domain.toml", EntryKind::File),
    ];
    for (p, kind) in present {
        let w = work
            .entry(p)
            .expect("work entry")
            .unwrap_or_else(|| panic!("work {p:?}"));
        let c = commit
            .entry(p)
            .expect("commit entry")
            .unwrap_or_else(|| panic!("commit {p:?}"));
        let rev = if p.is_empty() {
            "HEAD^{tree}".to_owned()
        } else {
            format!("HEAD:{p}")
        };
        assert_eq!(w.kind, kind, "{p:?}");
        assert_eq!(c.kind, kind, "{p:?}");
        assert_eq!(
            w.id,
            git(dir, &["rev-parse", &rev]),
            "work tree id of {p:?}"
        );
        assert_eq!(c.id, w.id, "commit id of {p:?}");
    }
    assert_eq!(
        work.entry(".").expect("root"),
        commit.entry(".").expect("root")
    );
    // The executable bit is part of the tree, not of the blob.
    assert_eq!(
        git(dir, &["ls-tree", "HEAD", "bin/run.sh"])
            .split(' ')
            .next(),
        Some("100755")
    );

    // Absent from both: what git cannot record, what is behind a link, `.git`, escapes.
    for p in [
        "empty",
        "hollow",
        "hollow/inside",
        "missing",
        "dirlink/c.txt",
        "a/b/c.txt/x",
        ".git",
        ".git/HEAD",
        "../x",
    ] {
        assert_eq!(work.entry(p).expect("work entry"), None, "work {p:?}");
        assert_eq!(commit.entry(p).expect("commit entry"), None, "commit {p:?}");
    }

    // Reading agrees too: files only, no links, no directories.
    for p in [
        "a/b/c.txt",
        "bin/run.sh",
        "a/link",
        "dirlink",
        "a",
        "dirlink/c.txt",
        ".git/HEAD",
    ] {
        assert_eq!(
            work.read(p).expect("work read"),
            commit.read(p).expect("commit read"),
            "{p:?}"
        );
    }
    assert_eq!(
        work.read("a/b/c.txt").expect("read").as_deref(),
        Some(&b"deep\n"[..])
    );
    assert_eq!(work.label(), "working tree");

    // A working tree reached through a link is still the same content.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let linked = elsewhere.path().join("domain");
    std::os::unix::fs::symlink(dir, &linked).expect("symlink");
    let through_link = WorkTree::new(&linked);
    assert_eq!(
        through_link.entry("").expect("root"),
        commit.entry("").expect("root")
    );
    assert_eq!(
        through_link.read("a.txt").expect("read").as_deref(),
        Some(&b"dot\n"[..])
    );
}

#[test]
fn empty_work_tree_is_the_empty_tree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = WorkTree::new(tmp.path());
    let root = work.entry("").expect("entry").expect("root exists");
    assert_eq!(root.kind, EntryKind::Dir);
    assert_eq!(root.id, "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
}

#[test]
fn git_env_from_hook_variables() {
    let cwd = Path::new("/srv/domain.git");
    let env = GitEnv::from_vars(
        [
            ("GIT_DIR", "."),
            ("GIT_OBJECT_DIRECTORY", "/srv/domain.git/objects/incoming-x"),
            ("GIT_QUARANTINE_PATH", "/srv/domain.git/objects/incoming-x"),
            (
                "GIT_ALTERNATE_OBJECT_DIRECTORIES",
                "/srv/domain.git/objects:relative/objects:\"/with:colon\"",
            ),
            ("PATH", "/usr/bin"),
        ],
        cwd,
    );
    assert_eq!(env.git_dir.as_deref(), Some(Path::new("/srv/domain.git/.")));
    assert_eq!(
        env.object_directory.as_deref(),
        Some(Path::new("/srv/domain.git/objects/incoming-x"))
    );
    assert_eq!(env.quarantine_path, env.object_directory);
    assert_eq!(
        env.alternate_object_directories,
        vec![
            Path::new("/srv/domain.git/objects").to_path_buf(),
            Path::new("/srv/domain.git/relative/objects").to_path_buf(),
            Path::new("/with:colon").to_path_buf(),
        ]
    );
    assert_eq!(
        GitEnv::from_vars([("HOME", "/root")], cwd),
        GitEnv::default()
    );
}
