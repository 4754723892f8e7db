//! A STOMP 1.2 load generator, for `benches/messaging_throughput.py`: the same client against
//! Steward's messaging engine and against RabbitMQ's STOMP plugin.
//!
//! ```text
//! stomp_load throughput --port P [--producers 4] [--consumers 2] [--seconds 10] ...
//! stomp_load latency    --port P [--rate 2000] [--seconds 10] ...
//! stomp_load fill       --port P [--count 100000] ...
//! ```
//!
//! - `throughput`: producers send `--size`-byte messages, each with a `receipt`, pipelined: at
//!   most `--window` receipts outstanding per producer (so a producer never waits a round trip
//!   per message); consumers subscribe with `ack:client-individual` and ACK every message. After
//!   `--warmup` seconds the receipts and messages of the next `--seconds` are counted. Then the
//!   producers stop, wait for their last receipts, and the consumers drain the queue.
//! - `latency`: the same at a fixed total `--rate`; each body starts with the time it was
//!   written (this process's clock), and the consumer records send → receive.
//! - `fill`: producers send `--count` messages with receipts and no consumer takes them (the
//!   memory figure is read by the bench from `/proc` once this returns).
//!
//! Prints one JSON object on stdout. `cpu` is this process's CPU time over the measured window
//! divided by its length (1.0 = one core busy): the evidence that the generator is not the
//! bottleneck. `--send-header K:V` and `--subscribe-header K:V` add headers (RabbitMQ's
//! `persistent:true`, `durable:true`). One thread by default (`--threads`).

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use runtime::engine::messaging::frame::{Decoded, Frame, decode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The clock the bodies' timestamps count from (one process sends and receives).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ns() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Throughput,
    Latency,
    Fill,
}

#[derive(Debug, Clone)]
struct Opts {
    mode: Mode,
    host: String,
    port: u16,
    login: String,
    passcode: String,
    dest: String,
    send_headers: Vec<(String, String)>,
    subscribe_headers: Vec<(String, String)>,
    producers: usize,
    consumers: usize,
    seconds: f64,
    warmup: f64,
    size: usize,
    window: usize,
    prefetch: usize,
    rate: f64,
    count: u64,
    threads: usize,
}

const USAGE: &str = "usage: stomp_load throughput|latency|fill --port P [--host H] [--login U] \
[--passcode W] [--dest /queue/NAME] [--producers N] [--consumers N] [--seconds S] [--warmup S] \
[--size BYTES] [--window N] [--prefetch N] [--rate MSG/S] [--count N] [--threads N] \
[--send-header K:V]... [--subscribe-header K:V]...";

fn parse_args() -> Result<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.first().map(String::as_str) {
        Some("throughput") => Mode::Throughput,
        Some("latency") => Mode::Latency,
        Some("fill") => Mode::Fill,
        _ => return Err(USAGE.into()),
    };
    let mut o = Opts {
        mode,
        host: "127.0.0.1".into(),
        port: 0,
        login: "guest".into(),
        passcode: "guest".into(),
        dest: "/queue/bench".into(),
        send_headers: vec![],
        subscribe_headers: vec![],
        producers: if mode == Mode::Latency { 1 } else { 4 },
        consumers: if mode == Mode::Fill { 0 } else { 2 },
        seconds: 10.0,
        warmup: 2.0,
        size: 1024,
        window: 128,
        prefetch: 100,
        rate: 2000.0,
        count: 100_000,
        threads: 1,
    };
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let v = rest
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--host" => o.host = v.clone(),
            "--port" => o.port = v.parse()?,
            "--login" => o.login = v.clone(),
            "--passcode" => o.passcode = v.clone(),
            "--dest" => o.dest = v.clone(),
            "--send-header" => o.send_headers.push(header_arg(v)?),
            "--subscribe-header" => o.subscribe_headers.push(header_arg(v)?),
            "--producers" => o.producers = v.parse()?,
            "--consumers" => o.consumers = v.parse()?,
            "--seconds" => o.seconds = v.parse()?,
            "--warmup" => o.warmup = v.parse()?,
            "--size" => o.size = v.parse()?,
            "--window" => o.window = v.parse()?,
            "--prefetch" => o.prefetch = v.parse()?,
            "--rate" => o.rate = v.parse()?,
            "--count" => o.count = v.parse()?,
            "--threads" => o.threads = v.parse()?,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}").into()),
        }
    }
    if o.port == 0 {
        return Err(format!("--port is required\n{USAGE}").into());
    }
    if o.size < 8 || o.window == 0 || o.producers == 0 || o.threads == 0 {
        return Err("--size must be at least 8 (the timestamp); --window, --producers and --threads at least 1".into());
    }
    if o.mode != Mode::Fill && o.consumers == 0 {
        return Err("throughput and latency need at least one consumer".into());
    }
    Ok(o)
}

