use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use schema::tree::Tree;

use crate::Format;

#[derive(clap::Args)]
pub struct Args {
    /// The domain repository (default: the current directory).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// The running revision (default: the parent of `--to`, or HEAD with `--worktree`).
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
    /// Also print the unified diff of the changed files.
    #[arg(long)]
    text: bool,
}

/// Exit codes of `diff`: 0 no change, 2 changes, 1 error.
const CHANGES: u8 = 2;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let repo = super::open_repo(&args.repo)?;
    let (to_tree, from_rev): (Box<dyn Tree>, Option<String>) = if args.worktree {
        (
            super::worktree(&args.repo),
            Some(args.from.clone().unwrap_or_else(|| "HEAD".into())),
        )
    } else {
        let Some(to_id) = repo.resolve(&args.to)? else {
            bail!("`{}` does not name a commit in this repository", args.to);
        };
        let from = match &args.from {
            Some(f) => Some(f.clone()),
            None => repo.parent(to_id)?.map(|p| p.to_string()),
        };
        (Box::new(repo.tree(to_id)?), from)
    };
    let from_tree = match &from_rev {
        Some(rev) => Some(super::tree_at(&repo, rev)?),
        None => None,
    };

    // The two revisions validate on two threads: a diff is two validations, and this halves
    // its wall time. Trees are not `Send`, so the second thread opens its own.
    let from_id = match (&from_rev, &from_tree) {
        (Some(rev), Some(_)) => repo.resolve(rev)?.map(|id| id.to_string()),
        _ => None,
    };
    let (to, from) = std::thread::scope(|s| {
        let from = from_id.as_deref().map(|id| {
            let dir = &args.repo;
            s.spawn(move || -> anyhow::Result<schema::Validation> {
                let repo = super::open_repo(dir)?;
                Ok(schema::validate(super::tree_at(&repo, id)?.as_ref()))
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
        eprint!(
            "{}",
            to.report.render_human(super::color(&std::io::stderr()))
        );
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
                    eprint!(
                        "{}",
                        v.report.render_human(super::color(&std::io::stderr()))
                    );
                    bail!(
                        "the running revision `{}` is invalid, so there is no plan from it",
                        v.report.revision
                    );
                }
            }
        }
        None => None,
    };
    let plan = schema::plan::plan(from_loaded.as_ref(), &to_loaded);
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
        out.push_str(&text_diff(
            from_tree.as_deref(),
            to_tree.as_ref(),
            &all,
            args.format == Format::Markdown,
        )?);
    }
    print!("{out}");
    if !to.report.problems.is_empty() {
        // Warnings of the proposed revision still deserve a look.
        eprint!("{}", to.report.render_short());
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

/// Unified diff of the domain's configuration files, secrets masked.
fn text_diff(
    from: Option<&dyn Tree>,
    to: &dyn Tree,
    secrets: &[&str],
    markdown: bool,
) -> anyhow::Result<String> {
    let mut out = String::new();
    for kind in schema::settings::FileKind::ALL {
        let path = kind.path();
        let read = |t: Option<&dyn Tree>| -> anyhow::Result<String> {
            Ok(match t {
                Some(t) => t
                    .read(path)?
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default(),
                None => String::new(),
            })
        };
        let (old, new) = (
            mask_secrets(&read(from)?, secrets),
            mask_secrets(&read(Some(to))?, secrets),
        );
        if old == new {
            continue;
        }
        let diff = similar::TextDiff::from_lines(&old, &new);
        let unified = diff
            .unified_diff()
            .context_radius(3)
            .header(&format!("a/{path}"), &format!("b/{path}"))
            .to_string();
        if markdown {
            out.push_str(&format!("\n<details><summary><code>{path}</code></summary>\n\n```diff\n{unified}```\n</details>\n"));
        } else {
            out.push('\n');
            out.push_str(&unified);
        }
    }
    Ok(out)
}

/// Replaces every secret value (password hashes of either revision) wherever it appears, so a
/// text diff never shows one, whatever the TOML layout. Equal secrets mask equally, so only a
/// real change shows as a changed line.
fn mask_secrets(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s, &format!("(secret {:08x})", fnv(s)));
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

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x01000193)
    })
}
