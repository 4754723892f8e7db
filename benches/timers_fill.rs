//! Prefills a server's timer store for `benches/timers_load.py`, the way the component engine
//! writes it (`runtime::engine::component::store`, one committed transaction): COUNT persistent
//! run-time interval timers of application APP, every one firing each INTERVAL_MS, their first
//! firings spread evenly over one interval from FIRST_MS (ms since the epoch), so that together
//! they fire COUNT * 1000 / INTERVAL_MS times per second.
//!
//! ```text
//! timers_fill DIR APP SOURCE COUNT INTERVAL_MS FIRST_MS
//! timers_fill commit-time DIR N
//! ```
//!
//! `commit-time` times N commits of one record each (what the engine does before sending a
//! firing's callback) and prints their median and p99 in ms: the floor of a firing's lateness
//! when the commit is on its path.

use runtime::engine::component::store::{Record, Spec, Store};

fn record(app: &str, source: &str, i: i64, interval: i64, next: i64) -> Record {
    Record {
        app: app.to_owned(),
        id: format!("t{i}"),
        name: "tick".into(),
        info: serde_json::json!({ "i": i }),
        declared: false,
        spec: Spec::Interval {
            every_ms: interval as u64,
        },
        persistent: true,
        misfire: Default::default(),
        source: source.to_owned(),
        // Intervals count from the anchor: one interval before the first firing.
        anchor_ms: next - interval,
        next_ms: Some(next),
        fired: 0,
        failed: 0,
        last: None,
        unfinished: Vec::new(),
    }
}

fn commit_time(dir: &str, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let store = Store::open(std::path::Path::new(dir))?;
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let r = record("app", "apps/app", i as i64 % 100, 1000, 1_000_000);
        let t = std::time::Instant::now();
        store.write([&r], [])?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let at = |p: usize| ms.get((ms.len() * p / 100).min(ms.len().saturating_sub(1)));
    println!(
        "{{\"median_ms\": {:.3}, \"p99_ms\": {:.3}}}",
        at(50).copied().unwrap_or(f64::NAN),
        at(99).copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, dir, n] = args.as_slice()
        && mode == "commit-time"
    {
        return commit_time(dir, n.parse()?);
    }
    let [dir, app, source, count, interval, first] = args.as_slice() else {
        return Err("usage: timers_fill DIR APP SOURCE COUNT INTERVAL_MS FIRST_MS".into());
    };
    let (count, interval, first): (i64, i64, i64) =
        (count.parse()?, interval.parse()?, first.parse()?);
    std::fs::create_dir_all(dir)?;
    let store = Store::open(std::path::Path::new(dir))?;
    let records: Vec<Record> = (0..count)
        .map(|i| record(app, source, i, interval, first + i * interval / count))
        .collect();
    store.write(records.iter(), [])?;
    println!("{}", records.len());
    Ok(())
}
