use super::*;
use std::time::Duration;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("steward-cache-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Op")
        .env("GIT_AUTHOR_EMAIL", "op@example.com")
        .env("GIT_COMMITTER_NAME", "Op")
        .env("GIT_COMMITTER_EMAIL", "op@example.com")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A repository with two commits on `main`; returns (dir, head).
fn origin(dir: &Path) -> (PathBuf, String) {
    let src = dir.join("origin");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    git(&src, &["init", "-q", "-b", "main"]);
    std::fs::write(src.join("a.txt"), "a\n").expect("write");
    std::fs::write(src.join("sub/b.txt"), "b\n".repeat(100)).expect("write");
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-qm", "one"]);
    std::fs::write(src.join("a.txt"), "a2\n").expect("write");
    git(&src, &["commit", "-qam", "two"]);
    let head = git(&src, &["rev-parse", "HEAD"]);
    (src, head)
}

fn remote(url: &Path) -> Remote {
    Remote {
        url: url.to_string_lossy().into_owned(),
        user: None,
        password: None,
        connect_timeout: Duration::from_secs(1),
    }
}

#[test]
fn fetches_a_branch_and_records_the_last_valid_commit() {
    let d = tmp("fetch");
    let (src, head) = origin(&d);
    let home = d.join("home");
    let (cache, repaired) = Cache::open(&home).expect("open");
    assert!(repaired.is_none());
    assert_eq!(cache.last_valid().expect("read"), None);
    let f = cache.fetch_git(&remote(&src), "main").expect("fetch");
    assert_eq!(f.commit.to_hex(), head);
    assert_eq!(f.remote_ref, "refs/heads/main");
    // Depth 1 into an empty cache: the tip commit, two trees, two blobs.
    assert_eq!(f.transfer.objects, 5, "{:?}", f.transfer);
    cache.verify(f.commit).expect("complete");
    cache.record_valid(f.commit, "a test").expect("record");
    let last = cache.last_valid().expect("read").expect("some");
    assert_eq!(last.commit, head);
    assert!(last.at.is_some());
    assert_eq!(last.source.as_deref(), Some("a test"));
    // Nothing new: nothing travels.
    let again = cache.fetch_git(&remote(&src), "main").expect("fetch");
    assert_eq!(again.transfer, Transfer::default());
    drop(cache);
    let (_, repaired) = Cache::open(&home).expect("reopen");
    assert!(repaired.is_none());
    // An older commit, behind the shallow tip, is fetched on demand and complete.
    let (cache, _) = Cache::open(&home).expect("reopen");
    let first = git(&src, &["rev-parse", "HEAD~1"]);
    git(&src, &["branch", "old", &first]);
    let old = cache.fetch_git(&remote(&src), "old").expect("fetch old");
    assert_eq!(old.commit.to_hex(), first);
    cache.verify(old.commit).expect("complete");
    drop(cache);
    // A missing branch is a clear error.
    let (cache, _) = Cache::open(&home).expect("reopen");
    let e = cache
        .fetch_git(&remote(&src), "nope")
        .expect_err("no branch");
    assert!(e.to_string().contains("refs/heads/nope"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_damaged_pack_is_detected_and_moved_aside() {
    let d = tmp("damage");
    let (src, _) = origin(&d);
    let home = d.join("home");
    {
        let (cache, _) = Cache::open(&home).expect("open");
        let f = cache.fetch_git(&remote(&src), "main").expect("fetch");
        cache.verify(f.commit).expect("intact");
        cache.record_valid(f.commit, "a test").expect("record");
    }
    // The objects checked are recorded, and an open with the record finds nothing wrong.
    let record = git_dir(&home).join("steward-verified");
    assert!(record.exists());
    let (_, repaired) = Cache::open(&home).expect("open");
    assert!(repaired.is_none());
    let pack_dir = git_dir(&home).join("objects/pack");
    let pack = std::fs::read_dir(&pack_dir)
        .expect("packs")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "pack"))
        .expect("a pack");
    // Flip bytes in the middle of the compressed objects (header and trailer intact).
    let mut bytes = std::fs::read(&pack).expect("read");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid - 8..mid + 8] {
        *b ^= 0x5a;
    }
    std::fs::write(&pack, bytes).expect("write");
    let (cache, repaired) = Cache::open(&home).expect("open");
    let r = repaired.expect("corruption detected");
    assert!(r.moved_to.exists());
    assert!(
        cache.last_valid().expect("read").is_none(),
        "a new, empty cache"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_broken_ref_is_detected() {
    let d = tmp("ref");
    let (src, _) = origin(&d);
    let home = d.join("home");
    {
        let (cache, _) = Cache::open(&home).expect("open");
        let f = cache.fetch_git(&remote(&src), "main").expect("fetch");
        cache.record_valid(f.commit, "a test").expect("record");
    }
    let packed = git_dir(&home).join("packed-refs");
    let loose = git_dir(&home).join("refs/steward/last-valid");
    assert!(loose.exists() || packed.exists());
    std::fs::create_dir_all(loose.parent().expect("parent")).expect("mkdir");
    std::fs::write(&loose, "not a ref at all\n").expect("write");
    let (_, repaired) = Cache::open(&home).expect("open");
    assert!(repaired.is_some(), "a broken ref is corruption");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn one_writer_at_a_time() {
    let d = tmp("lock");
    let home = d.join("home");
    let (first, _) = Cache::open(&home).expect("open");
    let h = home.clone();
    let t = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let _second = Cache::open(&h).expect("open");
        start.elapsed()
    });
    std::thread::sleep(Duration::from_millis(300));
    drop(first);
    let waited = t.join().expect("thread");
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    let _ = std::fs::remove_dir_all(&d);
}
