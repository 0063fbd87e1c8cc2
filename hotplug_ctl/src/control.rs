//! The control socket of a card server: one JSON request per line, one JSON reply per line.
//!
//! Verbs: `status`, `dead`, `alive`, `crash`, `busy-poll <us>`, `screenshot <path>`. The socket is created mode 0600 so only
//! its owner can flip a card dead.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use device::Card;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
    /// Sets the transport's busy-poll window (`device::Card::set_busy_poll`), 0 to sleep in
    /// epoll after every reply; the bench flips it to measure both in one boot.
    BusyPoll {
        us: u64,
    },
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
            ["busy-poll", us] => match us.parse::<u64>() {
                Ok(us) if us <= device::MAX_BUSY_POLL.as_micros() as u64 => {
                    Ok(Request::BusyPoll { us })
                }
                _ => bail!(
                    "busy-poll takes microseconds from 0 to {}, not '{us}'",
                    device::MAX_BUSY_POLL.as_micros()
                ),
            },
            // Absolute, resolved in the caller's directory: the server runs elsewhere.
            ["screenshot", path] => Ok(Request::Screenshot {
                path: std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path)),
            }),
            _ => bail!(
                "unknown control verb '{}' (expected status, dead, alive, crash, busy-poll US or screenshot PATH)",
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
        Request::BusyPoll { us } => {
            card.set_busy_poll(Duration::from_micros(*us));
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

/// Longest request line; a longer one gets one error reply and the connection is closed.
pub const MAX_LINE: usize = 64 * 1024;

/// Binds the control socket at `path` (mode 0600). Separate from [`serve`] so the caller can
/// announce the socket only once it accepts connections.
pub fn bind(path: &Path) -> Result<UnixListener> {
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the control socket until the task is dropped. An accept error (fd exhaustion, a
/// client gone before accept) is logged and waited out, never the end of the card server.
pub async fn serve(listener: UnixListener, card: Arc<Card>) -> Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let card = Arc::clone(&card);
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            // Bounded: a line without a newline is not buffered past MAX_LINE.
            let mut reader = BufReader::new(read);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
                match limited.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let too_long = buf.len() > MAX_LINE;
                let reply = if too_long {
                    Reply {
                        ok: false,
                        error: Some(format!("request longer than {MAX_LINE} bytes")),
                        status: None,
                        ink: None,
                    }
                } else {
                    match serde_json::from_slice::<Request>(&buf) {
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
                    }
                };
                let mut out = serde_json::to_string(&reply).unwrap_or_default();
                out.push('\n');
                if write.write_all(out.as_bytes()).await.is_err() || too_long {
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
        let rel = Request::from_words(&w("screenshot rel.png")).unwrap();
        assert!(
            matches!(&rel, Request::Screenshot { path } if path.is_absolute() && path.ends_with("rel.png")),
            "{rel:?}"
        );
        assert_eq!(
            Request::from_words(&w("busy-poll 200")).unwrap(),
            Request::BusyPoll { us: 200 }
        );
        assert!(Request::from_words(&w("busy-poll 1001")).is_err());
        assert!(Request::from_words(&w("busy-poll -1")).is_err());
        assert!(Request::from_words(&w("busy-poll")).is_err());
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
