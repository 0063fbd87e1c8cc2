//! The control socket of a card server: one JSON request per line, one JSON reply per line.
//!
//! Verbs: `status`, `dead`, `alive`, `screenshot <path>`. The socket is created mode 0600 so only
//! its owner can flip a card dead.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use device::Card;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// A request on the control socket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "verb", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Dead,
    Alive,
    Screenshot {
        path: PathBuf,
    },
    /// The server kills itself with SIGKILL, as a crashing server dies; there is no reply.
    Crash,
}

impl Request {
    /// Parses the `vanish ctl` words: `status`, `dead`, `alive`, `screenshot PATH`.
    pub fn from_words(words: &[String]) -> Result<Request> {
        match words
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["status"] => Ok(Request::Status),
            ["dead"] => Ok(Request::Dead),
            ["alive"] => Ok(Request::Alive),
            ["crash"] => Ok(Request::Crash),
            ["screenshot", path] => Ok(Request::Screenshot {
                path: PathBuf::from(path),
            }),
            _ => bail!(
                "unknown control verb '{}' (expected status, dead, alive, crash or screenshot PATH)",
                words.join(" ")
            ),
        }
    }
}

/// The card's state as the control socket reports it.
pub type Status = device::CardStats;

/// A reply: `ok` with the status after the request, or an error line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// For screenshots: fraction of pixels that are not background (0 = blank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ink: Option<f64>,
}

fn status(card: &Card) -> Status {
    card.stats()
}

/// Answers one request against `card`.
pub fn handle(card: &Card, request: &Request) -> Reply {
    let mut ink = None;
    let result: Result<()> = match request {
        Request::Status => Ok(()),
        Request::Dead => {
            card.set_dead(true);
            Ok(())
        }
        Request::Alive => {
            card.set_dead(false);
            Ok(())
        }
        Request::Crash => {
            // SAFETY: signalling ourselves; nothing after this runs.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            Ok(())
        }
        Request::Screenshot { path } => {
            card.capture()
                .map_err(anyhow::Error::from)
                .and_then(|(_, frame)| {
                    ink = Some(frame.ink_ratio());
                    frame.write_png(path).map_err(anyhow::Error::from)
                })
        }
    };
    match result {
        Ok(()) => Reply {
            ok: true,
            error: None,
            status: Some(status(card)),
            ink,
        },
        Err(e) => Reply {
            ok: false,
            error: Some(format!("{e:#}")),
            status: Some(status(card)),
            ink,
        },
    }
}

/// Serves the control socket at `path` until the task is dropped.
pub async fn serve(path: &Path, card: Arc<Card>) -> Result<()> {
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let card = Arc::clone(&card);
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = match serde_json::from_str::<Request>(&line) {
                    Ok(request) => {
                        let card = Arc::clone(&card);
                        tokio::task::spawn_blocking(move || handle(&card, &request))
                            .await
                            .unwrap_or_else(|e| Reply {
                                ok: false,
                                error: Some(e.to_string()),
                                status: None,
                                ink: None,
                            })
                    }
                    Err(e) => Reply {
                        ok: false,
                        error: Some(format!("bad request: {e}")),
                        status: None,
                        ink: None,
                    },
                };
                let mut out = serde_json::to_string(&reply).unwrap_or_default();
                out.push('\n');
                if write.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Sends one request to the control socket at `path`.
pub async fn request(path: &Path, request: &Request) -> Result<Reply> {
    let io = async {
        let stream = UnixStream::connect(path).await?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        write.write_all(line.as_bytes()).await?;
        let mut lines = BufReader::new(read).lines();
        let reply = lines
            .next_line()
            .await?
            .context("control socket closed without a reply")?;
        Ok::<Reply, anyhow::Error>(serde_json::from_str(&reply)?)
    };
    tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .with_context(|| {
            format!(
                "control socket {} did not answer within 10 s",
                path.display()
            )
        })?
        .with_context(|| format!("control socket {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_parse_into_requests() {
        let w = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(Request::from_words(&w("dead")).unwrap(), Request::Dead);
        assert_eq!(
            Request::from_words(&w("screenshot /tmp/a.png")).unwrap(),
            Request::Screenshot {
                path: "/tmp/a.png".into()
            }
        );
        assert!(Request::from_words(&w("explode")).is_err());
        assert!(Request::from_words(&w("screenshot")).is_err());
    }

    #[test]
    fn requests_round_trip_as_json() {
        let r = Request::Screenshot {
            path: "/x.png".into(),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"verb":"screenshot","path":"/x.png"}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
    }
}
