//! Generated references stay in step with the code.

#[test]
fn settings_reference_is_current() {
    let r = crate::util::steward(
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

/// Every message id the code logs (`SERVER-0201`, `Master-0010`, …) is in docs/messages.md.
#[test]
fn every_message_id_is_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = std::fs::read_to_string(root.join("docs/messages.md")).unwrap();
    let mut missing = Vec::new();
    let mut stack = vec![
        root.join("src"),
        root.join("schema/src"),
        root.join("reconciler/src"),
        root.join("runtime/src"),
    ];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for id in message_ids(&text) {
                if !table.contains(&format!("| {id} |")) && !missing.contains(&id) {
                    missing.push(id);
                }
            }
        }
    }
    missing.sort();
    assert!(
        missing.is_empty(),
        "message ids missing from docs/messages.md: {missing:?}"
    );
}

/// `"PREFIX-NNNN"` string literals, for the prefixes Steward logs with.
fn message_ids(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in [
        "Launcher-",
        "SERVER-",
        "Master-",
        "Domain-",
        "WEB-",
        "MSG-",
        "COMP-",
    ] {
        let needle = format!("\"{prefix}");
        let mut rest = text;
        while let Some(i) = rest.find(&needle) {
            let after = &rest[i + needle.len()..];
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            if digits.len() == 4 && after[4..].starts_with('"') {
                out.push(format!("{prefix}{digits}"));
            }
            rest = &rest[i + needle.len()..];
        }
    }
    out
}

/// Every route the Master serves is documented in docs/api.md.
#[test]
fn every_master_route_is_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let routes = std::fs::read_to_string(root.join("runtime/src/master/routes/mod.rs")).unwrap();
    let doc = std::fs::read_to_string(root.join("docs/api.md")).unwrap();
    let mut found = 0;
    let mut missing = Vec::new();
    for part in routes.split(".route(\"").skip(1) {
        let path = part.split('"').next().unwrap_or_default();
        // `/git/domain.git/{*rest}` is documented as `/git/domain.git/…`.
        let shown = path.split("/{*").next().unwrap_or(path);
        found += 1;
        if !doc.contains(shown) {
            missing.push(path.to_owned());
        }
    }
    assert!(
        found >= 10,
        "only {found} routes found: did the router move?"
    );
    assert!(
        missing.is_empty(),
        "routes missing from docs/api.md: {missing:?}"
    );
}
