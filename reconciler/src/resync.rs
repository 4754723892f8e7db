//! What moving a Managed Server to a pinned configuration means, decided without touching
//! anything: which settings apply live, which wait for a restart, and what happens to each
//! application (deploy, keep, leave to the background retry, undeploy). The server's control step
//! ([`crate::control`]) asks this, and `runtime::serving` carries it out.

use std::collections::{BTreeMap, BTreeSet};

use schema::Loaded;
use schema::model::{Application, RestartPolicy};
use schema::plan::{AppAction, Change, plan};
use schema::settings::Effect;

/// What the server serves now, as far as the decision needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    /// Applications the web engine serves (with an image, possibly an older one).
    pub serving: BTreeSet<String>,
    /// Applications whose deployment from the running commit failed: the background retry's.
    pub retrying: BTreeSet<String>,
    /// Every application that failed (those above, and processes that are not running).
    pub failed: BTreeSet<String>,
}

/// What happens to one application the target configuration runs on this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppStep {
    /// Deployed now: the plan deploys or redeploys it, or it is not served yet.
    Deploy,
    /// Unchanged and served: the same image, with the target's live settings.
    Keep,
    /// Failed before and unchanged by this pin: still failed, left to the background retry (an
    /// older image keeps serving if there is one).
    Retry,
}

/// The applications' part of a resync.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Apps {
    /// The applications the target runs on this server.
    pub want: BTreeMap<String, Application>,
    /// What happens to each of `want`.
    pub steps: BTreeMap<String, AppStep>,
    /// Served but no longer wanted: undeployed once the new configuration serves (until then
    /// requests may still read their images).
    pub undeploy: BTreeSet<String>,
    /// Neither served nor wanted, but failed: what their attempt left is removed.
    pub clean: BTreeSet<String>,
}

impl Apps {
    /// The applications to deploy now.
    pub fn to_deploy(&self) -> BTreeMap<String, Application> {
        self.want
            .iter()
            .filter(|(n, _)| self.steps.get(*n) == Some(&AppStep::Deploy))
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect()
    }
}

/// What moving to a pinned configuration means for this server.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Settings to apply in place now.
    pub live: Vec<Change>,
    /// Settings that differ from what the process booted with and need a restart; computed from
    /// the boot configuration every time, never remembered, so reverting a change clears it.
    pub pending_restart: Vec<String>,
    pub policy: RestartPolicy,
    pub apps: Apps,
}

/// The applications `loaded` deploys to server `me`, by name.
pub fn apps_of(loaded: &Loaded, me: &str) -> BTreeMap<String, Application> {
    let names = loaded.domain.deployments();
    names
        .get(me)
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let app = loaded.domain.config.applications.get(*n)?;
            Some(((*n).to_owned(), app.clone()))
        })
        .collect()
}

