use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use reconciler::git::{Oid, Repo, WorkTree};
use schema::tree::Tree;

use crate::Format;

#[derive(clap::Args)]
pub struct Args {
    /// The domain repository (default: the current directory).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// The running revision (default: the pinned commit when this repository knows it, see
    /// docs/ci.md; else the parent of `--to`, or HEAD with `--worktree`).
    #[arg(long)]
    from: Option<String>,
    /// The proposed revision.
    #[arg(long, default_value = "HEAD", conflicts_with = "worktree")]
    to: String,
    /// Compare against the files on disk.
    #[arg(long)]
    worktree: bool,
    #[arg(long, value_enum, default_value = "human")]
    format: Format,
    /// Also print the changed files: a unified diff of each text file, a line for each binary one.
    #[arg(long)]
    text: bool,
}

/// The revision a plan starts from, and why that one.
struct Base {
    rev: Option<String>,
    /// How the plan's header says it (`the pinned commit (refs/…)`).
    description: String,
}

/// Where the plan starts: `--from` when given; else what runs, the pinned commit, when this
/// repository knows it; else the parent of `--to` (HEAD with `--worktree`).
fn base(repo: &Repo, args: &Args) -> anyhow::Result<Base> {
    if let Some(from) = &args.from {
        return Ok(Base {
            rev: Some(from.clone()),
            description: format!("`{from}` (--from)"),
        });
    }
    if let Some((name, id)) = repo.pinned()? {
        return Ok(Base {
            rev: Some(id.to_hex()),
            description: format!("the pinned commit `{}` ({name})", id.short()),
        });
    }
    const UNKNOWN: &str =
        "this repository does not know the pinned commit; docs/ci.md says how to fetch it";
    if args.worktree {
        return Ok(Base {
            rev: Some("HEAD".into()),
            description: format!("HEAD ({UNKNOWN})"),
        });
    }
    let Some(to) = repo.resolve(&args.to)? else {
        bail!("`{}` does not name a commit in this repository", args.to);
    };
    Ok(match repo.parent(to)? {
        Some(p) => Base {
            rev: Some(p.to_string()),
            description: format!("the parent of `{}` ({UNKNOWN})", args.to),
        },
        None => Base {
            rev: None,
            description: format!("nothing: `{}` is a root commit", args.to),
        },
    })
}

/// Exit codes of `diff`: 0 no change, 2 changes, 1 error.
const CHANGES: u8 = 2;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let repo = super::open_repo(&args.repo)?;
    let base = base(&repo, &args)?;
    let resolve = |rev: &str| -> anyhow::Result<Oid> {
        match repo.resolve(rev)? {
            Some(id) => Ok(id),
            None => bail!("`{rev}` does not name a commit in this repository"),
        }
    };
    // `None`: the working tree.
    let to_id = match args.worktree {
        true => None,
        false => Some(resolve(&args.to)?),
    };
    let from_id = base.rev.as_deref().map(resolve).transpose()?;
    let to_tree: Box<dyn Tree> = match to_id {
        Some(id) => Box::new(repo.tree(id)?),
        None => super::worktree(&args.repo),
    };
    let from_tree: Option<Box<dyn Tree>> = match from_id {
        Some(id) => Some(Box::new(repo.tree(id)?)),
        None => None,
    };

    // The two revisions validate on two threads: a diff is two validations, and this halves
    // its wall time. Trees are not `Send`, so the second thread opens its own.
    let (to, from) = std::thread::scope(|s| {
        let from = from_id.map(|id| {
            let dir = &args.repo;
            s.spawn(move || -> anyhow::Result<schema::Validation> {
                let repo = super::open_repo(dir)?;
                Ok(schema::validate(&repo.tree(id)?))
            })
        });
        let to = schema::validate(to_tree.as_ref());
        let from = from.map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("validating the running revision panicked"))
        });
        (to, from)
    });
    let Some(to_loaded) = to.loaded else {
        super::err(&to.report.render_human(super::color(&std::io::stderr())));
        bail!(
            "the proposed revision `{}` is invalid; nothing would be applied",
            to.report.revision
        );
    };
    let from_loaded = match from {
        Some(v) => {
            let v = v??;
            match v.loaded {
                Some(l) => Some(l),
                None => {
                    super::err(&v.report.render_human(super::color(&std::io::stderr())));
                    bail!(
                        "the running revision `{}` is invalid, so there is no plan from it",
                        v.report.revision
                    );
                }
            }
        }
        None => None,
    };
    let mut plan = schema::plan::plan(from_loaded.as_ref(), &to_loaded);
    plan.base = Some(base.description);
    let mut out = match args.format {
        Format::Human => plan.render_human(),
        Format::Json => serde_json::to_string_pretty(&plan.to_json())? + "\n",
        Format::Markdown => plan.render_markdown(),
        Format::Github => {
            bail!("`--format github` is for `steward validate`; use human, json or markdown")
        }
    };
    if args.text {
        let mut all = secrets(from_loaded.as_ref());
        all.extend(secrets(Some(&to_loaded)));
        let from_files = match from_id {
            Some(id) => repo.tree(id)?.files()?,
            None => Files::new(),
        };
        let to_files = match to_id {
            Some(id) => repo.tree(id)?.files()?,
            None => WorkTree::new(&args.repo).files()?,
        };
        out.push_str(&text_diff(
            (from_tree.as_deref(), &from_files),
            (to_tree.as_ref(), &to_files),
            &all,
            args.format == Format::Markdown,
        )?);
    }
    super::out(&out)?;
    if !to.report.problems.is_empty() {
        // Warnings of the proposed revision still deserve a look.
        super::err(&to.report.render_short());
    }
    let unchanged = plan.is_empty();
    // A large domain takes measurable time to free, and the process is about to exit.
    std::mem::forget((plan, to_loaded, from_loaded));
    Ok(if unchanged {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(CHANGES)
    })
}

