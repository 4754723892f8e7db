//! The composite GitHub Action (`action.yml`): its structure, and its shell steps run for real
//! against a domain repository, the way the Actions runner runs them (`bash -e`, `GITHUB_PATH`,
//! `GITHUB_OUTPUT`, `GITHUB_STEP_SUMMARY`), with `cargo` and `gh` replaced by recording stubs:
//! the stub `cargo install` links the `steward` under test into the install root.
//!
//! Reading YAML takes python3 with PyYAML (the workspace has no YAML crate).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Repo, TempDir};

/// action.yml as JSON.
fn action() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("action.yml");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(&path)
        .output()
        .expect("python3 runs (with PyYAML) to read action.yml");
    assert!(
        out.status.success(),
        "action.yml does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn the_action_is_a_composite_of_bash_steps_fed_through_env() {
    let a = action();
    assert_eq!(a["runs"]["using"], "composite");
    for input in ["repository", "from", "to", "comment", "github-token"] {
        assert!(
            a["inputs"][input]["description"].is_string(),
            "input {input}"
        );
    }
    assert_eq!(
        a["outputs"]["changed"]["value"],
        "${{ steps.plan.outputs.changed }}"
    );
    let steps = a["runs"]["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["Install Steward", "Validate", "Plan", "Post the plan"]
    );
    for s in steps {
        assert_eq!(s["shell"], "bash", "{s}");
        // Values come through `env`: nothing is spliced into a script.
        let run = s["run"].as_str().expect("a run step");
        assert!(!run.contains("${{"), "expression in a script: {run}");
    }
    assert!(
        steps[0]["env"]["STEWARD_SRC"] == "${{ github.action_path }}",
        "installs from the action's own checkout"
    );
    assert_eq!(
        steps[3]["if"],
        "inputs.comment == 'true' && github.event.pull_request.number"
    );
}

