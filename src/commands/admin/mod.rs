//! `steward admin`: the console tool (jeusadmin). Each subcommand parses its flags here and calls
//! `runtime::admin`; the shared flags (`--master`, `--format`) come first. docs/admin.md.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reconciler::pin::Outcome;
use reconciler::wire::{RolloutAction, RolloutRequest, RolloutState};
use runtime::admin::{Api, Connection, render};

use super::out;

mod edit;

#[derive(clap::Args)]
pub struct Args {
    /// The Master: `http://HOST:PORT` or `https://HOST:PORT` (default: STEWARD_MASTER, else
    /// http://127.0.0.1:9736). Credentials come from STEWARD_USER/STEWARD_PASSWORD or the
    /// 0600 file ~/.config/steward/credentials, never from the command line.
    #[arg(long, global = true)]
    master: Option<String>,
    /// Output: for people, or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    format: Format,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum Format {
    Human,
    Json,
}

#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Every server (state, mode, commit, pending restarts, failures, pid, uptime) and the
    /// domain's pin, hold and upstream.
    Status {
        /// Keep printing it as it changes (from the Master's event stream) until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Pins, rollbacks, rejected and held commits, newest first.
    History {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One commit: what the history says about it (every problem of a rejection) and its plan.
    Show { commit: String },
    /// Restart servers through the Master, one at a time (or --max-unavailable at a time), each
    /// only after the previous is back RUNNING on the pin.
    Restart(Rollout),
    /// Stop servers gracefully through the Master.
    Stop(Rollout),
    /// Start servers through their launchers: on the Master's machine, or through the node agent
    /// of theirs.
    Start(Rollout),
    /// Run an older commit's configuration (default: the pin before the current one). Hosted:
    /// a revert commit on the branch; mirror: pins it and holds the domain.
    Rollback { commit: Option<String> },
    /// Mirror mode: stop pinning new upstream heads (they are validated and recorded as held).
    Hold,
    /// Mirror mode: follow the upstream again; its head is pinned if valid.
    Resume,
    /// Change settings of domain.toml (`PATH=VALUE`…), keeping its comments: shows the plan,
    /// then commits and pushes to the Master.
    Set {
        #[arg(required = true, value_name = "PATH=VALUE")]
        assignments: Vec<String>,
        #[command(flatten)]
        flags: edit::EditFlags,
    },
    /// Remove settings from domain.toml (they take their defaults again).
    Unset {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
        #[command(flatten)]
        flags: edit::EditFlags,
    },
    /// Put an application's content into the domain repository and deploy it (or redeploy an
    /// existing one).
    Deploy {
        #[command(flatten)]
        deploy: edit::DeployArgs,
        #[command(flatten)]
        flags: edit::EditFlags,
    },
    /// Remove an application and its content from the domain.
    Undeploy {
        app: String,
        #[command(flatten)]
        flags: edit::EditFlags,
    },
    /// The timers of the domain's component applications (next fire, last result, retries,
    /// failed or orphaned), asked of the running servers through the Master; `cancel` removes
    /// one.
    Timers {
        /// Only this server's timers.
        #[arg(long)]
        server: Option<String>,
        /// Only this application's timers.
        #[arg(long)]
        application: Option<String>,
        #[command(subcommand)]
        command: Option<TimersCommand>,
    },
}

#[derive(clap::Subcommand)]
pub enum TimersCommand {
    /// Cancel a run-time timer (or an orphaned one) for good: the server commits the removal to
    /// its timer store before answering. Declared timers are removed from domain.toml instead.
    Cancel {
        server: String,
        application: String,
        /// The timer's id (a declared timer's id is its name).
        id: String,
    },
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["servers", "cluster", "pending"])))]
pub struct Rollout {
    /// The servers, in order.
    servers: Vec<String>,
    /// Every server of this cluster, in the cluster's order.
    #[arg(long)]
    cluster: Option<String>,
    /// Every server with pending restarts.
    #[arg(long)]
    pending: bool,
    /// How many of them may be down at once.
    #[arg(long, default_value_t = 1)]
    max_unavailable: usize,
    /// Print the rollout and return without following it.
    #[arg(long)]
    no_wait: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let api = Api::new(Connection::resolve(args.master.as_deref())?)?;
    let json = args.format == Format::Json;
    match args.command {
        AdminCommand::Status { watch: false } => status(&api, json),
        AdminCommand::Status { watch: true } => watch(&api, json),
        AdminCommand::History { limit } => {
            let records = api.history(limit.clamp(1, 1000))?;
            print(json, serde_json::to_value(&records)?, || {
                render::history(&records)
            })
        }
        AdminCommand::Show { commit } => show(&api, &commit, json),
        AdminCommand::Restart(r) => rollout(&api, RolloutAction::Restart, r, json),
        AdminCommand::Stop(r) => rollout(&api, RolloutAction::Stop, r, json),
        AdminCommand::Start(r) => rollout(&api, RolloutAction::Start, r, json),
        AdminCommand::Rollback { commit } => rollback(&api, commit, json),
        AdminCommand::Hold => {
            let d = api.hold()?;
            print(json, serde_json::to_value(&d)?, || {
                format!(
                    "Domain {} is held: new upstream heads are validated and recorded, not pinned, until `steward admin resume`.\n",
                    d.name
                )
            })
        }
        AdminCommand::Set { assignments, flags } => {
            edit::run(&api, edit::What::Set(assignments), flags, json)
        }
        AdminCommand::Unset { paths, flags } => {
            edit::run(&api, edit::What::Unset(paths), flags, json)
        }
        AdminCommand::Deploy { deploy, flags } => {
            edit::run(&api, edit::What::Deploy(deploy), flags, json)
        }
        AdminCommand::Undeploy { app, flags } => {
            edit::run(&api, edit::What::Undeploy(app), flags, json)
        }
        AdminCommand::Timers {
            server,
            application,
            command: None,
        } => {
            let doc = api.timers(server.as_deref(), application.as_deref())?;
            let incomplete = doc["unavailable"]
                .as_array()
                .is_some_and(|u| u.iter().any(|u| u["asked"] == true));
            print(json, doc.clone(), || render::timers(&doc))?;
            // A listing that misses a running server is not a success a script should trust
            // (a stopped server fires nothing, and is only noted).
            Ok(if incomplete {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        AdminCommand::Timers {
            command:
                Some(TimersCommand::Cancel {
                    server,
                    application,
                    id,
                }),
            ..
        } => {
            let doc = api.cancel_timer(&server, &application, &id)?;
            print(json, doc, || {
                format!("Timer {application}/{id} on {server} is cancelled.\n")
            })
        }
        AdminCommand::Resume => {
            let d = api.resume()?;
            print(json, serde_json::to_value(&d)?, || {
                format!(
                    "Domain {} follows its upstream again; pinned {}.\n",
                    d.name,
                    short(&d.pinned.commit)
                )
            })
        }
    }
}

fn short(c: &str) -> &str {
    c.get(..7).unwrap_or(c)
}

/// Prints `doc` as JSON, or what `human` says.
fn print(
    json: bool,
    doc: serde_json::Value,
    human: impl FnOnce() -> String,
) -> anyhow::Result<ExitCode> {
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
    } else {
        out(&human())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn status(api: &Api, json: bool) -> anyhow::Result<ExitCode> {
    let domain = api.domain()?;
    let servers = api.servers()?;
    let nodes = api.nodes()?;
    print(
        json,
        serde_json::json!({ "domain": domain, "servers": servers, "nodes": nodes }),
        || render::status(&domain, &servers, render::now()) + &render::nodes(&nodes),
    )
}

/// `status --watch`: the status, then again at every change the event stream reports (JSON: one
/// line per event). Reconnects when the stream ends; a lagged stream re-reads everything.
fn watch(api: &Api, json: bool) -> anyhow::Result<ExitCode> {
    use runtime::client::Next;
    let terminal = std::io::stdout().is_terminal();
    let mut domain = api.domain()?;
    let mut servers = api.servers()?;
    let show = |domain: &_, servers: &[_], why: &str| -> anyhow::Result<()> {
        let now = render::now();
        let text = render::status(domain, servers, now);
        if terminal {
            // Redraw in place.
            out(&format!(
                "\x1b[2J\x1b[H{text}\n(watching; {why}; Ctrl-C to stop)\n"
            ))?;
        } else {
            out(&format!("--- {} {why}\n{text}", render::stamp(now)))?;
        }
        Ok(())
    };
    if json {
        out(&format!(
            "{}\n",
            serde_json::json!({ "event": "status", "data": { "domain": domain, "servers": servers } })
        ))?;
    } else {
        show(&domain, &servers, "initial")?;
    }
    loop {
        let mut events = api.events(Duration::from_secs(30))?;
        loop {
            match events.next_event()? {
                Next::Idle => continue,
                Next::End => break,
                Next::Event(e) => {
                    let data: serde_json::Value =
                        serde_json::from_str(&e.data).unwrap_or(serde_json::Value::Null);
                    match e.kind.as_str() {
                        "server" => {
                            if let Ok(v) =
                                serde_json::from_value::<reconciler::wire::View>(data.clone())
                            {
                                match servers.iter_mut().find(|s| s.name == v.name) {
                                    Some(s) => *s = v,
                                    None => servers.push(v),
                                }
                            }
                        }
                        "domain" => {
                            if let Ok(d) = serde_json::from_value(data.clone()) {
                                domain = d;
                            }
                        }
                        "pinned" | "lagged" => {
                            domain = api.domain()?;
                            servers = api.servers()?;
                        }
                        _ => {}
                    }
                    if json {
                        out(&format!(
                            "{}\n",
                            serde_json::json!({ "event": e.kind, "data": data })
                        ))?;
                    } else if e.kind != "order" {
                        show(&domain, &servers, &format!("event: {}", e.kind))?;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        domain = api.domain()?;
        servers = api.servers()?;
    }
}

fn show(api: &Api, commit: &str, json: bool) -> anyhow::Result<ExitCode> {
    let history = api.history(1000)?;
    let lower = commit.to_ascii_lowercase();
    let records: Vec<_> = history
        .iter()
        .filter(|r| r.commit.starts_with(&lower))
        .collect();
    // A commit refused at the door never entered the repository: no plan to make.
    let plan = match api.plan(commit) {
        Ok(p) => Some(p),
        Err(runtime::admin::ApiError::Refused {
            status: 404 | 422, ..
        }) => None,
        Err(e) => return Err(e.into()),
    };
    if records.is_empty() && plan.is_none() {
        bail!("{commit}: no such commit in the Master's history or repository");
    }
    let human_plan = plan
        .as_ref()
        .and_then(|p| p["text"].as_str().map(str::to_owned));
    print(
        json,
        serde_json::json!({ "records": records, "plan": plan }),
        || render::show(commit, &records, human_plan.as_deref()),
    )
}

fn rollout(api: &Api, action: RolloutAction, r: Rollout, json: bool) -> anyhow::Result<ExitCode> {
    let req = RolloutRequest {
        action: Some(action),
        servers: r.servers,
        cluster: r.cluster,
        pending: r.pending,
        max_unavailable: Some(r.max_unavailable),
    };
    let mut doc = api.start_rollout(&req)?;
    if !json {
        out(&format!(
            "Rollout {}: {} {} server(s), at most {} at a time.\n",
            doc.id,
            action.as_str(),
            doc.steps.len(),
            doc.max_unavailable
        ))?;
    }
    let mut shown: Vec<String> = Vec::new();
    let progress =
        |doc: &reconciler::wire::Rollout, shown: &mut Vec<String>| -> anyhow::Result<()> {
            shown.resize(doc.steps.len(), String::new());
            for (i, (step, seen)) in doc.steps.iter().zip(shown.iter_mut()).enumerate() {
                let line = render::step(doc, i);
                if line != *seen && step.state != reconciler::wire::StepState::Waiting {
                    if !json {
                        out(&format!("  {line}\n"))?;
                    }
                    *seen = line;
                }
            }
            Ok(())
        };
    progress(&doc, &mut shown)?;
    if !r.no_wait {
        // The Master times each step out; this only guards against a Master that went away.
        let mut failures = 0;
        let mut last = Instant::now();
        while doc.state == RolloutState::Running {
            std::thread::sleep(Duration::from_millis(250));
            match api.rollout(&doc.id) {
                Ok(d) => {
                    doc = d;
                    failures = 0;
                    last = Instant::now();
                }
                Err(e) => {
                    failures += 1;
                    if failures >= 20 && last.elapsed() > Duration::from_secs(10) {
                        return Err(e).context(format!(
                            "lost the Master while following rollout {}; it may still be running: `steward admin status`",
                            doc.id
                        ));
                    }
                    continue;
                }
            }
            progress(&doc, &mut shown)?;
        }
    }
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
    } else {
        match doc.state {
            RolloutState::Succeeded => out(&format!("Rollout {} succeeded.\n", doc.id))?,
            RolloutState::Failed => out(&format!(
                "Rollout {} FAILED: {}\n",
                doc.id,
                doc.error.as_deref().unwrap_or("")
            ))?,
            RolloutState::Running => out(&format!(
                "Rollout {} is running; follow it with `steward admin status --watch`.\n",
                doc.id
            ))?,
        }
    }
    Ok(match doc.state {
        RolloutState::Failed => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

fn rollback(api: &Api, commit: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    let commit = match commit {
        Some(c) => c,
        None => {
            let history = api.history(1000)?;
            let last = history
                .iter()
                .find(|r| r.outcome == Outcome::Pinned)
                .context("the history has no pin to roll back from")?;
            last.previous.clone().with_context(|| {
                format!(
                    "{} is the first pin: there is nothing before it to roll back to",
                    short(&last.commit)
                )
            })?
        }
    };
    let reply = match api.pin(&commit) {
        Ok(r) => r,
        Err(runtime::admin::ApiError::Refused {
            status: 422,
            message,
            problems,
            ..
        }) => {
            let mut text = format!("error: {commit}: {message}\n");
            for p in &problems {
                text.push_str(&render::problem(p));
            }
            super::err(&text);
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let domain = api.domain()?;
    print(
        json,
        serde_json::json!({ "rollback": reply, "domain": domain }),
        || {
            if !reply.changed {
                return format!("{} is already pinned; nothing changed.\n", short(&commit));
            }
            let mut s = format!(
                "Rolled back to {}: pinned {}.\n",
                short(&commit),
                short(&reply.pinned.commit)
            );
            if domain.hold.is_some() {
                s.push_str("The domain is held: new upstream heads are recorded, not pinned, until `steward admin resume`.\n");
            } else if let Some(b) = &reply.branch_head {
                s.push_str(&format!(
                    "The branch now ends with the rollback commit {}: pull before your next push.\n",
                    short(b)
                ));
            }
            s
        },
    )
}
