//! `vanish serve`: one card on a vfio-user socket, for a QEMU that someone else starts.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use device::{build_model, Card, CardOptions, ModelKind, Server};
use tokio::signal::unix::{signal, SignalKind};

/// What to serve and where.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub model: ModelKind,
    pub socket: PathBuf,
    pub control: Option<PathBuf>,
    pub vram_size: Option<u64>,
    pub edid: Option<PathBuf>,
    pub no_monitor: bool,
}

/// The `-device` argument that attaches QEMU to a server on `socket`.
pub fn device_arg(socket: &Path, id: &str, bus: &str) -> String {
    serde_json::json!({
        "driver": "vfio-user-pci",
        "id": id,
        "bus": bus,
        "socket": {"type": "unix", "path": socket},
    })
    .to_string()
}

/// Card options from the command line, with the EDID file validated up front.
pub fn card_options(config: &ServeConfig) -> Result<CardOptions> {
    let vram_size = config.vram_size.unwrap_or(config.model.default_vram_size());
    if !vram_size.is_power_of_two() || vram_size < (1 << 20) {
        bail!(
            "--vram-size {vram_size} is not a power of two of at least 1 MiB (a PCI BAR must be)"
        );
    }
    let edid = match &config.edid {
        Some(path) => {
            let blob =
                std::fs::read(path).with_context(|| format!("reading EDID {}", path.display()))?;
            device::edid::validate(&blob)
                .map_err(|e| anyhow::anyhow!("EDID {}: {e}", path.display()))?;
            Some(blob)
        }
        None => None,
    };
    Ok(CardOptions {
        vram_size,
        edid,
        no_monitor: config.no_monitor,
    })
}

/// Runs the server until SIGINT/SIGTERM; removes its sockets on the way out.
pub async fn serve(config: ServeConfig) -> Result<()> {
    let options = card_options(&config)?;
    if config.socket.exists() {
        bail!(
            "socket {} already exists (another server, or a stale file to remove)",
            config.socket.display()
        );
    }
    let card = Card::new(build_model(config.model, &options)?);
    let server = Server::bind(&config.socket, Arc::clone(&card))?;
    let _cleanup = RemoveOnDrop(
        vec![config.socket.clone()]
            .into_iter()
            .chain(config.control.clone())
            .collect(),
    );

    let control = match &config.control {
        Some(path) => {
            if path.exists() {
                bail!("control socket {} already exists", path.display());
            }
            let path = path.clone();
            let card = Arc::clone(&card);
            // Bind before announcing readiness so `vanish ctl` works as soon as we print.
            let listener_ready =
                tokio::spawn(async move { crate::control::serve(&path, card).await });
            Some(listener_ready)
        }
        None => None,
    };

    println!(
        "vanish: serving a {} card ({} MiB VRAM) on {}",
        config.model.name(),
        options.vram_size >> 20,
        config.socket.display()
    );
    println!(
        "attach it with:\n  -device '{}'",
        device_arg(&config.socket, "gpu0", "rp1")
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
            if let Ok(Err(e)) = result {
                return Err(e.into());
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