/// `${{ expr }}` replaced from `ctx`; an expression the test does not know fails it.
fn expand(value: &str, ctx: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("closed expression") + start;
        let expr = rest[start + 3..end].trim();
        out.push_str(
            ctx.get(expr)
                .unwrap_or_else(|| panic!("unknown expression {expr}")),
        );
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

fn stub(dir: &Path, name: &str, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// What one run of the action left behind.
struct Ran {
    /// Exit code of each step run, in order (a failing step ends the run).
    codes: Vec<i32>,
    stderr: String,
    outputs: HashMap<String, String>,
    summary: String,
    /// The plan file's content.
    plan: String,
    cargo: String,
    gh: String,
}

/// Runs the action's steps in `repo` with the inputs `from` and `to`, as a runner would.
fn run_action(repo: &Repo, from: &str, to: &str) -> Ran {
    let tmp = TempDir::new("action");
    let (stubs, runner_temp) = (tmp.path().join("stubs"), tmp.path().join("runner"));
    std::fs::create_dir_all(&stubs).unwrap();
    std::fs::create_dir_all(&runner_temp).unwrap();
    let (cargo_log, gh_log) = (tmp.path().join("cargo.log"), tmp.path().join("gh.log"));
    stub(
        &stubs,
        "cargo",
        "echo \"$@\" >> \"$CARGO_LOG\"\n\
         while [ $# -gt 0 ]; do [ \"$1\" = --root ] && root=$2; shift; done\n\
         mkdir -p \"$root/bin\" && ln -sf \"$STEWARD_BIN\" \"$root/bin/steward\"\n",
    );
    // No earlier comment to edit: `--edit-last` fails, and the action posts a new one.
    stub(
        &stubs,
        "gh",
        "echo \"$@\" >> \"$GH_LOG\"\n\
         for a in \"$@\"; do [ \"$a\" = --edit-last ] && exit 1; done\n\
         while [ $# -gt 0 ]; do [ \"$1\" = --body-file ] && cat \"$2\" >> \"$GH_LOG\"; shift; done\n",
    );
    let (github_path, summary) = (tmp.path().join("path"), tmp.path().join("summary"));
    std::fs::write(&github_path, "").unwrap();
    let workspace = repo.path().parent().unwrap().to_owned();
    let repository = repo
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let mut ctx: HashMap<String, String> = [
        ("github.action_path", env!("CARGO_MANIFEST_DIR").to_owned()),
        ("runner.temp", runner_temp.to_str().unwrap().to_owned()),
        ("inputs.repository", repository),
        ("inputs.from", from.to_owned()),
        ("inputs.to", to.to_owned()),
        ("inputs.comment", "true".to_owned()),
        ("inputs.github-token", "t0ken".to_owned()),
        ("github.repository", "example/domain1".to_owned()),
        ("github.event.pull_request.number", "7".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut ran = Ran {
        codes: Vec::new(),
        stderr: String::new(),
        outputs: HashMap::new(),
        summary: String::new(),
        plan: String::new(),
        cargo: String::new(),
        gh: String::new(),
    };
    let base_path = format!("{}:{}", stubs.display(), std::env::var("PATH").unwrap());
    for step in action()["runs"]["steps"].as_array().unwrap() {
        let output = tmp.path().join("output");
        std::fs::write(&output, "").unwrap();
        // Earlier steps' GITHUB_PATH lines come first, as on the runner.
        let added: Vec<String> = std::fs::read_to_string(&github_path)
            .unwrap()
            .lines()
            .rev()
            .map(str::to_owned)
            .collect();
        let path = added
            .iter()
            .cloned()
            .chain([base_path.clone()])
            .collect::<Vec<_>>()
            .join(":");
        let dir: PathBuf = match step["working-directory"].as_str() {
            Some(d) => workspace.join(expand(d, &ctx)),
            None => workspace.clone(),
        };
        let mut cmd = Command::new("bash");
        cmd.args(["--noprofile", "--norc", "-eo", "pipefail", "-c"])
            .arg(step["run"].as_str().unwrap())
            .current_dir(&dir)
            .env("PATH", path)
            .env("GITHUB_PATH", &github_path)
            .env("GITHUB_OUTPUT", &output)
            .env("GITHUB_STEP_SUMMARY", &summary)
            .env("RUNNER_TEMP", &runner_temp)
            .env("CARGO_LOG", &cargo_log)
            .env("GH_LOG", &gh_log)
            .env("STEWARD_BIN", env!("CARGO_BIN_EXE_steward"))
            .env("NO_COLOR", "1");
        if let Some(env) = step["env"].as_object() {
            for (k, v) in env {
                cmd.env(k, expand(v.as_str().unwrap(), &ctx));
            }
        }
        let out = cmd.output().unwrap();
        ran.stderr.push_str(&String::from_utf8_lossy(&out.stderr));
        ran.stderr.push_str(&String::from_utf8_lossy(&out.stdout));
        ran.codes.push(out.status.code().unwrap_or(-1));
        if let Some(id) = step["id"].as_str() {
            for line in std::fs::read_to_string(&output).unwrap().lines() {
                let (k, v) = line.split_once('=').expect("key=value");
                ran.outputs.insert(k.to_owned(), v.to_owned());
                ctx.insert(format!("steps.{id}.outputs.{k}"), v.to_owned());
            }
        }
        if !out.status.success() {
            break;
        }
    }
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    ran.summary = read(&summary);
    ran.plan = ran
        .outputs
        .get("plan")
        .map(|p| read(Path::new(p)))
        .unwrap_or_default();
    ran.cargo = read(&cargo_log);
    ran.gh = read(&gh_log);
    ran
}

#[test]
fn the_action_installs_validates_plans_and_comments() {
    let repo = Repo::example("action-ok");
    let from = repo.git(&["rev-parse", "HEAD"]).stdout.trim().to_owned();
    repo.set(
        "domain.toml",
        "servers.server2.web.listeners.http.port",
        8090,
    );
    let to = repo.commit("server2 moves");
    let ran = run_action(&repo, &from, &to);
    assert_eq!(ran.codes, [0, 0, 0, 0], "{}", ran.stderr);
    assert_eq!(
        ran.cargo.trim(),
        format!(
            "install --locked --quiet --path {} --root {}",
            env!("CARGO_MANIFEST_DIR"),
            Path::new(&ran.outputs["plan"])
                .parent()
                .unwrap()
                .join("steward")
                .display()
        )
    );
    assert_eq!(ran.outputs["changed"], "true");
    let plan = &ran.plan;
    assert!(
        plan.contains(&format!("`{}` → `{}`", &from[..7], &to[..7]))
            && plan.contains("#### Server `server2` — restart required"),
        "{plan}"
    );
    assert!(ran.summary.contains(plan.as_str()), "{}", ran.summary);
    // `--edit-last` first (refused by the stub: no earlier comment), then a new comment.
    let calls: Vec<&str> = ran
        .gh
        .lines()
        .filter(|l| l.starts_with("pr comment"))
        .collect();
    assert_eq!(
        calls,
        [
            format!(
                "pr comment 7 --edit-last --body-file {}",
                ran.outputs["plan"]
            ),
            format!("pr comment 7 --body-file {}", ran.outputs["plan"]),
        ],
        "{}",
        ran.gh
    );
    assert!(ran.gh.contains("### Steward plan"), "{}", ran.gh);

    // No change: the plan says so and `changed` is false.
    let ran = run_action(&repo, &to, &to);
    assert_eq!(ran.codes, [0, 0, 0, 0], "{}", ran.stderr);
    assert_eq!(ran.outputs["changed"], "false");
    assert!(ran.summary.contains("**No changes.**"), "{}", ran.summary);
}

#[test]
fn an_invalid_proposal_fails_the_validate_step_with_annotations() {
    let repo = Repo::example("action-invalid");
    let from = repo.git(&["rev-parse", "HEAD"]).stdout.trim().to_owned();
    repo.edit("domain.toml", "port = 8089", "prot = 8089");
    let to = repo.commit("a typo");
    let ran = run_action(&repo, &from, &to);
    assert_eq!(ran.codes, [0, 1], "{}", ran.stderr);
    assert!(
        ran.stderr.contains("::error file=domain.toml,line="),
        "{}",
        ran.stderr
    );
    assert!(ran.gh.is_empty(), "nothing is posted: {}", ran.gh);
}
