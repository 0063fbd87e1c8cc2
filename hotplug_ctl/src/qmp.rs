//! A small QMP client: commands and their replies, and the events that arrive in between.
//!
//! QMP is one JSON object per line over a Unix socket: a greeting, `qmp_capabilities`, then
//! `{"execute": ...}` answered by `{"return": ...}` or `{"error": ...}`, with asynchronous
//! `{"event": ...}` lines interleaved. Events are kept so `DEVICE_DELETED` can be awaited even if
//! it arrived while another command was in flight.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{timeout, Instant};

/// A connected QMP session.
pub struct Qmp {
    reader: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    events: VecDeque<Value>,
}

/// Nothing arrived from QEMU within the wait (as opposed to a broken connection, which is
/// the rig's failure, not the guest's): find it with `err.downcast_ref::<NoEvent>()`.
#[derive(Debug)]
pub struct NoEvent(pub Duration);

impl std::fmt::Display for NoEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMP: no message within {:?}", self.0)
    }
}

impl std::error::Error for NoEvent {}

impl Qmp {
    /// Connects to QEMU's `-qmp unix:PATH,server=on,wait=off` socket, retrying until `wait`
    /// runs out (QEMU creates it a moment after it starts).
    pub async fn connect(path: &Path, wait: Duration) -> Result<Qmp> {
        let stream = crate::connect_unix(path, wait, "QMP socket").await?;
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(read).lines(),
            writer,
            events: VecDeque::new(),
        };
        let greeting = qmp.next_message(Duration::from_secs(10)).await?;
        if greeting.get("QMP").is_none() {
            bail!("QMP: expected a greeting, got {greeting}");
        }
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    async fn next_message(&mut self, wait: Duration) -> Result<Value> {
        let line = timeout(wait, self.reader.next_line())
            .await
            .map_err(|_| anyhow::Error::new(NoEvent(wait)))??
            .ok_or_else(|| anyhow!("QMP: QEMU closed the connection"))?;
        serde_json::from_str(&line).with_context(|| format!("QMP: bad JSON: {line}"))
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if arguments.as_object().is_some_and(|a| !a.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .context("QMP: write failed")?;
        loop {
            // device_add of a vfio-user device connects to the server synchronously; allow for
            // the server's 5 s message timeout and then some.
            let msg = self.next_message(Duration::from_secs(30)).await?;
            if msg.get("event").is_some() {
                self.events.push_back(msg);
            } else if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            } else if let Some(err) = msg.get("error") {
                let desc = err
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                bail!("QMP {command}: {desc}");
            }
        }
    }

    /// Waits for an event named `name` whose `data` satisfies `matches`, first among the events
    /// already queued. Every other event that arrives meanwhile (of this kind or another) stays
    /// queued for a later wait; only the one returned leaves the queue.
    pub async fn wait_event(
        &mut self,
        name: &str,
        wait: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let is_it =
            |e: &Value| e.get("event").and_then(Value::as_str) == Some(name) && matches(&e["data"]);
        if let Some(pos) = self.events.iter().position(is_it) {
            return self
                .events
                .remove(pos)
                .ok_or_else(|| anyhow!("QMP: event queue changed"));
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(anyhow::Error::new(NoEvent(wait)).context(format!("no {name} event")));
            }
            let msg = self
                .next_message(left)
                .await
                .with_context(|| format!("waiting for {name}"))?;
            if is_it(&msg) {
                return Ok(msg);
            }
            if msg.get("event").is_some() {
                self.events.push_back(msg);
            }
        }
    }
}