/// The files of a revision: path to object id.
type Files = BTreeMap<String, String>;

/// Every changed file of the domain repository: a unified diff for text (secrets masked), one
/// line for a binary file. Git object ids decide what changed, so unchanged files are not read.
fn text_diff(
    (from, from_files): (Option<&dyn Tree>, &Files),
    (to, to_files): (&dyn Tree, &Files),
    secrets: &[&str],
    markdown: bool,
) -> anyhow::Result<String> {
    let mut out = String::new();
    let paths: BTreeSet<&String> = from_files.keys().chain(to_files.keys()).collect();
    for path in paths {
        let (old_id, new_id) = (from_files.get(path), to_files.get(path));
        if old_id == new_id {
            continue;
        }
        let read = |t: Option<&dyn Tree>, id: Option<&String>| -> anyhow::Result<Vec<u8>> {
            Ok(match (t, id) {
                (Some(t), Some(_)) => t.read(path)?.unwrap_or_default(),
                _ => Vec::new(),
            })
        };
        let (old, new) = (read(from, old_id)?, read(Some(to), new_id)?);
        let (Some(old), Some(new)) = (text(&old), text(&new)) else {
            let what = match (old_id, new_id) {
                (None, _) => "added",
                (_, None) => "removed",
                _ => "changed",
            };
            let line = format!("Binary file {path} {what}\n");
            if markdown {
                out.push_str(&format!("\n`{path}`: binary file {what}\n"));
            } else {
                out.push('\n');
                out.push_str(&line);
            }
            continue;
        };
        let (old, new) = (mask_secrets(old, secrets), mask_secrets(new, secrets));
        let diff = similar::TextDiff::from_lines(&old, &new);
        let (a, b) = (
            if old_id.is_some() {
                format!("a/{path}")
            } else {
                "/dev/null".into()
            },
            if new_id.is_some() {
                format!("b/{path}")
            } else {
                "/dev/null".into()
            },
        );
        let unified = diff
            .unified_diff()
            .context_radius(3)
            .header(&a, &b)
            .to_string();
        if markdown {
            // A fence longer than any backtick run inside, so file content cannot close it.
            let fence = "`".repeat(3.max(longest_backtick_run(&unified) + 1));
            out.push_str(&format!("\n<details><summary><code>{path}</code></summary>\n\n{fence}diff\n{unified}{fence}\n</details>\n"));
        } else {
            out.push('\n');
            out.push_str(&unified);
        }
    }
    Ok(out)
}

/// The text of a file, `None` when it is binary: a NUL byte in its first 8000 bytes (as Git
/// decides) or not UTF-8.
fn text(bytes: &[u8]) -> Option<&str> {
    if bytes.iter().take(8000).any(|b| *b == 0) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

fn longest_backtick_run(s: &str) -> usize {
    s.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

/// Replaces every secret value (password hashes of either revision) wherever it appears, so a
/// text diff never shows one, whatever the TOML layout. Equal secrets mask equally, so only a
/// real change shows as a changed line.
fn mask_secrets(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        // The low 32 bits are plenty to tell a few secrets apart.
        let tag = schema::fasthash::fnv1a(s.as_bytes()) as u32;
        out = out.replace(s, &format!("(secret {tag:08x})"));
    }
    out
}

/// The secret values of a revision.
fn secrets(loaded: Option<&schema::Loaded>) -> Vec<&str> {
    loaded
        .map(|l| {
            l.domain
                .accounts
                .users
                .values()
                .map(|u| u.password.as_str())
                .collect()
        })
        .unwrap_or_default()
}
