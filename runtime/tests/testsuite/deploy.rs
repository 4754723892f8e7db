//! Deployment from real Git commits (made with the `git` binary): directories with their execute
//! bits, tar.gz and zip archives, refused archives, atomic replacement, library shadowing.
//!
//! Long (a little): the archive builders, including malformed ones, belong with these tests.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use reconciler::git::Repo;
use runtime::deploy::{self, DeployError, GitSource};
use schema::model::{AppKind, Application};

use crate::util::{application, git, home};

/// Commits `files` (path, content, executable) into a fresh repository at `dir`.
fn commit(dir: &Path, files: &[(&str, &[u8], bool)]) -> GitSource {
    if !dir.join(".git").exists() {
        git(dir, &["init", "-q", "-b", "main"]);
    }
    for (path, content, exec) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, content).expect("write");
        let mode = if *exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", "c"]);
    let repo = Repo::open(dir).expect("open");
    let id = repo.resolve("HEAD").expect("resolve").expect("HEAD");
    GitSource::open(&repo, id).expect("source")
}

fn app(kind: AppKind, source: &str, libraries: &[&str]) -> Application {
    Application {
        source: source.to_owned(),
        libraries: libraries.iter().map(|s| s.to_string()).collect(),
        ..application(kind, "/app")
    }
}

fn tar_gz(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).expect("append");
    }
    b.into_inner().expect("tar").finish().expect("gz")
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(0o644);
        w.start_file(*name, opts).expect("start");
        w.write_all(data).expect("write");
    }
    w.finish().expect("finish").into_inner()
}

/// A tar whose single entry has the raw name `name` (bypassing the builder's path checks, as an
/// attacker would), of `kind`, with `link` as link target.
fn evil_tar(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut b = tar::Builder::new(&mut out);
        let mut h = tar::Header::new_old();
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        let data: &[u8] = if kind == tar::EntryType::Regular {
            b"evil"
        } else {
            b""
        };
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(kind);
        h.set_cksum();
        b.append(&h, data).expect("append");
        b.finish().expect("finish");
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn deploys_a_directory_from_a_commit_with_exec_bits_and_libraries() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let src = commit(
        &repo,
        &[
            ("apps/shop/index.html", b"<h1>shop</h1>", false),
            ("apps/shop/bin/run.sh", b"#!/bin/sh\necho hi\n", true),
            ("apps/shop/css/site.css", b"body{}", false),
            ("libs/common/util.jar", b"jar", false),
            ("libs/extra/x/y.so", b"so", false),
        ],
    );
    let h = home(tmp.path());
    let a = app(
        AppKind::Process,
        "apps/shop",
        &["libs/common", "libs/extra"],
    );
    let d = deploy::deploy(&h, &src, "shop", &a).expect("deploy");
    assert!(!d.reused);
    assert_eq!(d.image, h.root.join(".workspace/deployed/shop"));
    assert_eq!(
        std::fs::read(d.image.join("index.html")).expect("index"),
        b"<h1>shop</h1>"
    );
    assert_eq!(mode(&d.image.join("bin/run.sh")), 0o755);
    assert_eq!(mode(&d.image.join("css/site.css")), 0o644);
    assert!(d.image.join("lib/util.jar").is_file());
    assert!(d.image.join("lib/x/y.so").is_file());
    assert!(d.generated.join("deployment.json").is_file());
    assert_eq!(
        d.generated,
        h.root.join(".workspace/deployed/_generated_/shop")
    );
    assert!(d.work_dir.is_dir());
    assert_eq!(
        d.library_path,
        vec![
            d.image.join("lib"),
            h.root.join("lib/application"),
            h.domain_home.join("lib/application"),
        ]
    );
    assert!(d.warnings.is_empty());
    // The same content again: nothing rewritten.
    let again = deploy::deploy(&h, &src, "shop", &a).expect("deploy again");
    assert!(again.reused);
    assert_eq!(again.fingerprint, d.fingerprint);

    deploy::undeploy(&h, "shop").expect("undeploy");
    assert!(!d.image.exists() && !d.generated.exists() && !d.work_dir.exists());
}