/// `K:V`; written unescaped into frames, so the characters STOMP escapes are refused.
fn header_arg(v: &str) -> Result<(String, String)> {
    let (k, val) = v
        .split_once(':')
        .ok_or_else(|| format!("header {v:?} is not K:V"))?;
    if v.contains(['\n', '\r', '\\']) || val.contains(':') {
        return Err(format!("header {v:?}: no newline, backslash or second colon").into());
    }
    Ok((k.to_owned(), val.to_owned()))
}

/// What every connection adds to; read by the main task at the window's edges.
#[derive(Default)]
struct Stats {
    /// Receipts received (messages the broker accepted).
    receipted: AtomicU64,
    /// MESSAGE frames received (and acknowledged).
    consumed: AtomicU64,
    redelivered: AtomicU64,
    /// Set: producers stop sending and wait for their outstanding receipts.
    stop: AtomicBool,
    /// Set once every producer has its last receipt: consumers may finish once they consumed
    /// all that was receipted.
    producers_done: AtomicBool,
    /// Whether consumers record latencies now (the measured window of `latency`).
    recording: AtomicBool,
    /// Messages left to send in `fill` (shared by the producers).
    remaining: AtomicU64,
}

/// One STOMP connection.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
}

impl Conn {
    async fn open(o: &Opts) -> Result<Conn> {
        let stream = TcpStream::connect((o.host.as_str(), o.port)).await?;
        stream.set_nodelay(true)?;
        let mut c = Conn {
            stream,
            buf: BytesMut::with_capacity(256 * 1024),
            out: Vec::with_capacity(256 * 1024),
        };
        Frame::new("CONNECT")
            .header("accept-version", "1.2")
            .header("host", "/")
            .header("login", o.login.clone())
            .header("passcode", o.passcode.clone())
            .header("heart-beat", "0,0")
            .encode(&mut c.out);
        c.flush().await?;
        let mut connected = false;
        while !connected {
            for f in c.read().await? {
                match f.command.as_str() {
                    "CONNECTED" => connected = true,
                    _ => return Err(broker_error(&f)),
                }
            }
        }
        Ok(c)
    }

    async fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads once and returns the whole frames that arrived (possibly none); an error at EOF.
    async fn read(&mut self) -> Result<Vec<Frame>> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err("the broker closed the connection".into());
        }
        let mut frames = Vec::new();
        while let Some(d) = decode(&mut self.buf, 64 * 1024 * 1024)? {
            if let Decoded::Frame(f) = d {
                frames.push(f);
            }
        }
        Ok(frames)
    }

    /// DISCONNECT with a receipt, so that everything sent before (ACKs) was handled when this
    /// returns; bounded, since a broker may close first.
    async fn close(mut self) {
        self.out.extend_from_slice(b"DISCONNECT\nreceipt:bye\n\n\0");
        if self.flush().await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match self.read().await {
                    Ok(fs) if fs.iter().any(|f| f.command == "RECEIPT") => return,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }
}

fn broker_error(f: &Frame) -> Box<dyn std::error::Error + Send + Sync> {
    format!(
        "the broker answered {}: {} {}",
        f.command,
        f.get("message").unwrap_or(""),
        String::from_utf8_lossy(&f.body).trim()
    )
    .into()
}

/// The wire form of a SEND without its `receipt` header and body: the headers are fixed for a
/// run, so they are encoded once.
fn send_prefix(o: &Opts) -> Vec<u8> {
    let mut p = format!("SEND\ndestination:{}\n", o.dest);
    for (k, v) in &o.send_headers {
        p.push_str(&format!("{k}:{v}\n"));
    }
    p.push_str(&format!("content-length:{}\n", o.size));
    p.into_bytes()
}

/// Appends one SEND (receipt `seq`, body stamped with the time now) to `out`.
fn push_send(out: &mut Vec<u8>, prefix: &[u8], body: &mut [u8], seq: u64) {
    out.extend_from_slice(prefix);
    out.extend_from_slice(format!("receipt:{seq}\n\n").as_bytes());
    body[..8].copy_from_slice(&now_ns().to_le_bytes());
    out.extend_from_slice(body);
    out.push(0);
}