/// The pure decision: `boot` is what the process started with (restart-class settings stay as
/// they were then), `running` what it applies now, `pinned` the target, `served` what serves
/// now. `None` when the pinned domain no longer defines server `me`.
pub fn decide(
    boot: &Loaded,
    running: &Loaded,
    pinned: &Loaded,
    me: &str,
    served: &Served,
) -> Option<Decision> {
    let target = pinned.domain.config.servers.get(me)?;
    let step = plan(Some(running), pinned);
    let mine = step.server(me);
    let live = mine
        .map(|s| {
            s.changes
                .iter()
                .filter(|c| c.effect == Effect::Live)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let pending_restart = plan(Some(boot), pinned)
        .server(me)
        .map(|s| s.pending_restart.clone())
        .unwrap_or_default();
    let actions: BTreeMap<&str, AppAction> = mine
        .map(|s| {
            s.applications
                .iter()
                .map(|a| (a.name.as_str(), a.action))
                .collect()
        })
        .unwrap_or_default();
    Some(Decision {
        live,
        pending_restart,
        policy: target.restart_policy,
        apps: apps(apps_of(pinned, me), &actions, served),
    })
}

/// Each wanted application's step, from the plan's `actions` and what serves now.
fn apps(
    want: BTreeMap<String, Application>,
    actions: &BTreeMap<&str, AppAction>,
    served: &Served,
) -> Apps {
    let steps = want
        .keys()
        .map(|n| {
            let planned = matches!(
                actions.get(n.as_str()),
                Some(AppAction::Deploy | AppAction::Redeploy)
            );
            let step = if planned || (!served.serving.contains(n) && !served.retrying.contains(n)) {
                AppStep::Deploy
            } else if served.retrying.contains(n) {
                AppStep::Retry
            } else {
                AppStep::Keep
            };
            (n.clone(), step)
        })
        .collect();
    let undeploy = served
        .serving
        .iter()
        .filter(|n| !want.contains_key(*n))
        .cloned()
        .collect();
    let clean = served
        .failed
        .iter()
        .filter(|n| !want.contains_key(*n) && !served.serving.contains(*n))
        .cloned()
        .collect();
    Apps {
        want,
        steps,
        undeploy,
        clean,
    }
}

/// Pending restarts from the plan (`decided`) and from the engine (`engine`), each once. The
/// engine names a whole listener where it was added or removed (`…listeners.https`), the plan
/// each of its settings (`…listeners.https.port`): a path already covered by the plan is not
/// listed again.
pub fn merge_restart(decided: &[String], engine: &[String]) -> Vec<String> {
    let mut out: BTreeSet<String> = decided.iter().cloned().collect();
    for p in engine {
        let prefix = format!("{p}.");
        if !decided.iter().any(|d| d == p || d.starts_with(&prefix)) {
            out.insert(p.clone());
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use schema::settings::FileKind;
    use schema::tree::MemTree;

    pub(crate) const DOMAIN: &str = include_str!("../../examples/domain1/domain.toml");
    const ACCOUNTS: &str = include_str!("../../examples/domain1/security/accounts.toml");
    const POLICIES: &str = include_str!("../../examples/domain1/security/policies.toml");

    pub(crate) fn load(domain: &str) -> Loaded {
        load_with(domain, "x")
    }

    /// `domain` with the shop's page `shop`.
    fn load_with(domain: &str, shop: &str) -> Loaded {
        let tree = MemTree::new("t")
            .with(FileKind::Domain.path(), domain)
            .with(FileKind::Accounts.path(), ACCOUNTS)
            .with(FileKind::Policies.path(), POLICIES)
            .with("apps/shop/index.html", shop)
            .with("apps/api/bin/api", "x")
            .with("libs/common/README.txt", "x");
        schema::validate(&tree).loaded.expect("valid")
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    /// What `me` serves when every application of `loaded` deployed.
    pub(crate) fn serving_all(loaded: &Loaded, me: &str) -> Served {
        Served {
            serving: apps_of(loaded, me).into_keys().collect(),
            ..Served::default()
        }
    }

    #[test]
    fn live_changes_apply_and_restart_changes_pend() {
        let boot = load(DOMAIN);
        let pinned = load(
            &DOMAIN
                .replace("level = \"info\"\nrotation", "level = \"debug\"\nrotation")
                .replace("port = 8088", "port = 8090"),
        );
        let served = serving_all(&boot, "server1");
        let d = decide(&boot, &boot, &pinned, "server1", &served).expect("still defined");
        assert_eq!(d.live.len(), 1);
        assert_eq!(d.live[0].path, "servers.server1.logging.level");
        assert_eq!(
            d.pending_restart,
            ["servers.server1.web.listeners.http.port"]
        );
        assert_eq!(d.policy, RestartPolicy::Rolling);
        // Nothing about the applications changed: each keeps its image.
        assert!(d.apps.steps.values().all(|s| *s == AppStep::Keep));
        assert!(d.apps.to_deploy().is_empty());
    }

    #[test]
    fn pending_restart_is_derived_not_remembered() {
        let boot = load(DOMAIN);
        let changed = load(&DOMAIN.replace("port = 8088", "port = 8090"));
        // Applied the change (pending), then the change is reverted: nothing pends any more.
        let d = decide(&boot, &changed, &boot, "server1", &Served::default()).expect("defined");
        assert!(d.pending_restart.is_empty());
        assert!(d.live.is_empty());
    }

    #[test]
    fn a_removed_server_is_reported() {
        let boot = load(DOMAIN);
        let text = DOMAIN
            .replace("servers.server3", "servers.server9")
            .replace("targets = [\"server3\"]", "targets = [\"server9\"]");
        let without = load(&text);
        assert!(decide(&boot, &boot, &without, "server3", &Served::default()).is_none());
    }

    #[test]
    fn applications_are_deployed_kept_retried_and_undeployed() {
        // server1 runs both applications.
        let two = DOMAIN.replace("targets = [\"server3\"]", "targets = [\"server1\"]");
        let running = load(&two);
        let me = "server1";
        let steps = |target: &Loaded, served: &Served| {
            decide(&running, &running, target, me, served)
                .expect("defined")
                .apps
        };
        // Nothing served yet: everything deploys.
        let all = steps(&running, &Served::default());
        assert_eq!(all.to_deploy().keys().collect::<Vec<_>>(), ["api", "shop"]);
        // `shop` serves; `api` failed before and waits for its retry, unchanged by this pin; an
        // old application still serves and is no longer wanted; another failed and left.
        let served = Served {
            serving: set(&["shop", "old"]),
            retrying: set(&["api"]),
            failed: set(&["api", "gone"]),
        };
        let apps = steps(&running, &served);
        assert_eq!(apps.steps["shop"], AppStep::Keep);
        assert_eq!(apps.steps["api"], AppStep::Retry);
        assert!(apps.to_deploy().is_empty());
        assert_eq!(apps.undeploy, set(&["old"]));
        assert_eq!(apps.clean, set(&["gone"]));
        // New content is redeployed, served or not.
        let changed = load_with(&two, "y");
        assert_eq!(steps(&changed, &served).steps["shop"], AppStep::Deploy);
        // The retried application, unchanged by that pin, stays the background retry's.
        let apps = steps(&changed, &served);
        assert_eq!(apps.steps["api"], AppStep::Retry);
    }

    #[test]
    fn restart_paths_are_listed_once() {
        let decided = vec![
            "servers.s.web.listeners.http.port".to_owned(),
            "servers.s.web.listeners.https.address".to_owned(),
            "servers.s.web.listeners.https.port".to_owned(),
        ];
        let engine = vec![
            "servers.s.web.listeners.http.port".to_owned(),
            "servers.s.web.listeners.https".to_owned(),
            "servers.s.web.listeners.old".to_owned(),
        ];
        assert_eq!(
            merge_restart(&decided, &engine),
            [
                "servers.s.web.listeners.http.port",
                "servers.s.web.listeners.https.address",
                "servers.s.web.listeners.https.port",
                "servers.s.web.listeners.old",
            ]
        );
        // A prefix match must be a whole path component.
        assert_eq!(
            merge_restart(
                &["servers.s.web.listeners.https2.port".to_owned()],
                &["servers.s.web.listeners.https".to_owned()]
            )
            .len(),
            2
        );
    }
}
