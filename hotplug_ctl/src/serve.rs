//! `vanish serve`: one card on a vfio-user socket, for a QEMU that someone else starts.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Result};
use device::{build_model, Card, CardSpec, ModelKind, Monitor, Server, SpecError};
use tokio::signal::unix::{signal, SignalKind};

/// What to serve and where.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub card: CardSpec,
    pub socket: PathBuf,
    pub control: Option<PathBuf>,
    /// The transport's busy-poll window ([`device::Card::set_busy_poll`]).
    pub busy_poll: std::time::Duration,
}

/// `vanish serve`'s busy-poll window unless told otherwise: in the bench it cuts a guest's
/// trapped read by about a quarter under TCG (hibmc's DDC: thousands of accesses in a row);
/// it only engages inside such streaks, so an idle card does not spin.
pub const DEFAULT_BUSY_POLL_US: u64 = 200;

/// A bad card option or path: `vanish` exits 2 (usage) for it, not 125.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The card options as the CLI spells them, checked into a [`CardSpec`] (the one place the
/// rules are is [`CardSpec::new`]; this adds reading the EDID file).
pub fn card_spec(
    model: ModelKind,
    vram_size: Option<u64>,
    edid: Option<&Path>,
    no_monitor: bool,
) -> Result<CardSpec, UsageError> {
    let monitor = match (edid, no_monitor) {
        (Some(path), _) => Monitor::Edid(
            std::fs::read(path)
                .map_err(|e| UsageError(format!("--edid {}: {e}", path.display())))?,
        ),
        (None, true) => Monitor::Absent,
        (None, false) => Monitor::Default,
    };
    CardSpec::new(model, vram_size, monitor).map_err(|e| match (e, edid) {
        (SpecError::Edid(why), Some(path)) => {
            UsageError(format!("--edid {}: {why}", path.display()))
        }
        (e, _) => UsageError(e.to_string()),
    })
}

/// Runs the server until SIGINT/SIGTERM; removes its sockets on the way out.
pub async fn serve(config: ServeConfig) -> Result<()> {
    if config.socket.exists() {
        return Err(UsageError(format!(
            "socket {} already exists (another server, or a stale file to remove)",
            config.socket.display()
        ))
        .into());
    }
    if let Some(path) = config.control.as_ref().filter(|p| p.exists()) {
        return Err(UsageError(format!("control socket {} already exists", path.display())).into());
    }
    let card = Card::new(build_model(&config.card)?);
    card.set_busy_poll(config.busy_poll);
    let server = Server::bind(&config.socket, Arc::clone(&card))?;
    // Cleanup is armed for each socket only once this process created it: a failed start must
    // never delete a live server's sockets.
    let mut cleanup = RemoveOnDrop(vec![config.socket.clone()]);
    // Both sockets are bound before anything is announced, so `vanish ctl` works as soon as
    // the lines below are printed.
    let control = match &config.control {
        Some(path) => {
            let listener = crate::control::bind(path)?;
            cleanup.0.push(path.clone());
            let card = Arc::clone(&card);
            Some(tokio::spawn(crate::control::serve(listener, card)))
        }
        None => None,
    };

    println!(
        "vanish: serving a {} card ({} MiB VRAM) on {}",
        config.card.model().name(),
        config.card.vram_size() >> 20,
        config.socket.display()
    );
    println!(
        "attach it with:\n  -device '{}'",
        crate::slot::Slot::default().device_json(&config.socket)
    );
    if let Some(control) = &config.control {
        println!(
            "control it with:\n  vanish ctl --control {} dead|alive|status|screenshot PATH",
            control.display()
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("vfio-user".into())
            .spawn(move || {
                let _ = done_tx.send(server.serve(&stop));
            })?;
    }

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: stopping"),
        _ = int.recv() => log::info!("SIGINT: stopping"),
        result = done_rx => {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                // The vfio-user thread is gone without a word: it panicked.
                Err(_) => bail!("the vfio-user thread died (panic); see the log above"),
            }
        }
        Some(result) = async { match control { Some(c) => Some(c.await), None => None } } => {
            result??;
        }
    }
    // The vfio-user thread is blocked in accept() or in a client's recv; the process exit ends
    // it. The sockets are removed by `_cleanup`.
    Ok(())
}

/// Removes files when dropped (sockets on every exit path).
pub struct RemoveOnDrop(pub Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}