#[test]
fn deploys_tar_gz_and_zip_archives() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let tgz = tar_gz(&[
        ("index.html", b"tar index", 0o644),
        ("bin/start", b"#!/bin/sh\n", 0o755),
        ("./docs/a.txt", b"a", 0o644),
    ]);
    let zip = zip_of(&[("index.html", b"zip index"), ("img/logo.svg", b"<svg/>")]);
    let src = commit(
        &repo,
        &[
            ("dist/site.tar.gz", &tgz, false),
            ("dist/site.zip", &zip, false),
            ("dist/notes.txt", b"not an archive", false),
        ],
    );
    let h = home(tmp.path());
    let d = deploy::deploy(
        &h,
        &src,
        "tarred",
        &app(AppKind::Static, "dist/site.tar.gz", &[]),
    )
    .expect("tar.gz");
    assert_eq!(
        std::fs::read(d.image.join("index.html")).expect("index"),
        b"tar index"
    );
    assert_eq!(mode(&d.image.join("bin/start")), 0o755);
    assert!(d.image.join("docs/a.txt").is_file());
    let z = deploy::deploy(
        &h,
        &src,
        "zipped",
        &app(AppKind::Static, "dist/site.zip", &[]),
    )
    .expect("zip");
    assert_eq!(
        std::fs::read(z.image.join("img/logo.svg")).expect("logo"),
        b"<svg/>"
    );
    let e = deploy::deploy(
        &h,
        &src,
        "plain",
        &app(AppKind::Static, "dist/notes.txt", &[]),
    )
    .expect_err("not an archive");
    assert!(matches!(e, DeployError::NotAnArchive { .. }), "{e}");
    let e = deploy::deploy(&h, &src, "missing", &app(AppKind::Static, "dist/nope", &[]))
        .expect_err("missing");
    assert!(e.to_string().contains("dist/nope"), "{e}");
}

