//! The one fetch: bringing refs of a remote (the Master over HTTP(S), a Git URL, a plain path)
//! into a local bare repository with gix. The launchers' cache ([`crate::cache`]) and the
//! Master's mirror mode both fetch through [`fetch`], so both reach remotes, log in, trust
//! certificates and fail the same way.

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use gix::bstr::ByteSlice;

use super::{Oid, chain};

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The remote could not be reached at all (refused, no answer, unknown host, no such
    /// repository, not a Git URL).
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: Unreachable },
    /// The remote answered but the fetch failed (authentication, TLS, protocol).
    #[error("fetching from {url} failed: {cause}")]
    Fetch { url: String, cause: String },
    #[error("{url} has no branch {branch}")]
    NoBranch { url: String, branch: String },
    #[error("{git_dir}: {cause}")]
    Local {
        git_dir: std::path::PathBuf,
        cause: String,
    },
}

/// Why a remote could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("not a Git URL: {0}")]
    NotAUrl(String),
    #[error("no such repository")]
    NoSuchRepository,
    #[error("the URL names no host")]
    NoHost,
    #[error("cannot resolve {host}: {error}")]
    Resolve { host: String, error: std::io::Error },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("connection refused by {addr} (nothing listens there)")]
    Refused { addr: std::net::SocketAddr },
    #[error("no answer from {addr} within {} ms", within.as_millis())]
    NoAnswer {
        addr: std::net::SocketAddr,
        within: Duration,
    },
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// Where a remote is and how to log in to it.
#[derive(Clone)]
pub struct Remote {
    /// A Git URL: `http://host:port/path`, `file:///path`, or a plain path. Credentials in an
    /// http(s) URL are used when `user` and `password` are not given.
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// How long to wait for a TCP connection before calling the remote unreachable.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("Remote")
            .field("url", &redact(&self.url))
            .field("user", &self.user)
            .finish()
    }
}

/// How much history a fetch brings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Everything the remote's refs reach (the Master's own repository keeps whole history).
    Full,
    /// Into an empty repository only the tips (depth 1): booting needs one commit's tree, not
    /// the domain's history. Later fetches negotiate from those tips and bring only new objects;
    /// an older commit (a rolled-back pin) arrives with its history on demand.
    TipsWhenEmpty,
}

/// What a fetch moved: zero when the repository already had everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    pub objects: u32,
    /// Size of the received pack.
    pub bytes: u64,
}

impl std::fmt::Display for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} objects, {} bytes", self.objects, self.bytes)
    }
}

/// The names of the remote refs that matched the refspecs, and what travelled.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub matched: Vec<String>,
    pub transfer: Transfer,
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match gix::url::parse(url.as_bytes().as_bstr()) {
        Ok(mut u) if u.password().is_some() => {
            u.set_password(Some("***".into()));
            u.to_bstring().to_string()
        }
        _ => url.to_owned(),
    }
}

/// Opens a bare repository to fetch into, ignoring the environment's Git configuration.
pub fn open(git_dir: &Path) -> Result<gix::Repository, FetchError> {
    let opts = gix::open::Options::isolated().open_path_as_is(true);
    gix::open_opts(git_dir, opts).map_err(|e| FetchError::Local {
        git_dir: git_dir.to_owned(),
        cause: chain(&e),
    })
}

/// Runs one fetch of `specs` from `remote` into `repo`. Blocking. No refspec matching anything
/// is not an error here (gix would call the empty mapping one): the caller decides.
pub fn fetch(
    repo: &gix::Repository,
    remote: &Remote,
    specs: &[String],
    depth: Depth,
) -> Result<Received, FetchError> {
    // gix fetches HTTP through reqwest, which panics without a TLS provider installed.
    crate::tls::install_provider();
    let shown = redact(&remote.url);
    let unreachable = |reason: Unreachable| FetchError::Unreachable {
        url: shown.clone(),
        reason,
    };
    let mut url = gix::url::parse(remote.url.as_bytes().as_bstr())
        .map_err(|e| unreachable(Unreachable::NotAUrl(chain(&e))))?;
    let is_http = matches!(url.scheme, gix::url::Scheme::Http | gix::url::Scheme::Https);
    let mut auth = None;
    if is_http {
        reachable(&url, remote.connect_timeout).map_err(unreachable)?;
        // Credentials in the URL go out as the Basic header too (gix would otherwise ask a
        // credential helper, never run unattended); given ones win.
        let in_url = url
            .user()
            .zip(url.password())
            .map(|(u, p)| (u.to_owned(), p.to_owned()));
        url.set_user(None);
        url.set_password(None);
        auth = remote.user.clone().zip(remote.password.clone()).or(in_url);
    } else if url.scheme == gix::url::Scheme::File {
        let exists = gix::path::from_bstr(url.path.as_bstr()).is_ok_and(|p| p.exists());
        if !exists {
            return Err(unreachable(Unreachable::NoSuchRepository));
        }
    }
    let fetch_err = |e: gix::Error| FetchError::Fetch {
        url: shown.clone(),
        cause: chain(&e),
    };
    let r = repo
        .remote_at(url)
        .map_err(fetch_err)?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs(
            specs.iter().map(|s| s.as_bytes().as_bstr()),
            gix::remote::Direction::Fetch,
        )
        .map_err(fetch_err)?;
    let connection = r
        .connect(gix::remote::Direction::Fetch)
        .map_err(fetch_err)?;
    let mut connection = connection.with_credentials(|action| match action {
        // Never prompt and never run credential helpers: launchers and the Master run unattended.
        gix::credentials::helper::Action::Get(ctx) => {
            Err(gix::Error::from_error(gix::error::validation(format!(
                "the remote asks for credentials for {}; give them with -u/-p or \
                 STEWARD_USER/STEWARD_PASSWORD (a launcher), or in the upstream URL (a Master)",
                ctx.url.as_ref().map(|u| u.to_string()).unwrap_or_default()
            ))))
        }
        _ => Ok(None),
    });
    if is_http {
        let auth = auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        connection.set_transport_options(Box::new(http_options(remote.connect_timeout, auth)));
    }
    let empty = repo
        .references()
        .ok()
        .and_then(|r| r.all().ok().map(|mut all| all.next().is_none()))
        .unwrap_or(false);
    let mut prepare = connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(fetch_err)?;
    if depth == Depth::TipsWhenEmpty && empty {
        prepare = prepare.with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(
            std::num::NonZeroU32::MIN,
        ));
    }
    let matched: Vec<String> = prepare
        .ref_map()
        .mappings
        .iter()
        .filter_map(|m| match &m.remote {
            gix::remote::fetch::refmap::Source::Ref(r) => {
                Some(r.unpack().0.to_str_lossy().into_owned())
            }
            _ => None,
        })
        .collect();
    if matched.is_empty() {
        return Ok(Received::default());
    }
    let interrupt = AtomicBool::new(false);
    let outcome = prepare
        .receive(gix::progress::Discard, &interrupt)
        .map_err(fetch_err)?;
    let mut transfer = Transfer::default();
    if let gix::remote::fetch::Status::Change {
        mut write_pack_bundle,
        ..
    } = outcome.status
    {
        transfer.objects = write_pack_bundle.index.num_objects;
        transfer.bytes = write_pack_bundle
            .data_path
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        // Left by gix when no ref moved; the pack is reachable from our refs either way, and the
        // .keep file would only block gc.
        if let Some(keep) = write_pack_bundle.keep_path.take() {
            let _ = std::fs::remove_file(keep);
        }
    }
    Ok(Received { matched, transfer })
}

