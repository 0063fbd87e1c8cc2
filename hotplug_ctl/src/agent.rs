//! The host side of the guest agent: shell commands over a virtio-serial port.
//!
//! The guest's /init runs a loop on the port `vanish.agent`: it reads one line, runs it with
//! `sh -c`, writes the output, then a record-separator line `\x1e<exit status>`. QEMU exposes
//! the port as a Unix socket (`-chardev socket,server=on,wait=off`). Until the guest opens its
//! end, QEMU leaves our bytes in the socket, so the first command simply waits for boot.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::timeout;

/// Ends each reply; never appears in ordinary output.
pub const END: char = '\u{1e}';

/// What a guest command printed and how it exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// A connected agent.
pub struct Agent {
    reader: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Agent {
    /// Connects to the chardev socket QEMU listens on.
    pub async fn connect(path: &Path, wait: Duration) -> Result<Agent> {
        let stream = crate::connect_unix(path, wait, "agent socket").await?;
        let (read, writer) = stream.into_split();
        Ok(Agent {
            reader: BufReader::new(read).lines(),
            writer,
        })
    }

    /// Runs `command` (one line of sh) in the guest; fails if it does not finish within `wait`.
    pub async fn run(&mut self, command: &str, wait: Duration) -> Result<Output> {
        if command.contains('\n') {
            bail!("agent commands are one line: {command:?}");
        }
        self.writer
            .write_all(format!("{command}\n").as_bytes())
            .await
            .context("agent: write failed")?;
        let mut stdout = String::new();
        let read = async {
            loop {
                let line = self
                    .reader
                    .next_line()
                    .await?
                    .ok_or_else(|| anyhow!("agent: the guest closed the port"))?;
                if let Some(status) = line.strip_prefix(END) {
                    let status = status
                        .trim()
                        .parse()
                        .with_context(|| format!("agent: bad status line {line:?}"))?;
                    return Ok::<i32, anyhow::Error>(status);
                }
                stdout.push_str(&line);
                stdout.push('\n');
            }
        };
        let status = timeout(wait, read)
            .await
            .map_err(|_| anyhow!("guest command did not finish within {wait:?}: {command}"))??;
        Ok(Output { status, stdout })
    }

    /// `vanish run --shell`: the guest's `sh -i` on a pty (the agent's `@shell`), relayed raw
    /// to this process's stdin and stdout until the shell exits; end-of-file on stdin sends
    /// ^D, and hangs the shell up if it is still there 10 s later. Returns the shell's status
    /// (None: it did not end). With a terminal on stdin, that terminal is raw meanwhile.
    pub async fn shell(&mut self) -> Result<Option<i32>> {
        const MARKER: &[u8] = b"\x1evanish-shell-exit ";
        let (rows, cols) = terminal_size();
        let _raw = RawTerminal::new();
        self.writer
            .write_all(format!("@shell {rows} {cols}\n").as_bytes())
            .await
            .context("agent: write failed")?;
        // A thread of its own: a blocked read of stdin must not hold the runtime at exit.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        std::thread::spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 4096];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        // The user's terminal: small blocking writes.
        let mut stdout = std::io::stdout();
        let reader = self.reader.get_mut();
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 16384];
        let mut stdin_open = true;
        let mut hangup: Option<tokio::time::Instant> = None;
        let status = loop {
            let deadline =
                hangup.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                n = reader.read(&mut buf) => {
                    let n = n.context("agent: read failed")?;
                    if n == 0 {
                        bail!("agent: the guest closed the port");
                    }
                    pending.extend_from_slice(&buf[..n]);
                    if let Some(at) = find(&pending, MARKER) {
                        let rest = &pending[at + MARKER.len()..];
                        if let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                            std::io::Write::write_all(&mut stdout, &pending[..at])?;
                            std::io::Write::flush(&mut stdout)?;
                            break String::from_utf8_lossy(&rest[..nl]).trim().parse().ok();
                        }
                        continue;
                    }
                    // Keep what could be the start of the marker.
                    let keep = (1..MARKER.len())
                        .rev()
                        .find(|k| pending.ends_with(&MARKER[..*k]))
                        .unwrap_or(0);
                    let out = pending.len() - keep;
                    std::io::Write::write_all(&mut stdout, &pending[..out])?;
                    std::io::Write::flush(&mut stdout)?;
                    pending.drain(..out);
                }
                data = rx.recv(), if stdin_open => match data {
                    Some(d) => self.writer.write_all(&d).await.context("agent: write failed")?,
                    None => {
                        stdin_open = false;
                        self.writer.write_all(b"\x04").await.context("agent: write failed")?;
                        hangup = Some(tokio::time::Instant::now() + Duration::from_secs(10));
                    }
                },
                _ = tokio::time::sleep_until(deadline), if hangup.is_some() => break None,
            }
        };
        // The agent drops one line after the relay, then serves lines again.
        let _ = self.writer.write_all(b"\n").await;
        Ok(status)
    }

    /// Runs `command` and returns its output, failing on a non-zero exit.
    pub async fn check(&mut self, command: &str, wait: Duration) -> Result<String> {
        let out = self.run(command, wait).await?;
        if !out.success() {
            bail!(
                "guest command failed (exit {}): {command}\n{}",
                out.status,
                out.stdout.trim_end()
            );
        }
        Ok(out.stdout)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The terminal's size on stdout (24x80 without one).
fn terminal_size() -> (u16, u16) {
    // SAFETY: TIOCGWINSZ fills a winsize.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 0 && ws.ws_col > 0 {
        (ws.ws_row, ws.ws_col)
    } else {
        (24, 80)
    }
}

/// stdin's terminal in raw mode (the guest's pty does the echo and line editing) until drop.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn new() -> RawTerminal {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a valid termios.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawTerminal(None);
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawTerminal(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawTerminal(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the settings read in new().
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}
