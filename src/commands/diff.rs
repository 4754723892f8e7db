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

    let to = schema::validate(to_tree.as_ref());
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
    let from_loaded = match &from_tree {
        Some(t) => {
            let v = schema::validate(t.as_ref());
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
        out.push_str(&text_diff(
            from_tree.as_deref(),
            to_tree.as_ref(),
            args.format == Format::Markdown,
        )?);
    }
    print!("{out}");
    if !to.report.problems.is_empty() {
        // Warnings of the proposed revision still deserve a look.
        eprint!("{}", to.report.render_short());
    }
    Ok(if plan.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(CHANGES)
    })
}

/// Unified diff of the domain's configuration files; secrets are masked line by line.
fn text_diff(from: Option<&dyn Tree>, to: &dyn Tree, markdown: bool) -> anyhow::Result<String> {
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
        let (old, new) = (mask_secrets(&read(from)?), mask_secrets(&read(Some(to))?));
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

/// Replaces the value of every secret key (`password = …`) so a text diff never shows it.
fn mask_secrets(text: &str) -> String {
    let secret_keys: Vec<&str> = schema::settings::SETTINGS
        .iter()
        .filter(|s| s.secret)
        .filter_map(|s| s.path.rsplit('.').next())
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let key = line
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        let last = key.rsplit('.').next().unwrap_or(key);
        if line.contains('=') && secret_keys.contains(&last) {
            let indent = &line[..line.len() - line.trim_start().len()];
            let value = line.split_once('=').map(|(_, v)| v.trim()).unwrap_or("");
            // Equal secrets mask equally, so only a real change shows as a changed line.
            let tag = fnv(value);
            out.push_str(&format!("{indent}{} = \"(secret {tag:08x})\"\n", key));
        } else {
            out.push_str(line);
        }
    }
    out
}

fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x01000193)
    })
}