/// Fetches `refs/heads/<branch>` of `remote` into the same ref of the bare repository `git_dir`
/// (forced: the upstream is the truth, rewritten history included) and returns its new value:
/// the Master's mirror mode. Blocking.
pub fn fetch_branch(git_dir: &Path, remote: &Remote, branch: &str) -> Result<Oid, FetchError> {
    let repo = open(git_dir)?;
    let local = format!("refs/heads/{branch}");
    let received = fetch(&repo, remote, &[format!("+{local}:{local}")], Depth::Full)?;
    if received.matched.is_empty() {
        return Err(FetchError::NoBranch {
            url: redact(&remote.url),
            branch: branch.to_owned(),
        });
    }
    let local_err = |cause: String| FetchError::Local {
        git_dir: git_dir.to_owned(),
        cause,
    };
    let repo = open(git_dir)?;
    repo.try_find_reference(local.as_str())
        .map_err(|e| local_err(chain(&e)))?
        .and_then(|r| r.target().try_id().map(|id| Oid::from(id.to_owned())))
        .ok_or_else(|| local_err(format!("{local} is missing after the fetch")))
}

/// HTTP transport options: the connect timeout also bounds gix's own connection attempts (the
/// reqwest backend otherwise waits 20 s), and Basic credentials go in as a configured header.
/// gix refuses to send an identity over plain `http://` (only a compile-time feature lifts that,
/// for every use); the Master speaks plain HTTP unless `[master] tls` is set, exactly like the
/// launcher's own `GET /v1/domain`, so the header makes the same trade-off explicit. A configured
/// header also makes gix refuse redirects, so the credentials never travel elsewhere.
fn http_options(
    connect_timeout: Duration,
    auth: Option<(&str, &str)>,
) -> gix::protocol::transport::client::blocking_io::http::Options {
    use base64ct::Encoding;
    use gix::protocol::transport::client::blocking_io::http;
    let extra_headers = auth
        .map(|(u, p)| {
            let token = base64ct::Base64::encode_string(format!("{u}:{p}").as_bytes());
            vec![format!("Authorization: Basic {token}")]
        })
        .unwrap_or_default();
    // A remote with a private CA (an https Master, a self-signed upstream): trusted through
    // GIT_SSL_CAINFO, as by git itself, so one setting serves git and Steward. An unreadable file
    // leaves only the system's anchors; the TLS error then names the cause.
    let extra = crate::tls::reqwest_extra_roots().unwrap_or_default();
    let backend = http::reqwest::Options {
        configure_client: Some(Box::new(move |b| {
            Ok(b.connect_timeout(connect_timeout)
                .tls_certs_merge(extra.clone()))
        })),
        configure_request: None,
    };
    http::Options {
        extra_headers,
        connect_timeout: Some(connect_timeout),
        backend: Some(std::sync::Arc::new(std::sync::Mutex::new(backend))),
        ..Default::default()
    }
}

/// A quick TCP connect: a refused connection fails at once, an unanswering host after
/// `timeout`, with a message saying which.
fn reachable(url: &gix::Url, timeout: Duration) -> Result<(), Unreachable> {
    let Some(host) = url.host() else {
        return Err(Unreachable::NoHost);
    };
    let port = url
        .port
        .unwrap_or(if url.scheme == gix::url::Scheme::Https {
            443
        } else {
            80
        });
    let addrs: Vec<_> = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .map_err(|error| Unreachable::Resolve {
            host: host.to_owned(),
            error,
        })?
        .collect();
    let mut last = Unreachable::NoAddress {
        host: host.to_owned(),
    };
    for addr in addrs {
        last = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Unreachable::Refused { addr },
            Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
                Unreachable::NoAnswer {
                    addr,
                    within: timeout,
                }
            }
            Err(error) => Unreachable::Connect { addr, error },
        };
    }
    Err(last)
}
