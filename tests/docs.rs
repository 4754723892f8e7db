//! Generated references stay in step with the code.

mod util;

#[test]
fn settings_reference_is_current() {
    let r = util::steward(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        &["schema", "--markdown"],
    );
    assert_eq!(r.code, 0);
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/settings.md"))
            .unwrap_or_default();
    assert!(
        committed == r.stdout,
        "docs/settings.md is stale: run `cargo run -q -- schema --markdown > docs/settings.md`"
    );
}
