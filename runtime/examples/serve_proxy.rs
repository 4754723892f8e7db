//! Runs one `process` application behind the web engine at `/`, for
//! `benches/proxy_throughput.sh`: `serve_proxy DIR COMMAND PORT [--threads N] [--env K=V]...`.
//! `COMMAND` is run from the deploy image `DIR` as the supervisor runs any process application
//! (with `PORT` set); the engine listens on `127.0.0.1:PORT`. Runs until SIGTERM or SIGINT, then
//! stops the application.

use std::collections::BTreeMap;
use std::path::PathBuf;

use runtime::deploy::Deployment;
use runtime::engine::web::{AppSpec, EngineContext, WebConfig, WebEngine};
use schema::model::{AccessLog, AccessLogFormat, AppKind, Application, Listener, ThreadPool};
use schema::values::Dur;

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    std::fs::create_dir_all(&deployment.work_dir)?;
    let app = Application {
        kind: AppKind::Process,
        source: "bench".into(),
        context_path: "/".into(),
        targets: vec![],
        description: String::new(),
        env,
        command: Some(command.clone()),
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
            enabled: false,
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
