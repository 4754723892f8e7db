//! Runs one `process` application behind the web engine at `/`, for
//! `benches/proxy_throughput.sh`: `serve_proxy DIR COMMAND PORT [--threads N] [--env K=V]...`.
//! `COMMAND` is run from the deploy image `DIR` as the supervisor runs any process application
//! (with `PORT` set); the engine listens on `127.0.0.1:PORT`. Runs until SIGTERM or SIGINT, then
//! stops the application.

use std::collections::BTreeMap;
use std::path::PathBuf;

use runtime::engine::web::WebEngine;
use schema::model::AppKind;

mod bench;

fn main() -> bench::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(command), Some(port)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: serve_proxy DIR COMMAND PORT [--threads N] [--env K=V]...");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir).canonicalize()?;
    let port: u16 = port.parse()?;
    let mut threads = 2;
    let mut env = BTreeMap::new();
    let mut rest = args[3..].iter();
    while let Some(a) = rest.next() {
        match (a.as_str(), rest.next()) {
            ("--threads", Some(n)) => threads = n.parse()?,
            ("--env", Some(kv)) => {
                let (k, v) = kv.split_once('=').ok_or("--env wants K=V")?;
                env.insert(k.to_owned(), v.to_owned());
            }
            _ => return Err(format!("unexpected argument {a}").into()),
        }
    }
    let (config, ctx) = bench::engine(
        &dir,
        port,
        AppKind::Process,
        Some(command.clone()),
        env,
        false,
    )?;
    let rt = bench::runtime(threads)?;
    rt.block_on(async move {
        let (engine, report) = WebEngine::start(config, ctx).await?;
        if !report.failed.is_empty() {
            engine.shutdown(std::time::Duration::from_secs(1)).await;
            return Err(format!("{:?}", report.failed).into());
        }
        println!("proxying 127.0.0.1:{port} to {command}");
        // Stopped with SIGTERM or SIGINT: stop the application too, not leave it running.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        engine.shutdown(std::time::Duration::from_secs(1)).await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
