//! The host side of the guest agent: shell commands over a virtio-serial port.
//!
//! The guest's /init runs a loop on the port `vanish.agent`: it reads one line, runs it with
//! `sh -c`, writes the output, then a record-separator line `\x1e<exit status>`. QEMU exposes
//! the port as a Unix socket (`-chardev socket,server=on,wait=off`). Until the guest opens its
//! end, QEMU leaves our bytes in the socket, so the first command simply waits for boot.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
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
