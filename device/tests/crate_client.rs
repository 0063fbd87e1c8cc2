//! rust-vmm's `vfio_user::Client`, an independent implementation of the client side, against
//! our server: version, region info, config and BAR accesses, IRQs, DMA, reset.

mod common;

use std::os::fd::AsRawFd;

use common::Running;
use device::ModelKind;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const VFIO_IRQ_SET_DATA_NONE: u32 = 1;
const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 4;
const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 32;

#[test]
fn rust_vmm_client_talks_to_our_server() {
    for kind in [ModelKind::Hibmc, ModelKind::Bochs] {
        let srv = Running::start(kind);
        let (vendor, device_id) = kind.pci_id();
        let (vram_bar, mmio_bar) = match kind {
            ModelKind::Hibmc => (device::hibmc::VRAM_BAR, device::hibmc::MMIO_BAR),
            ModelKind::Bochs => (device::bochs::VRAM_BAR, device::bochs::MMIO_BAR),
        };
        let mut client = vfio_user::Client::new(&srv.path).expect("version + region info");

        let config = client.region(7).expect("config region");
        assert_eq!(config.size, 4096);
        let vram = client.region(vram_bar as u32).expect("VRAM region");
        assert_eq!(vram.size, srv.card.model().vram().size());
        assert!(vram.file_offset.is_some(), "VRAM fd sent");
        assert_eq!(vram.sparse_areas.len(), 1);
        assert!(client.region(mmio_bar as u32).expect("MMIO").size > 0);

        let mut id = [0u8; 4];
        client.region_read(7, 0, &mut id).expect("config read");
        assert_eq!(
            id,
            [
                vendor as u8,
                (vendor >> 8) as u8,
                device_id as u8,
                (device_id >> 8) as u8
            ]
        );
        client.region_write(7, 0x3c, &[0x0b]).expect("config write");
        let mut line = [0u8; 1];
        client.region_read(7, 0x3c, &mut line).expect("config read");
        assert_eq!(line, [0x0b]);

        let mut reg = [0u8; 4];
        client
            .region_read(mmio_bar as u32, 0, &mut reg)
            .expect("BAR read");
        client
            .region_write(mmio_bar as u32, 0, &reg)
            .expect("BAR write");
        client
            .region_write(vram_bar as u32, 0x100, &[1, 2, 3, 4])
            .expect("VRAM write");
        let mut px = [0u8; 4];
        client
            .region_read(vram_bar as u32, 0x100, &mut px)
            .expect("VRAM read");
        assert_eq!(px, [1, 2, 3, 4]);

        let msi = client.get_irq_info(1).expect("MSI info");
        assert_eq!(msi.count, srv.card.info().msi_vectors);
        if msi.count > 0 {
            let efd = EventFd::new(EFD_NONBLOCK).expect("eventfd");
            client
                .set_irqs(
                    1,
                    VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                    0,
                    1,
                    &[efd.as_raw_fd()],
                )
                .expect("arm MSI");
            client
                .set_irqs(
                    1,
                    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                    0,
                    1,
                    &[],
                )
                .expect("trigger MSI");
            assert_eq!(efd.read().expect("MSI delivered"), 1);
            assert_eq!(srv.card.stats().msi_vectors_armed, 1);
            client
                .set_irqs(
                    1,
                    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                    0,
                    0,
                    &[],
                )
                .expect("disarm");
            assert_eq!(srv.card.stats().msi_vectors_armed, 0);
        }

        let mem = EventFd::new(0).expect("an fd to map");
        client
            .dma_map(0, 0x10_0000, 0x1000, mem.as_raw_fd())
            .expect("DMA map");
        client.dma_unmap(0x10_0000, 0x1000).expect("DMA unmap");
        let resets = srv.card.stats().resets;
        client.reset().expect("reset");
        // The reset reply came back, so the reset was done.
        client
            .region_read(7, 0, &mut id)
            .expect("config read after reset");
        assert_eq!(srv.card.stats().resets, resets + 1);
        client.shutdown().expect("shutdown");
        drop(client);
        srv.assert_healthy();
    }
}
