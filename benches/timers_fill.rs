//! Prefills a server's timer store for `benches/timers_load.py`, the way the component engine
//! writes it (`runtime::engine::component::store`, one committed transaction): COUNT persistent
//! run-time interval timers of application APP, every one firing each INTERVAL_MS, their first
//! firings spread evenly over one interval from FIRST_MS (ms since the epoch), so that together
//! they fire COUNT * 1000 / INTERVAL_MS times per second.
//!
//! ```text
//! timers_fill DIR APP SOURCE COUNT INTERVAL_MS FIRST_MS
//! ```

use runtime::engine::component::store::{Record, Spec, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, app, source, count, interval, first] = args.as_slice() else {
        return Err("usage: timers_fill DIR APP SOURCE COUNT INTERVAL_MS FIRST_MS".into());
    };
    let (count, interval, first): (i64, i64, i64) =
        (count.parse()?, interval.parse()?, first.parse()?);
    std::fs::create_dir_all(dir)?;
    let store = Store::open(std::path::Path::new(dir))?;
    let records: Vec<Record> = (0..count)
        .map(|i| {
            let next = first + i * interval / count;
            Record {
                app: app.clone(),
                id: format!("t{i}"),
                name: "tick".into(),
                info: serde_json::json!({ "i": i }),
                declared: false,
                spec: Spec::Interval {
                    every_ms: interval as u64,
                },
                persistent: true,
                misfire: Default::default(),
                source: source.clone(),
                // Intervals count from the anchor: one interval before the first firing.
                anchor_ms: next - interval,
                next_ms: Some(next),
                fired: 0,
                failed: 0,
                last: None,
            }
        })
        .collect();
    store.write(records.iter(), [])?;
    println!("{}", records.len());
    Ok(())
}