#[test]
fn refuses_archives_that_escape_and_keeps_the_old_image() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let h = home(tmp.path());
    // A good first version.
    let good = commit(&repo, &[("site/index.html", b"v1", false)]);
    let d = deploy::deploy(&h, &good, "site", &app(AppKind::Static, "site", &[])).expect("v1");
    let index = d.image.join("index.html");

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot.tar",
            evil_tar("../../escaped.txt", tar::EntryType::Regular, None),
            "`..`",
        ),
        (
            "abs.tar",
            evil_tar("/tmp/steward-escaped.txt", tar::EntryType::Regular, None),
            "absolute",
        ),
        (
            "hard.tar",
            evil_tar("x", tar::EntryType::Link, Some("/etc/passwd")),
            "hard link",
        ),
        (
            "fifo.tar",
            evil_tar("x", tar::EntryType::Fifo, None),
            "not allowed",
        ),
        (
            "link-abs.tar",
            evil_tar("x", tar::EntryType::Symlink, Some("/etc")),
            "absolute",
        ),
        (
            "link-up.tar",
            evil_tar("x", tar::EntryType::Symlink, Some("../../..")),
            "outside",
        ),
        (
            "dotdot.zip",
            zip_of(&[("ok.txt", b"ok"), ("../zip-escaped.txt", b"evil")]),
            "`..`",
        ),
    ];
    let files: Vec<(String, Vec<u8>)> = cases
        .iter()
        .map(|(n, b, _)| (format!("evil/{n}"), b.clone()))
        .collect();
    let refs: Vec<(&str, &[u8], bool)> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice(), false))
        .collect();
    let evil = commit(&repo, &refs);
    for (name, _, why) in &cases {
        let e = deploy::deploy(
            &h,
            &evil,
            "site",
            &app(AppKind::Static, &format!("evil/{name}"), &[]),
        )
        .expect_err(name);
        let text = e.to_string();
        assert!(text.contains(why), "{name}: {text}");
        assert!(text.contains("application site"), "{name}: {text}");
        // The running version is untouched.
        assert_eq!(std::fs::read(&index).expect("old image"), b"v1", "{name}");
    }
    for escaped in [
        tmp.path().join("escaped.txt"),
        h.root.join(".workspace/escaped.txt"),
        h.root.join(".workspace/zip-escaped.txt"),
        Path::new("/tmp/steward-escaped.txt").to_owned(),
    ] {
        assert!(!escaped.exists(), "{}", escaped.display());
    }
    // No staging directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(h.tmp())
        .expect("tmp")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn replaces_the_image_atomically_and_keeps_the_previous_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let h = home(tmp.path());
    let v1 = commit(
        &repo,
        &[
            ("site/index.html", b"v1", false),
            ("site/old.txt", b"o", false),
        ],
    );
    let a = app(AppKind::Static, "site", &[]);
    let d1 = deploy::deploy(&h, &v1, "site", &a).expect("v1");
    std::fs::remove_file(repo.join("site/old.txt")).expect("rm");
    let v2 = commit(&repo, &[("site/index.html", b"v2", false)]);
    let d2 = deploy::deploy(&h, &v2, "site", &a).expect("v2");
    assert_ne!(d1.fingerprint, d2.fingerprint);
    assert_eq!(
        std::fs::read(d2.image.join("index.html")).expect("v2"),
        b"v2"
    );
    assert!(!d2.image.join("old.txt").exists(), "no mix of versions");
    let previous = h.tmp().join(".previous-site");
    assert_eq!(
        std::fs::read(previous.join("index.html")).expect("prev"),
        b"v1"
    );
    // A library that is missing fails the deployment before anything changes.
    let bad = app(AppKind::Static, "site", &["libs/none"]);
    let e = deploy::deploy(&h, &v2, "site", &bad).expect_err("missing library");
    assert!(matches!(e, DeployError::LibraryMissing { .. }), "{e}");
    assert_eq!(
        std::fs::read(d2.image.join("index.html")).expect("v2"),
        b"v2"
    );
}

#[test]
fn warns_when_a_server_library_shadows_a_domain_library() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = home(tmp.path());
    let server = h.lib_application();
    let domain = h.domain_home.join("lib/application");
    std::fs::create_dir_all(&domain).expect("mkdir");
    std::fs::write(server.join("common.jar"), "server").expect("write");
    std::fs::write(domain.join("common.jar"), "domain").expect("write");
    std::fs::write(domain.join("only-domain.jar"), "domain").expect("write");
    let tree = schema::tree::MemTree::new("mem").with("site/index.html", "x");
    let d = deploy::deploy(&h, &tree, "site", &app(AppKind::Static, "site", &[])).expect("deploy");
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    let w = &d.warnings[0];
    assert_eq!(w.used, server.join("common.jar"));
    assert_eq!(w.shadowed, domain.join("common.jar"));
    let text = w.to_string();
    assert!(
        text.contains(&server.join("common.jar").display().to_string()),
        "{text}"
    );
    assert!(
        text.contains(&domain.join("common.jar").display().to_string()),
        "{text}"
    );
}

#[test]
fn refuses_a_library_file_provided_twice_and_bad_ids() {
    let tmp = tempfile::tempdir().expect("tmp");
    let h = home(tmp.path());
    let tree = schema::tree::MemTree::new("mem")
        .with("site/index.html", "x")
        .with("a/dup.jar", "1")
        .with("b/dup.jar", "2");
    let e = deploy::deploy(
        &h,
        &tree,
        "site",
        &app(AppKind::Static, "site", &["a", "b"]),
    )
    .expect_err("conflict");
    assert!(e.to_string().contains("dup.jar"), "{e}");
    let e =
        deploy::deploy(&h, &tree, "../x", &app(AppKind::Static, "site", &[])).expect_err("bad id");
    assert!(matches!(e, DeployError::BadName { .. }));
}