/// Counts the RECEIPTs among `frames`; any ERROR fails the run.
fn receipts(frames: &[Frame]) -> Result<usize> {
    let mut n = 0;
    for f in frames {
        match f.command.as_str() {
            "RECEIPT" => n += 1,
            _ => return Err(broker_error(f)),
        }
    }
    Ok(n)
}

/// A producer of `throughput` and `fill`: keeps `window` receipts outstanding until told to
/// stop (or, in `fill`, until the shared count is sent), then waits for the last ones.
async fn producer(o: Arc<Opts>, stats: Arc<Stats>) -> Result<()> {
    let mut c = Conn::open(&o).await?;
    let prefix = send_prefix(&o);
    let mut body = vec![b'x'; o.size];
    let mut seq = 0u64;
    let mut outstanding = 0usize;
    loop {
        let more = !stats.stop.load(Ordering::Relaxed);
        while more && outstanding < o.window {
            if o.mode == Mode::Fill
                && stats
                    .remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
                    .is_err()
            {
                break;
            }
            seq += 1;
            push_send(&mut c.out, &prefix, &mut body, seq);
            outstanding += 1;
        }
        c.flush().await?;
        if outstanding == 0 {
            break;
        }
        let frames = c.read().await?;
        let n = receipts(&frames)?;
        outstanding -= n;
        stats.receipted.fetch_add(n as u64, Ordering::Relaxed);
    }
    c.close().await;
    Ok(())
}

