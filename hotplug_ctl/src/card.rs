//! The card handle: one `vanish serve` child process (one card generation, so a server crash is
//! a real SIGKILL) and its control socket.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::process::{Child, Command};

use crate::control::{self, Reply, Request};

/// A running card server.
pub struct Card {
    child: Child,
    /// The vfio-user socket QEMU connects to.
    pub socket: PathBuf,
    /// The control socket (`vanish ctl --control`).
    pub control: PathBuf,
}

impl Card {
    /// Starts `vanish ARGS` (a `vanish serve` command line that listens on `socket` and
    /// `control`), its output appended to `log`, and waits until both sockets exist.
    pub async fn start(
        args: Vec<OsString>,
        socket: PathBuf,
        control: PathBuf,
        log: &Path,
    ) -> Result<Card> {
        let exe = std::env::current_exe().context("finding the vanish executable")?;
        let mut cmd = Command::new(exe);
        cmd.args(args);
        let logfile = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        cmd.stdin(Stdio::null())
            .stdout(logfile.try_clone()?)
            .stderr(logfile)
            .kill_on_drop(true);
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        crate::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().context("starting the card server")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(socket.exists() && control.exists()) {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the card server exited ({status}) before listening; see {}",
                    log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the card server did not create {} within 10 s",
                    socket.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Card {
            child,
            socket,
            control,
        })
    }

    /// One control request.
    pub async fn request(&self, request: &Request) -> Result<Reply> {
        control::request(&self.control, request).await
    }

    /// The server's counters and scanout now (`None` if the reply carried none).
    pub async fn stats(&self) -> Result<Option<device::CardStats>> {
        Ok(self.request(&Request::Status).await?.status)
    }

    /// Makes the card dead (surprise removal: reads all-ones, writes dropped) or alive again.
    pub async fn set_dead(&self, dead: bool) -> Result<()> {
        let reply = self
            .request(if dead {
                &Request::Dead
            } else {
                &Request::Alive
            })
            .await?;
        if !reply.ok {
            bail!("{}", reply.error.unwrap_or_default());
        }
        Ok(())
    }

    /// Saves what the card shows to `path` once something is drawn (retrying until `wait`);
    /// returns the ink ratio (fraction of non-background pixels).
    pub async fn screenshot(&self, path: &Path, wait: Duration) -> Result<f64> {
        let deadline = Instant::now() + wait;
        loop {
            let reply = self
                .request(&Request::Screenshot {
                    path: path.to_path_buf(),
                })
                .await?;
            let ink = reply.ink.unwrap_or(0.0);
            if reply.ok && ink > 0.001 {
                return Ok(ink);
            }
            if Instant::now() > deadline {
                let why = reply
                    .error
                    .unwrap_or_else(|| "the screen stayed blank".into());
                return Err(anyhow!("no picture on the card within {wait:?}: {why}"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The server's process id (None once it has been reaped): `vanish bench` reads its
    /// footprint from /proc.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, as a crashing server would die.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.control);
    }

    /// SIGTERM and wait, so the server removes its sockets itself.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }
}
