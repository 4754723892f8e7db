use super::*;
use crate::logfile::tail;

fn logger(dir: &std::path::Path) -> Logger {
    let file = LogFile::open(dir, "server", Rotation::default()).expect("log file");
    Logger::new(Some(file), Echo::None, "server1")
}

#[test]
fn writes_jeus_lines_with_the_id_and_the_thread() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = logger(tmp.path());
    log.severe("Launcher-0052", "Receiving failed.\ncause");
    let lines = tail(tmp.path(), "server", 10);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (stamp, rest) = lines[0].split_at(21);
    assert_eq!((stamp.len(), &stamp[..1], &stamp[20..]), (21, "[", "]"));
    assert_eq!(rest, "[0] [server1] [Launcher-0052] Receiving failed.");
    assert_eq!(lines[1], "    cause");
}

#[test]
fn the_level_changes_live() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = logger(tmp.path());
    log.set_level(Level::Info);
    log.debug("SERVER-0330", "hidden");
    assert!(!log.enables(Level::Fine));
    log.set_level(Level::Fine);
    assert!(log.enables(Level::Fine));
    log.debug("SERVER-0330", "shown");
    log.set_level(Level::Severe);
    log.warn("SERVER-0210", "hidden too");
    log.raw(Level::Info, "a copied line, hidden");
    let text = tail(tmp.path(), "server", 10).join("\n");
    assert!(text.contains("[4] [server1] [SERVER-0330] shown"), "{text}");
    assert!(!text.contains("hidden"), "{text}");
}

#[test]
fn json_lines_carry_every_field_and_the_spans() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = logger(tmp.path());
    log.set_format(Format::Json);
    log.info("SERVER-0010", "Listening on 127.0.0.1:9741.\nsecond line");
    tracing::dispatcher::with_default(&log.dispatch, || {
        let span = tracing::info_span!("resync", commit = "abc1234");
        let _in = span.enter();
        tracing::warn!(id = "SERVER-0312", attempt = 3u64, "Not applied.");
    });
    let lines = tail(tmp.path(), "server", 10);
    assert_eq!(lines.len(), 2, "one object per line: {lines:?}");
    let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON");
    assert_eq!(first["level"], "INFO");
    assert_eq!(first["thread"], "server1");
    assert_eq!(first["id"], "SERVER-0010");
    assert_eq!(
        first["message"],
        "Listening on 127.0.0.1:9741.\nsecond line"
    );
    assert_eq!(first["file"], file!());
    assert!(
        first["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("runtime"))
    );
    let time = first["time"].as_str().expect("time");
    assert_eq!((&time[4..5], &time[10..11], &time[19..20]), ("-", "T", "."));
    let second: serde_json::Value = serde_json::from_str(&lines[1]).expect("JSON");
    assert_eq!(second["level"], "WARN");
    assert_eq!(second["id"], "SERVER-0312");
    assert_eq!(second["attempt"], 3);
    assert_eq!(
        second["spans"],
        serde_json::json!([{"name": "resync", "commit": "abc1234"}])
    );
}

#[test]
fn other_crates_events_are_not_written() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = logger(tmp.path());
    tracing::dispatcher::with_default(&log.dispatch, || {
        tracing::info!(target: "h2::proto", "a frame");
        tracing::info!(id = "SERVER-0001", "ours");
    });
    let lines = tail(tmp.path(), "server", 10);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].ends_with("[SERVER-0001] ours"));
}
