//! Serves one directory with the web engine at `/`, for `benches/static_throughput.sh`:
//! `serve_static DIR PORT [--access-log] [--threads N]`. Runs until killed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use runtime::deploy::Deployment;
use runtime::engine::web::{AppSpec, EngineContext, WebConfig, WebEngine};
use schema::model::{AccessLog, AccessLogFormat, AppKind, Application, Listener, ThreadPool};
use schema::values::Dur;

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    let logs = std::env::temp_dir().join(format!("steward-bench-logs-{}", std::process::id()));
    let deployment = Deployment {
        app: "bench".into(),
        image: dir.clone(),
        generated: logs.join("generated"),
        work_dir: logs.join("work"),
        library_path: vec![],
        warnings: vec![],
        fingerprint: "bench".into(),
        reused: true,
    };
    let app = Application {
        kind: AppKind::Static,
        source: "bench".into(),
        context_path: "/".into(),
        targets: vec![],
        description: String::new(),
        env: BTreeMap::new(),
        command: None,
        args: vec![],
        libraries: vec![],
        index: "index.html".into(),
        health_path: "/".into(),
        start_timeout: Dur::secs(30),
        max_unpacked_size: schema::model::default_max_unpacked_size(),
    };
    let mut listener = Listener::on_port(port);
    listener.address = "127.0.0.1".parse()?;
    listener.thread_pool = ThreadPool { min: 2, max: 1024 };
    let config = WebConfig {
        server: "bench".into(),
        listeners: BTreeMap::from([("http".to_owned(), listener)]),
        access_log: AccessLog {
            enabled: access,
            format: AccessLogFormat::Common,
        },
        apps: BTreeMap::from([("bench".to_owned(), AppSpec { app, deployment })]),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let ctx = EngineContext {
            logs_dir: logs,
            rotation: Default::default(),
            logger: None,
        };
        let (_engine, report) = WebEngine::start(config, ctx).await?;
        if !report.failed.is_empty() {
            return Err(format!("{:?}", report.failed).into());
        }
        println!("serving {} on 127.0.0.1:{port}", dir.display());
        std::future::pending::<()>().await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
