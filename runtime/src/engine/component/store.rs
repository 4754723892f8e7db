//! The persistent timer store: `SERVER_HOME/.workspace/ejbtimerdb/timers.redb`, one redb table
//! of [`Record`]s keyed by application and timer id. redb commits are crash-safe (copy-on-write
//! pages, fsync at commit): a timer is acknowledged to the application only after the
//! transaction holding it committed, and a kill -9 leaves the last committed state.

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use schema::model::Misfire;

/// `app \0 id` → JSON of a [`Record`].
const TIMERS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("timers");

/// The file inside `.workspace/ejbtimerdb`.
pub const FILE: &str = "timers.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("timer store {}: {error}", path.display())]
    Db { path: PathBuf, error: redb::Error },
    #[error("timer store {}: record {key:?} is unreadable: {error}", path.display())]
    Record {
        path: PathBuf,
        key: String,
        error: serde_json::Error,
    },
}

/// How a timer fires, as stored and as the local API takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Spec {
    Schedule { schedule: String, time_zone: String },
    Interval { every_ms: u64 },
    At { at: String },
}

/// Where a firing ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The firing's scheduled instant (RFC 3339).
    pub scheduled: String,
    /// When the last attempt ended.
    pub at: String,
    /// `ok` or `failed`.
    pub result: String,
    /// Attempts made: 1 without retries.
    pub attempts: u32,
    /// The component's status code, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One timer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub app: String,
    pub id: String,
    /// The callback goes to `/timers/<name>`.
    pub name: String,
    pub info: serde_json::Value,
    /// Declared in the domain (`[applications.X.timers.NAME]`, id = name), or created by the
    /// application through the local API.
    pub declared: bool,
    pub spec: Spec,
    pub persistent: bool,
    pub misfire: Misfire,
    /// The application's `source` when the timer was stored: a timer whose application is gone
    /// while one with the same source runs is taken as renamed (orphaned), not undeployed.
    pub source: String,
    /// Creation, milliseconds since the epoch: intervals count from it.
    pub anchor_ms: i64,
    /// The next regular firing, milliseconds since the epoch; `None` when there is none.
    pub next_ms: Option<i64>,
    pub fired: u64,
    pub failed: u64,
    pub last: Option<Outcome>,
    /// Firings handed to the component whose outcome is not recorded yet: written before they
    /// are sent, so that a firing in flight at a crash is sent again (at least once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unfinished: Vec<Unfinished>,
}

/// A firing sent (or about to be) without a recorded outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unfinished {
    /// The firing's scheduled instant, ms since the epoch.
    pub scheduled_ms: i64,
    /// The attempt sent last (0: the first).
    pub attempt: u32,
}

impl Record {
    pub fn key(&self) -> String {
        key(&self.app, &self.id)
    }
}

pub fn key(app: &str, id: &str) -> String {
    format!("{app}\0{id}")
}

#[derive(Debug)]
pub struct Store {
    db: redb::Database,
    path: PathBuf,
}

impl Store {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(FILE);
        let err = |error: redb::Error| StoreError::Db {
            path: path.clone(),
            error,
        };
        let db = redb::Database::create(&path).map_err(|e| err(e.into()))?;
        // The table exists from the start, so reads never meet a missing one.
        let txn = db.begin_write().map_err(|e| err(e.into()))?;
        txn.open_table(TIMERS).map_err(|e| err(e.into()))?;
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(Store { db, path })
    }

    fn err(&self, error: impl Into<redb::Error>) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            error: error.into(),
        }
    }

    /// Every stored timer.
    pub fn load(&self) -> Result<Vec<Record>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(TIMERS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let record = serde_json::from_slice(v.value()).map_err(|error| StoreError::Record {
                path: self.path.clone(),
                key: k.value().replace('\0', "/"),
                error,
            })?;
            out.push(record);
        }
        Ok(out)
    }

    /// Writes `puts` and removes `removes` (keys of [`key`]) in one committed transaction.
    pub fn write<'a>(
        &self,
        puts: impl IntoIterator<Item = &'a Record>,
        removes: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(TIMERS).map_err(|e| self.err(e))?;
            for r in puts {
                // Serializing plain data cannot fail.
                let bytes = serde_json::to_vec(r).unwrap_or_default();
                table
                    .insert(r.key().as_str(), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            for k in removes {
                table.remove(k).map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Record {
        Record {
            app: "billing".into(),
            id: id.into(),
            name: "tick".into(),
            info: serde_json::json!({"order": 7}),
            declared: false,
            spec: Spec::Interval { every_ms: 1000 },
            persistent: true,
            misfire: Misfire::FireAll,
            source: "apps/billing".into(),
            anchor_ms: 1,
            next_ms: Some(1001),
            fired: 0,
            failed: 0,
            last: None,
            unfinished: Vec::new(),
        }
    }

    #[test]
    fn records_survive_reopening_and_removal_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            let (a, b) = (record("a"), record("b"));
            s.write([&a, &b], []).unwrap();
            s.write([], [key("billing", "a").as_str()]).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let all = s.load().unwrap();
        assert_eq!(all, vec![record("b")]);
    }
}
