//! The vfio-user side: exposes a [`DeviceModel`] to QEMU's `vfio-user-pci` through rust-vmm's
//! blocking `vfio_user::Server`.
//!
//! Threads: the server loop (one client at a time; `Server::run` returns when QEMU disconnects
//! and is called again for the next one, e.g. after a re-plug) and a vblank timer. Both reach the
//! model through [`Card`], which also holds the "dead" switch for surprise removal and the MSI
//! eventfds QEMU handed over in SET_IRQS.

use std::fs::File;
use std::io::Write;
use std::mem::size_of;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use vfio_bindings::bindings::vfio::{
    vfio_region_info, vfio_region_sparse_mmap_area, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_NORESIZE,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_IRQ_SET_DATA_TYPE_MASK, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_NUM_REGIONS,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{IrqInfo, ServerBackend, ServerRegion, SparseArea};
use vram_bar::{Frame, Scanout};

use crate::DeviceModel;

/// Errors of the server glue.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("vfio-user socket {path}: {source}")]
    Socket {
        path: String,
        source: vfio_user::Error,
    },
    #[error("vfio-user: {0}")]
    Protocol(vfio_user::Error),
    #[error("the card shows nothing: the display is off")]
    DisplayOff,
    #[error(transparent)]
    Vram(#[from] vram_bar::Error),
}

/// Counters for reports and the control socket.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CardStats {
    /// `bochs` or `hibmc`.
    pub model: String,
    /// Client sessions served or being served (a re-plug starts a new one).
    pub clients: u64,
    pub dead: bool,
    pub config_reads: u64,
    pub config_writes: u64,
    pub bar_reads: u64,
    pub bar_writes: u64,
    pub resets: u64,
    pub msi_sent: u64,
    pub msi_vectors_armed: u32,
    pub unimplemented_accesses: u64,
    pub scanout: Option<String>,
    /// Register offset (hex) -> [reads, writes], for the registers the driver touched.
    #[serde(default)]
    pub registers: std::collections::BTreeMap<String, [u64; 2]>,
}

#[derive(Default)]
struct Counters {
    clients: AtomicU64,
    config_reads: AtomicU64,
    config_writes: AtomicU64,
    bar_reads: AtomicU64,
    bar_writes: AtomicU64,
    resets: AtomicU64,
    msi_sent: AtomicU64,
}

/// A card as both the vfio-user loop and the control plane see it.
pub struct Card {
    model: Mutex<Box<dyn DeviceModel>>,
    /// Surprise removal: config and BAR reads return all-ones, writes are dropped, no interrupts.
    dead: AtomicBool,
    /// MSI eventfds by vector, from SET_IRQS.
    msi: Mutex<Vec<Option<File>>>,
    counters: Counters,
    /// Wakes the vblank thread when something that changes its period happens.
    wake: Condvar,
    wake_lock: Mutex<bool>,
    stop: AtomicBool,
}

impl Card {
    pub fn new(model: Box<dyn DeviceModel>) -> Arc<Card> {
        Arc::new(Card {
            model: Mutex::new(model),
            dead: AtomicBool::new(false),
            msi: Mutex::new(Vec::new()),
            counters: Counters::default(),
            wake: Condvar::new(),
            wake_lock: Mutex::new(false),
            stop: AtomicBool::new(false),
        })
    }

    /// The model, locked. A poisoned lock (a panic elsewhere) still yields the model: the
    /// registers are plain data and stay consistent enough to keep answering the guest.
    pub fn model(&self) -> MutexGuard<'_, Box<dyn DeviceModel>> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_dead(&self, dead: bool) {
        self.dead.store(dead, Ordering::SeqCst);
        self.kick();
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    pub fn scanout(&self) -> Option<Scanout> {
        self.model().scanout()
    }

    /// Captures what the card shows now.
    pub fn capture(&self) -> Result<(Scanout, Frame), ServerError> {
        let model = self.model();
        let scanout = model.scanout().ok_or(ServerError::DisplayOff)?;
        Ok((scanout, model.vram().capture(&scanout)?))
    }

    pub fn stats(&self) -> CardStats {
        let c = &self.counters;
        let model = self.model();
        CardStats {
            model: model.kind().name().to_string(),
            clients: c.clients.load(Ordering::Relaxed),
            dead: self.is_dead(),
            config_reads: c.config_reads.load(Ordering::Relaxed),
            config_writes: c.config_writes.load(Ordering::Relaxed),
            bar_reads: c.bar_reads.load(Ordering::Relaxed),
            bar_writes: c.bar_writes.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            msi_sent: c.msi_sent.load(Ordering::Relaxed),
            msi_vectors_armed: self.msi_lock().iter().filter(|f| f.is_some()).count() as u32,
            unimplemented_accesses: model.unimplemented_accesses(),
            scanout: model.scanout().map(|s| s.to_string()),
            registers: model
                .register_accesses()
                .into_iter()
                .map(|(offset, n)| (format!("{offset:#07x}"), n))
                .collect(),
        }
    }

