//! What the benchmark harnesses (`serve_static`, `serve_proxy`) share: one application at `/`
//! from a ready deploy image, one loopback listener, and the runtime they run it on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use runtime::deploy::Deployment;
use runtime::engine::web::{AppSpec, EngineContext, WebConfig};
use schema::model::{AccessLog, AccessLogFormat, AppKind, Application, Listener, ThreadPool};
use schema::values::Dur;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The application `bench` of `kind` served from the image `dir` on `127.0.0.1:port`, and the
/// engine context logging to a per-process temp dir.
pub fn engine(
    dir: &Path,
    port: u16,
    kind: AppKind,
    command: Option<String>,
    env: BTreeMap<String, String>,
    access_log: bool,
) -> Result<(WebConfig, EngineContext)> {
    let logs: PathBuf =
        std::env::temp_dir().join(format!("steward-bench-logs-{}", std::process::id()));
    let deployment = Deployment {
        app: "bench".into(),
        image: dir.to_path_buf(),
        generated: logs.join("generated"),
        work_dir: logs.join("work"),
        library_path: vec![],
        warnings: vec![],
        fingerprint: "bench".into(),
        reused: true,
    };
    std::fs::create_dir_all(&deployment.work_dir)?;
    let app = Application {
        kind,
        source: "bench".into(),
        context_path: Some("/".into()),
        targets: vec![],
        description: String::new(),
        env,
        command,
        args: vec![],
        libraries: vec![],
        index: "index.html".into(),
        health_path: "/".into(),
        start_timeout: Dur::secs(30),
        max_unpacked_size: schema::model::default_max_unpacked_size(),
        timers: BTreeMap::new(),
        consumes: Vec::new(),
    };
    let mut listener = Listener::on_port(port);
    listener.address = "127.0.0.1".parse()?;
    listener.thread_pool = ThreadPool { min: 2, max: 1024 };
    let config = WebConfig {
        server: "bench".into(),
        listeners: BTreeMap::from([("http".to_owned(), listener)]),
        access_log: AccessLog {
            enabled: access_log,
            format: AccessLogFormat::Common,
        },
        apps: BTreeMap::from([("bench".to_owned(), AppSpec { app, deployment })]),
    };
    let ctx = EngineContext {
        logs_dir: logs,
        rotation: Default::default(),
        logger: None,
        env: Default::default(),
        component_env: None,
    };
    Ok((config, ctx))
}

/// A multi-threaded runtime of `threads` workers, as `steward server` runs the engine.
pub fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?)
}
