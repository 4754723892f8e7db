//! `steward admin set|unset|deploy|undeploy`: the flags, the questions and the output;
//! `runtime::admin::edit` does the work. docs/admin.md.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use runtime::admin::edit::{self, Copy, Outcome, Request};
use runtime::admin::{Api, render};
use schema::edit::{Deploy, Op};

use super::super::{color, err, out};

#[derive(clap::Args)]
pub struct EditFlags {
    /// Commit and push without asking (for scripts).
    #[arg(long, short)]
    yes: bool,
    /// Print the plan; commit nothing.
    #[arg(long)]
    dry_run: bool,
    /// The commit's author, `Name <mail>` (default: the Master user).
    #[arg(long)]
    author: Option<String>,
    /// The commit message (default: what the change does).
    #[arg(long, short)]
    message: Option<String>,
}

#[derive(clap::Args)]
pub struct DeployArgs {
    /// The application's name (`[applications.NAME]`).
    app: String,
    /// Its content: a directory, an archive (`.tar`, `.tar.gz`, `.tgz`, `.zip`) or a file.
    #[arg(long)]
    source: PathBuf,
    /// Servers and clusters to deploy to (repeat or separate with commas); required for a new
    /// application, an existing one keeps its targets without it.
    #[arg(long = "target", value_delimiter = ',')]
    targets: Vec<String>,
    /// Where it is served (default for a new application: `/NAME`).
    #[arg(long)]
    context_path: Option<String>,
    /// `static` or `process` (default for a new application: `static`).
    #[arg(long)]
    kind: Option<String>,
    /// A process application's program, a path inside its content (`bin/api`).
    #[arg(long)]
    command: Option<String>,
}

/// What to edit, as the subcommand said it.
pub enum What {
    Set(Vec<String>),
    Unset(Vec<String>),
    Deploy(DeployArgs),
    Undeploy(String),
}

struct Terminal {
    json: bool,
    yes: bool,
}

impl edit::Ui for Terminal {
    fn plan(&mut self, plan: &schema::plan::Plan) {
        if !self.json {
            let _ = out(&plan.render_marked());
        }
    }

    fn invalid(&mut self, report: &schema::diag::Report) {
        if !self.json {
            err(&report.render_human(color(&std::io::stderr())));
        }
    }

    fn confirm(&mut self) -> bool {
        if self.yes {
            return true;
        }
        eprint!("\nCommit this change and push it to the Master? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line).is_err() {
            return false;
        }
        matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
    }

    fn rebasing(&mut self, onto: &str) {
        let text = format!(
            "\nThe branch moved (another push, now {onto}): making the same change on it.\n"
        );
        if self.json {
            err(&text);
        } else {
            let _ = out(&text);
        }
    }
}

pub fn run(api: &Api, what: What, flags: EditFlags, json: bool) -> anyhow::Result<ExitCode> {
    if !flags.yes && !flags.dry_run && !std::io::stdin().is_terminal() {
        bail!(
            "not changing the domain without a confirmation, and there is no terminal to ask on: pass --yes to confirm (or --dry-run to see the plan only)"
        );
    }
    let mut req = Request {
        dry_run: flags.dry_run,
        author: flags.author,
        message: flags.message,
        ..Request::default()
    };
    match what {
        What::Set(assignments) => {
            for a in &assignments {
                req.ops.push(Op::parse_assignment(a)?);
            }
        }
        What::Unset(paths) => {
            req.ops = paths.into_iter().map(|path| Op::Unset { path }).collect();
        }
        What::Deploy(d) => {
            let source = edit::deploy_path(&d.app, &d.source)?;
            // A single file goes into the application's directory, which is replaced whole.
            let replace =
                match d.source.is_file() && source.starts_with(&format!("apps/{}/", d.app)) {
                    true => format!("apps/{}", d.app),
                    false => source.clone(),
                };
            req.copies.push(Copy {
                from: d.source,
                to: source.clone(),
                replace: replace.clone(),
            });
            req.ops.push(Op::Deploy(Deploy {
                app: d.app,
                kind: d.kind,
                source: replace,
                targets: d.targets,
                context_path: d.context_path,
                command: d.command,
            }));
        }
        What::Undeploy(app) => req.ops.push(Op::Undeploy { app }),
    }
    let mut ui = Terminal {
        json,
        yes: flags.yes,
    };
    let outcome = edit::run(api, &req, &mut ui)?;
    let mut pinned = None;
    if let Outcome::Pushed { commit, .. } = &outcome {
        pinned = Some(api.domain()?.pinned.commit == *commit);
    }
    if json {
        let mut doc = serde_json::to_value(&outcome)?;
        if let Some(p) = pinned {
            doc["pinned"] = p.into();
        }
        out(&format!("{}\n", serde_json::to_string_pretty(&doc)?))?;
    } else {
        match &outcome {
            Outcome::Unchanged => out("Nothing to change: domain.toml already says so.\n")?,
            Outcome::Invalid { .. } => err(
                "error: this change would make the configuration invalid (above); nothing was committed\n",
            ),
            Outcome::DryRun { .. } => out("\nDry run: nothing was committed.\n")?,
            Outcome::Declined { .. } => out("Nothing was committed.\n")?,
            Outcome::Pushed {
                commit, attempts, ..
            } => {
                let short = commit.get(..7).unwrap_or(commit);
                let rebased = match attempts {
                    1 => String::new(),
                    n => format!(" (after {} rebase(s))", n - 1),
                };
                out(&match pinned {
                    Some(true) => format!("\nPushed {short}{rebased}; the Master pinned it.\n"),
                    _ => format!(
                        "\nPushed {short}{rebased}; the Master has not pinned it yet: `steward admin status`.\n"
                    ),
                })?;
            }
            Outcome::Rejected {
                commit,
                problems,
                remote,
            } => {
                let mut text = format!(
                    "error: the Master refused {}:\n",
                    commit.get(..7).unwrap_or(commit)
                );
                if problems.is_empty() {
                    text.push_str(remote);
                } else {
                    for p in problems {
                        text.push_str(&render::problem(p));
                    }
                }
                err(&text);
            }
        }
    }
    Ok(match outcome {
        Outcome::Unchanged | Outcome::DryRun { .. } | Outcome::Pushed { .. } => ExitCode::SUCCESS,
        Outcome::Invalid { .. } | Outcome::Declined { .. } | Outcome::Rejected { .. } => {
            ExitCode::from(1)
        }
    })
}