    fn msi_lock(&self) -> MutexGuard<'_, Vec<Option<File>>> {
        self.msi.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Signals MSI `vector` through QEMU's eventfd; false when QEMU has not armed it.
    fn signal(&self, vector: u32) -> bool {
        let msi = self.msi_lock();
        let Some(Some(fd)) = msi.get(vector as usize) else {
            return false;
        };
        // An eventfd takes an 8-byte counter increment.
        match (&*fd).write_all(&1u64.to_ne_bytes()) {
            Ok(_) => {
                self.counters.msi_sent.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                debug!("MSI {vector}: eventfd write failed: {e}");
                false
            }
        }
    }

    fn kick(&self) {
        let _guard = self.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wake.notify_all();
    }

    /// Vblank loop: ticks at the model's period while it has one, sleeps otherwise.
    fn run_vblank(&self) {
        let mut next = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            let period = if self.is_dead() {
                None
            } else {
                self.model().vblank_period()
            };
            let Some(period) = period else {
                // Idle: wait to be kicked (register writes, SET_IRQS, alive) or poll slowly.
                let guard = self.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
                let _ = self.wake.wait_timeout(guard, Duration::from_millis(50));
                next = Instant::now();
                continue;
            };
            next += period;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                // Fell behind (a busy host): skip missed frames rather than bursting them.
                next = now;
            }
            if self.is_dead() {
                continue;
            }
            let vector = self.model().vblank();
            if let Some(vector) = vector {
                self.signal(vector);
            }
        }
    }
}

/// The vfio-user region table QEMU sees: BARs from the model's config space, VRAM mmappable.
fn regions(model: &dyn DeviceModel) -> Vec<ServerRegion> {
    let vram_bar = model.vram_bar();
    (0..VFIO_PCI_NUM_REGIONS)
        .map(|index| {
            let mut info = vfio_region_info {
                argsz: size_of::<vfio_region_info>() as u32,
                index,
                ..Default::default()
            };
            let mut sparse_areas = Vec::new();
            let mut mmap_fd = None;
            if index == VFIO_PCI_CONFIG_REGION_INDEX {
                info.size = pci_config::CONFIG_SPACE_SIZE as u64;
                info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
            } else if let Some(bar) = model.config().bar(index as usize) {
                info.size = bar.size;
                info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
                if index as usize == vram_bar {
                    // The crate sends the region fd only along with a sparse-mmap capability,
                    // so declare one area covering the whole BAR.
                    info.flags |= VFIO_REGION_INFO_FLAG_MMAP;
                    sparse_areas.push(SparseArea {
                        area: vfio_region_sparse_mmap_area {
                            offset: 0,
                            size: bar.size,
                        },
                    });
                    mmap_fd = Some(model.vram().raw_fd());
                }
            }
            ServerRegion {
                region_info: info,
                sparse_areas,
                mmap_fd,
            }
        })
        .collect()
}

fn irqs(model: &dyn DeviceModel) -> Vec<IrqInfo> {
    // INTx is declared with no vectors (pin 0): under TCG the first INTx would turn QEMU's BAR
    // mmaps off for good. No MSI-X: QEMU's vfio-user MSI-X teardown has a known use-after-free
    // on unplug. Index 3 (ERR) is left out, so GET_IRQ_INFO(3) gets EINVAL and QEMU does not
    // warn about error recovery.
    vec![
        IrqInfo {
            index: VFIO_PCI_INTX_IRQ_INDEX,
            flags: VFIO_IRQ_INFO_EVENTFD,
            count: 0,
        },
        IrqInfo {
            index: VFIO_PCI_MSI_IRQ_INDEX,
            flags: VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE,
            count: model.msi_vectors(),
        },
        IrqInfo {
            index: VFIO_PCI_MSIX_IRQ_INDEX,
            flags: VFIO_IRQ_INFO_EVENTFD,
            count: 0,
        },
    ]
}

/// Adapts the card to the crate's `ServerBackend`.
struct Backend {
    card: Arc<Card>,
}

