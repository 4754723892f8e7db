//! Serves one directory with the web engine at `/`, for `benches/static_throughput.sh`:
//! `serve_static DIR PORT [--access-log] [--threads N]`. Runs until killed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use runtime::engine::web::WebEngine;
use schema::model::AppKind;

mod bench;

fn main() -> bench::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(port)) = (args.first(), args.get(1)) else {
        eprintln!("usage: serve_static DIR PORT [--access-log] [--threads N]");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir).canonicalize()?;
    let port: u16 = port.parse()?;
    let access = args.iter().any(|a| a == "--access-log");
    let threads = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    let (config, ctx) = bench::engine(&dir, port, AppKind::Static, None, BTreeMap::new(), access)?;
    let rt = bench::runtime(threads)?;
    rt.block_on(async move {
        let (_engine, report) = WebEngine::start(config, ctx).await?;
        if !report.failed.is_empty() {
            return Err(format!("{:?}", report.failed).into());
        }
        println!("serving {} on 127.0.0.1:{port}", dir.display());
        std::future::pending::<()>().await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
