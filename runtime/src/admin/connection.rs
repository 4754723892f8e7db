//! Where `steward admin` finds its Master and its operator's credentials.
//!
//! The Master: `--master URL`, else `STEWARD_MASTER`, else `http://127.0.0.1:9736` (the example
//! domain's). Credentials never come from the command line, where `ps` and shell history would
//! show them: `STEWARD_USER` and `STEWARD_PASSWORD` from the environment, else the operator's
//! credentials file, `credentials` in the user's config directory
//! (`~/.config/steward/credentials` on Linux, named by the `directories` crate;
//! `STEWARD_CREDENTIALS` names another), in the format of the servers' credentials file
//! (`STEWARD_USER=…`, `STEWARD_PASSWORD=…`) and refused unless mode 0600.

use std::path::PathBuf;
use std::time::Duration;

use crate::client::{Client, ClientError};
use crate::launcher::credentials::{self, CredentialsError};

/// The Master of the example domain, as `steward up` prints it.
pub const DEFAULT_MASTER: &str = "http://127.0.0.1:9736";

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(
        "no credentials for the Master: set STEWARD_USER and STEWARD_PASSWORD, or write them to {} (mode 0600: `STEWARD_USER=…` and `STEWARD_PASSWORD=…` lines)",
        .file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "a credentials file named by STEWARD_CREDENTIALS".into())
    )]
    NoCredentials { file: Option<PathBuf> },
    #[error("{given} is set but not {missing}; set both, or neither to use the credentials file")]
    Incomplete {
        given: &'static str,
        missing: &'static str,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A Master and the operator's credentials for it.
#[derive(Clone)]
pub struct Connection {
    /// `http://HOST:PORT` or `https://HOST:PORT` (a bare `HOST:PORT` is plain HTTP).
    pub master: String,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Connection {
    // The password is never printed, not even in a debug dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("master", &self.master)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The Master (`--master`, else `STEWARD_MASTER`, else [`DEFAULT_MASTER`]) with the
    /// operator's credentials (the environment, else the credentials file).
    pub fn resolve(master: Option<&str>) -> Result<Connection, ConnectionError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let master = master
            .map(str::to_owned)
            .or_else(|| env("STEWARD_MASTER"))
            .unwrap_or_else(|| DEFAULT_MASTER.to_owned());
        let master = if master.contains("://") {
            master.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", master.trim_end_matches('/'))
        };
        let (user, password) = match (env("STEWARD_USER"), env("STEWARD_PASSWORD")) {
            (Some(u), Some(p)) => (u, p),
            (Some(_), None) => {
                return Err(ConnectionError::Incomplete {
                    given: "STEWARD_USER",
                    missing: "STEWARD_PASSWORD",
                });
            }
            (None, Some(_)) => {
                return Err(ConnectionError::Incomplete {
                    given: "STEWARD_PASSWORD",
                    missing: "STEWARD_USER",
                });
            }
            (None, None) => {
                let file = credentials_file();
                let found = match &file {
                    Some(f) => credentials::read_at(f.clone())?,
                    None => None,
                };
                found.ok_or(ConnectionError::NoCredentials { file })?
            }
        };
        Ok(Connection {
            master,
            user,
            password,
        })
    }

    /// A client for the Master with these credentials; `timeout` bounds each answer.
    pub fn client(&self, timeout: Duration) -> Result<Client, ConnectionError> {
        Ok(Client::new(
            &self.master,
            Some((&self.user, &self.password)),
            Duration::from_secs(5),
            timeout,
        )?)
    }
}

/// `STEWARD_CREDENTIALS`, else `credentials` in the user's config directory.
pub fn credentials_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STEWARD_CREDENTIALS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    directories::ProjectDirs::from("", "", "steward").map(|d| d.config_dir().join("credentials"))
}