impl ServerBackend for Backend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        let card = &self.card;
        if card.is_dead() {
            // A card that left the bus: the root complex completes reads with all-ones.
            data.fill(0xff);
            return Ok(());
        }
        let mut model = card.model();
        if region == VFIO_PCI_CONFIG_REGION_INDEX {
            card.counters.config_reads.fetch_add(1, Ordering::Relaxed);
            model.config().read(offset, data);
        } else if region as usize == model.vram_bar() {
            model.vram().read(offset, data);
        } else {
            card.counters.bar_reads.fetch_add(1, Ordering::Relaxed);
            model.bar_read(region as usize, offset, data);
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let card = &self.card;
        if card.is_dead() {
            return Ok(());
        }
        {
            let mut model = card.model();
            if region == VFIO_PCI_CONFIG_REGION_INDEX {
                card.counters.config_writes.fetch_add(1, Ordering::Relaxed);
                model.config_mut().write(offset, data);
            } else if region as usize == model.vram_bar() {
                model.vram().write(offset, data);
            } else {
                card.counters.bar_writes.fetch_add(1, Ordering::Relaxed);
                model.bar_write(region as usize, offset, data);
            }
        }
        // A register write may have switched vblank interrupts on.
        card.kick();
        Ok(())
    }

    fn dma_map(
        &mut self,
        _flags: vfio_user::DmaMapFlags,
        _offset: u64,
        _address: u64,
        _size: u64,
        _fd: Option<File>,
    ) -> std::io::Result<()> {
        // Display cards here never DMA; the fd (guest RAM) is dropped at once.
        Ok(())
    }

    fn dma_unmap(
        &mut self,
        _flags: vfio_user::DmaUnmapFlags,
        _address: u64,
        _size: u64,
    ) -> std::io::Result<()> {
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.card.counters.resets.fetch_add(1, Ordering::Relaxed);
        self.card.model().reset();
        self.card.kick();
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> std::io::Result<()> {
        if index != VFIO_PCI_MSI_IRQ_INDEX {
            // INTx/MSI-X have no vectors; QEMU still disables them at reset.
            return Ok(());
        }
        let vectors = self.card.model().msi_vectors();
        let in_range = start.checked_add(count).is_some_and(|end| end <= vectors);
        if !in_range && count != 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        let data = flags & VFIO_IRQ_SET_DATA_TYPE_MASK;
        if action != VFIO_IRQ_SET_ACTION_TRIGGER {
            // Masking is not supported (MSI without per-vector masks); accept and ignore.
            return Ok(());
        }
        match data {
            VFIO_IRQ_SET_DATA_EVENTFD => {
                let mut msi = self.card.msi_lock();
                msi.resize_with(vectors as usize, || None);
                let mut fds = fds.into_iter();
                for vector in start..start + count {
                    msi[vector as usize] = fds.next();
                }
                info!(
                    "MSI: {} of {} vectors armed",
                    msi.iter().filter(|f| f.is_some()).count(),
                    vectors
                );
            }
            VFIO_IRQ_SET_DATA_NONE if count == 0 => {
                // count 0 with DATA_NONE tears all vectors down (guest disabled MSI).
                self.card.msi_lock().clear();
                info!("MSI: disarmed");
            }
            VFIO_IRQ_SET_DATA_NONE => {
                for vector in start..start + count {
                    self.card.signal(vector);
                }
            }
            _ => return Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        }
        self.card.kick();
        Ok(())
    }
}

/// A listening vfio-user server for one card.
pub struct Server {
    card: Arc<Card>,
    inner: vfio_user::Server,
}

impl Server {
    /// Binds the socket at `path` (which must not exist) for `card`.
    pub fn bind(path: &Path, card: Arc<Card>) -> Result<Server, ServerError> {
        let (regions, irqs) = {
            let model = card.model();
            (regions(&**model), irqs(&**model))
        };
        let inner = vfio_user::Server::new(path, true, irqs, regions).map_err(|source| {
            ServerError::Socket {
                path: path.display().to_string(),
                source,
            }
        })?;
        Ok(Server { card, inner })
    }

    pub fn card(&self) -> &Arc<Card> {
        &self.card
    }

    /// Serves clients one after the other until `stop` is set, starting the vblank thread.
    /// Returns when the listening socket fails or stop is requested between clients.
    pub fn serve(&self, stop: &AtomicBool) -> Result<(), ServerError> {
        let card = Arc::clone(&self.card);
        let vblank: JoinHandle<()> = std::thread::Builder::new()
            .name("vblank".into())
            .spawn(move || card.run_vblank())
            .map_err(|e| ServerError::Protocol(vfio_user::Error::SocketAccept(e)))?;
        let result = loop {
            if stop.load(Ordering::SeqCst) {
                break Ok(());
            }
            let mut backend = Backend {
                card: Arc::clone(&self.card),
            };
            self.card.counters.clients.fetch_add(1, Ordering::Relaxed);
            let run = self.inner.run(&mut backend);
            // The client is gone: its eventfds with it.
            self.card.msi_lock().clear();
            self.card.kick();
            match run {
                Ok(()) => info!("vfio-user client disconnected"),
                Err(vfio_user::Error::SocketAccept(e)) => {
                    break Err(ServerError::Protocol(vfio_user::Error::SocketAccept(e)))
                }
                Err(e) => warn!("vfio-user client dropped: {e}"),
            }
        };
        self.card.stop.store(true, Ordering::SeqCst);
        self.card.kick();
        let _ = vblank.join();
        result
    }
}