/// A producer of `latency`: sends at `rate` messages per second (what is due every
/// millisecond), reading receipts in between.
async fn paced_producer(o: Arc<Opts>, stats: Arc<Stats>, rate: f64) -> Result<()> {
    let mut c = Conn::open(&o).await?;
    let prefix = send_prefix(&o);
    let mut body = vec![b'x'; o.size];
    let mut seq = 0u64;
    let mut outstanding = 0usize;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let stop = stats.stop.load(Ordering::Relaxed);
        if stop && outstanding == 0 {
            break;
        }
        tokio::select! {
            _ = tick.tick(), if !stop => {
                let due = (start.elapsed().as_secs_f64() * rate) as u64;
                while seq < due {
                    seq += 1;
                    push_send(&mut c.out, &prefix, &mut body, seq);
                    outstanding += 1;
                }
                c.flush().await?;
            }
            frames = c.read() => {
                let n = receipts(&frames?)?;
                outstanding = outstanding.saturating_sub(n);
                stats.receipted.fetch_add(n as u64, Ordering::Relaxed);
            }
            // Re-check `stop` now and then while idle.
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    c.close().await;
    Ok(())
}

/// A consumer: `ack:client-individual`, one ACK per message (written together per read).
/// Returns its latencies (nanoseconds) while recording. Ends once the producers are done and
/// everything receipted was consumed, or after `drain` without a message once they are done.
async fn consumer(o: Arc<Opts>, stats: Arc<Stats>, id: usize) -> Result<Vec<u64>> {
    let drain = Duration::from_secs(10);
    let mut c = Conn::open(&o).await?;
    let mut sub = format!(
        "SUBSCRIBE\nid:{id}\ndestination:{}\nack:client-individual\nprefetch-count:{}\n",
        o.dest, o.prefetch
    );
    for (k, v) in &o.subscribe_headers {
        sub.push_str(&format!("{k}:{v}\n"));
    }
    sub.push_str("receipt:subscribed\n\n\0");
    c.out.extend_from_slice(sub.as_bytes());
    c.flush().await?;
    let mut latencies = Vec::new();
    let mut last_message = Instant::now();
    loop {
        if stats.producers_done.load(Ordering::Relaxed)
            && (stats.consumed.load(Ordering::Relaxed) >= stats.receipted.load(Ordering::Relaxed)
                || last_message.elapsed() > drain)
        {
            break;
        }
        let frames = tokio::select! {
            f = c.read() => f?,
            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
        };
        let now = now_ns();
        let recording = stats.recording.load(Ordering::Relaxed);
        let mut n = 0;
        for f in &frames {
            match f.command.as_str() {
                "MESSAGE" => {
                    let ack = f.get("ack").ok_or("a MESSAGE without an ack header")?;
                    c.out
                        .extend_from_slice(format!("ACK\nid:{ack}\n\n\0").as_bytes());
                    n += 1;
                    if f.get("redelivered") == Some("true") {
                        stats.redelivered.fetch_add(1, Ordering::Relaxed);
                    }
                    if recording && let Some(stamp) = f.body.get(..8) {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(stamp);
                        latencies.push(now.saturating_sub(u64::from_le_bytes(b)));
                    }
                }
                "RECEIPT" => {}
                _ => return Err(broker_error(f)),
            }
        }
        if n > 0 {
            last_message = Instant::now();
            c.flush().await?;
            stats.consumed.fetch_add(n, Ordering::Relaxed);
        }
    }
    c.close().await;
    Ok(latencies)
}

/// This process's CPU time (user + system).
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Counters and CPU time at one instant.
struct Mark {
    at: Instant,
    cpu: Duration,
    receipted: u64,
    consumed: u64,
}

fn mark(stats: &Stats) -> Mark {
    Mark {
        at: Instant::now(),
        cpu: cpu_time(),
        receipted: stats.receipted.load(Ordering::Relaxed),
        consumed: stats.consumed.load(Ordering::Relaxed),
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn run(o: Opts) -> Result<serde_json::Value> {
    LazyLock::force(&EPOCH);
    let o = Arc::new(o);
    let stats = Arc::new(Stats::default());
    stats.remaining.store(o.count, Ordering::Relaxed);
    // Consumers first, so that nothing piles up in the queue at the start.
    let mut consumers = Vec::new();
    for i in 0..o.consumers {
        consumers.push(tokio::spawn(consumer(o.clone(), stats.clone(), i)));
    }
    let mut producers = Vec::new();
    for _ in 0..o.producers {
        let (o, s) = (o.clone(), stats.clone());
        producers.push(match o.mode {
            Mode::Latency => {
                let rate = o.rate / o.producers as f64;
                tokio::spawn(paced_producer(o, s, rate))
            }
            _ => tokio::spawn(producer(o, s)),
        });
    }
    let mut result = serde_json::json!({
        "mode": format!("{:?}", o.mode).to_lowercase(),
        "producers": o.producers,
        "consumers": o.consumers,
        "size": o.size,
    });
    let (start, end) = if o.mode == Mode::Fill {
        let start = mark(&stats);
        for p in producers.drain(..) {
            p.await??;
        }
        (start, mark(&stats))
    } else {
        tokio::time::sleep(Duration::from_secs_f64(o.warmup)).await;
        let start = mark(&stats);
        stats.recording.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(o.seconds)).await;
        stats.recording.store(false, Ordering::Relaxed);
        let end = mark(&stats);
        stats.stop.store(true, Ordering::Relaxed);
        (start, end)
    };
    for p in producers {
        p.await??;
    }
    stats.producers_done.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for c in consumers {
        latencies.extend(c.await??);
    }
    let secs = (end.at - start.at).as_secs_f64();
    let r = &mut result;
    r["seconds"] = secs.into();
    r["cpu"] = ((end.cpu.saturating_sub(start.cpu)).as_secs_f64() / secs).into();
    r["receipted"] = (end.receipted - start.receipted).into();
    r["receipted_per_s"] = ((end.receipted - start.receipted) as f64 / secs).into();
    r["consumed_per_s"] = ((end.consumed - start.consumed) as f64 / secs).into();
    r["total_receipted"] = stats.receipted.load(Ordering::Relaxed).into();
    r["total_consumed"] = stats.consumed.load(Ordering::Relaxed).into();
    r["redelivered"] = stats.redelivered.load(Ordering::Relaxed).into();
    if o.mode == Mode::Latency {
        latencies.sort_unstable();
        let us = |ns: u64| ns as f64 / 1000.0;
        r["samples"] = latencies.len().into();
        r["p50_us"] = us(percentile(&latencies, 0.50)).into();
        r["p99_us"] = us(percentile(&latencies, 0.99)).into();
        r["max_us"] = us(latencies.last().copied().unwrap_or(0)).into();
    }
    Ok(result)
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = if opts.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads)
            .enable_all()
            .build()
    };
    let result = rt
        .map_err(|e| e.into())
        .and_then(|rt| rt.block_on(run(opts)));
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("stomp_load: {e}");
            std::process::exit(1);
        }
    }
}
