//! vanish's own vfio-user transport, written from docs/vfio-user.rst and what QEMU's
//! `vfio-user-pci` client sends (docs/qemu-vfio-user-client.md).
//!
//! - [`wire`]: header and payload parse/encode, pure functions;
//! - [`conn`]: one connection: the protocol state machine and its socket I/O;
//! - [`event_loop`]: the single-threaded `event-manager` loop serving the card;
//! - [`bench`]: a trapped BAR read through the real server against a bare socket echo.

pub mod bench;
pub mod conn;
pub mod event_loop;
pub mod wire;
