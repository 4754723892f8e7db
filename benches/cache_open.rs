// Test and build code: a failed step panics with its message, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Benchmark: opening the launcher's cache (`Cache::open`, which checks every ref) and using a
//! new pin, with a large archive in the domain. Median of several runs.
//!
//!     cargo bench -p steward-reconciler --bench cache_open            # release, 100 MiB
//!     STEWARD_BENCH_MIB=20 STEWARD_BENCH_RUNS=3 cargo bench --profile dev -p steward-reconciler \
//!         --bench cache_open                                         # debug build, 20 MiB, 3 runs
//!
//! "full read" is an open with the record of checked objects removed: what every open cost
//! before that record existed (every object of every ref read and hashed). "warm" is an open
//! with the record in place. "new pin" fetches a commit that changes one small file beside the
//! archive and times `Cache::verify` of it, as the launcher does before applying it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reconciler::cache::{Cache, Remote};

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Incompressible bytes (xorshift), like a real archive.
fn archive(mib: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(mib << 20);
    while out.len() < mib << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let mib: usize = std::env::var("STEWARD_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let runs: usize = std::env::var("STEWARD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("origin");
    std::fs::create_dir_all(src.join("apps/shop")).expect("mkdir");
    git(&src, &["init", "-q", "-b", "main"]);
    std::fs::write(src.join("apps/shop/shop.zip"), archive(mib)).expect("write");
    std::fs::write(src.join("domain.toml"), "level = 1\n").expect("write");
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-qm", "one"]);
    let remote = Remote {
        url: src.to_string_lossy().into_owned(),
        user: None,
        password: None,
        connect_timeout: Duration::from_secs(5),
    };
    let home = tmp.path().join("home");
    let record = reconciler::cache::git_dir(&home).join("steward-verified");
    {
        let (cache, _) = Cache::open(&home).expect("open");
        let f = cache.fetch_git(&remote, "main").expect("fetch");
        cache.verify(f.commit).expect("verify");
        cache.record_valid(f.commit, "bench").expect("record");
    }
    let open = || {
        let start = Instant::now();
        let (_, repaired) = Cache::open(&home).expect("open");
        assert!(repaired.is_none());
        start.elapsed()
    };
    let full: Vec<_> = (0..runs)
        .map(|_| {
            std::fs::remove_file(&record).expect("the record exists after an open");
            open()
        })
        .collect();
    let warm: Vec<_> = (0..runs).map(|_| open()).collect();
    let mut new_pin = Vec::new();
    for n in 0..runs {
        std::fs::write(src.join("domain.toml"), format!("level = {}\n", n + 2)).expect("write");
        git(&src, &["commit", "-qam", "change"]);
        let (cache, _) = Cache::open(&home).expect("open");
        let f = cache.fetch_git(&remote, "main").expect("fetch");
        let start = Instant::now();
        cache.verify(f.commit).expect("verify");
        new_pin.push(start.elapsed());
    }
    println!("cache_open: a {mib} MiB archive in the domain, median of {runs}");
    println!(
        "  open, full read (no record; every open before): {}",
        ms(median(full))
    );
    println!(
        "  open, warm (record of checked objects):         {}",
        ms(median(warm))
    );
    println!(
        "  verify a new pin changing one small file:       {}",
        ms(median(new_pin))
    );
}