/// A zip of one stored (uncompressed) entry.
fn stored_zip(name: &str, data: &[u8]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o644);
    w.start_file(name, opts).expect("start");
    w.write_all(data).expect("write");
    w.finish().expect("finish").into_inner()
}

/// Sets the uncompressed size recorded for the only entry of `zip`, in its local header and in
/// the central directory, to `size` (as a forger would).
fn forge_zip_size(zip: &mut [u8], size: u32) {
    let find = |zip: &[u8], sig: &[u8]| zip.windows(4).position(|w| w == sig).expect("signature");
    let local = find(zip, b"PK\x03\x04");
    zip[local + 22..local + 26].copy_from_slice(&size.to_le_bytes());
    let central = find(zip, b"PK\x01\x02");
    zip[central + 24..central + 28].copy_from_slice(&size.to_le_bytes());
}

#[test]
fn refuses_corrupt_archives_naming_the_entry_and_keeps_the_old_image() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let h = home(tmp.path());
    let good = commit(&repo, &[("site/index.html", b"v1", false)]);
    let d = deploy::deploy(&h, &good, "site", &app(AppKind::Static, "site", &[])).expect("v1");
    let index = d.image.join("index.html");

    // A zip whose stored data no longer matches its CRC-32.
    let mut crc = stored_zip("page.html", b"hello world, intact");
    let at = crc
        .windows(5)
        .position(|w| w == b"hello")
        .expect("stored data");
    crc[at] = b'J';
    // A tar.gz whose gzip trailer (CRC-32 of the data) is wrong: every entry reads fine.
    let mut trailer = tar_gz(&[("index.html", b"tar index", 0o644)]);
    let n = trailer.len();
    trailer[n - 8] ^= 0xff;
    // A zip entry that declares 1,000 bytes and inflates to 4 MiB.
    let mut long = zip_of(&[("big.bin", &vec![0u8; 4 << 20])]);
    forge_zip_size(&mut long, 1000);
    // A zip entry that declares more than its data holds.
    let mut short = stored_zip("short.txt", b"only these bytes");
    forge_zip_size(&mut short, 5000);
    // A tar that ends inside its second entry.
    let mut cut = Vec::new();
    {
        let mut b = tar::Builder::new(&mut cut);
        for (name, len) in [("first.txt", 10usize), ("second.bin", 8192)] {
            let mut head = tar::Header::new_gnu();
            head.set_size(len as u64);
            head.set_mode(0o644);
            head.set_cksum();
            b.append_data(&mut head, name, &vec![b'x'; len][..])
                .expect("append");
        }
        b.finish().expect("finish");
    }
    cut.truncate(512 + 512 + 512 + 3000);

    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("crc.zip", crc, "\"page.html\"", "corrupt data"),
        (
            "trailer.tar.gz",
            trailer,
            "",
            "corrupt after the last entry",
        ),
        (
            "long.zip",
            long,
            "\"big.bin\"",
            "longer than its declared size of 1000",
        ),
        (
            "short.zip",
            short,
            "\"short.txt\"",
            "ends after 16 of its declared 5000",
        ),
        ("cut.tar", cut, "\"second.bin\"", "ends inside this entry"),
    ];
    let files: Vec<(String, Vec<u8>)> = cases
        .iter()
        .map(|(n, b, _, _)| (format!("bad/{n}"), b.clone()))
        .collect();
    let refs: Vec<(&str, &[u8], bool)> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice(), false))
        .collect();
    let bad = commit(&repo, &refs);
    for (name, _, entry, why) in &cases {
        let e = deploy::deploy(
            &h,
            &bad,
            "site",
            &app(AppKind::Static, &format!("bad/{name}"), &[]),
        )
        .expect_err(name);
        let text = e.to_string();
        assert!(text.contains(why), "{name}: {text}");
        assert!(text.contains(entry), "{name}: {text}");
        assert!(text.contains(&format!("bad/{name}")), "{name}: {text}");
        assert_eq!(std::fs::read(&index).expect("old image"), b"v1", "{name}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(h.tmp())
        .expect("tmp")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn the_unpacked_size_limit_is_per_application() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let h = home(tmp.path());
    let chunk = vec![b'a'; 600 << 10];
    let tgz = tar_gz(&[("a.bin", &chunk, 0o644), ("b.bin", &chunk, 0o644)]);
    let zip = zip_of(&[("a.bin", &chunk), ("b.bin", &chunk)]);
    let src = commit(
        &repo,
        &[("d/site.tar.gz", &tgz, false), ("d/site.zip", &zip, false)],
    );
    for source in ["d/site.tar.gz", "d/site.zip"] {
        let mut small = app(AppKind::Static, source, &[]);
        small.max_unpacked_size = schema::values::ByteSize(1 << 20);
        let e = deploy::deploy(&h, &src, "small", &small).expect_err(source);
        let text = e.to_string();
        assert!(
            text.contains("unpacks to more than 1MiB (applications.small.max-unpacked-size)"),
            "{source}: {text}"
        );
        // The default (2GiB) takes it.
        let d = deploy::deploy(&h, &src, "big", &app(AppKind::Static, source, &[])).expect(source);
        assert_eq!(
            std::fs::metadata(d.image.join("b.bin")).expect("b").len(),
            600 << 10
        );
    }
}

#[test]
fn a_cancelled_deployment_leaves_the_old_image_and_no_staging() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let h = home(tmp.path());
    let v1 = commit(&repo, &[("site/index.html", b"v1", false)]);
    let d = deploy::deploy(&h, &v1, "site", &app(AppKind::Static, "site", &[])).expect("v1");
    let tgz = tar_gz(&[("index.html", b"v2", 0o644)]);
    let v2 = commit(
        &repo,
        &[
            ("site.tar.gz", &tgz, false),
            ("site/index.html", b"v2", false),
        ],
    );
    let cancel = std::sync::atomic::AtomicBool::new(true);
    let ctx = deploy::DeployContext {
        cancel: Some(&cancel),
        log: None,
    };
    for source in ["site", "site.tar.gz"] {
        let e = deploy::deploy_with(&h, &v2, "site", &app(AppKind::Static, source, &[]), ctx)
            .expect_err(source);
        assert!(matches!(e, DeployError::Cancelled { .. }), "{source}: {e}");
        assert_eq!(
            std::fs::read(d.image.join("index.html")).expect("v1"),
            b"v1"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(h.tmp())
        .expect("tmp")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_deployment_cancelled_midway_is_not_swapped_in() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let h = home(tmp.path());
    // 64 MiB of zeros compress to ~64 KiB: the compressed input is read at once and the time
    // goes into inflating, when the cancel comes. (How soon it stops is measured by
    // benches/failing_app_pin.py, not asserted here.)
    let zeros = vec![0u8; 64 << 20];
    let tgz = tar_gz(&[("big.bin", &zeros, 0o644)]);
    drop(zeros);
    let src = commit(&repo, &[("big.tar.gz", &tgz, false)]);
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let staging = h.tmp();
    let result = std::thread::scope(|s| {
        // Cancels as soon as the entry is being written.
        s.spawn(|| {
            while !cancel.load(std::sync::atomic::Ordering::SeqCst) {
                let writing = std::fs::read_dir(&staging)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|e| e.path().join("big.bin").exists());
                if writing {
                    cancel.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                // Polls for the entry in staging: the deployment reports no progress to wait on.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        let ctx = deploy::DeployContext {
            cancel: Some(&cancel),
            log: None,
        };
        let r = deploy::deploy_with(
            &h,
            &src,
            "big",
            &app(AppKind::Static, "big.tar.gz", &[]),
            ctx,
        );
        // Whatever happened, the watcher stops.
        cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        r
    });
    let e = result.expect_err("cancelled");
    assert!(matches!(e, DeployError::Cancelled { .. }), "{e}");
    assert!(!h.deployed().join("big").exists());
    let leftovers: Vec<_> = std::fs::read_dir(h.tmp())
        .expect("tmp")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
