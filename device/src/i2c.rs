//! A bit-banged I2C bus seen from the slave side, and the DDC EEPROM that answers on it.
//!
//! The card's GPIO pins are wired to the monitor's DDC lines. Both lines are open drain: the
//! host (master) and the monitor (slave) can only pull a line low or let go of it, and a line
//! nobody pulls reads high through its pull-up, so each line is the wired AND of everyone's
//! drive. The host side is whatever register writes the card model turns into line drive; this
//! module watches the resolved levels and plays the slave:
//!
//! - START is SDA falling while SCL is high, STOP is SDA rising while SCL is high;
//! - data and ACK bits are sampled on SCL rising;
//! - the slave changes its own SDA drive only right after SCL falls, so it never produces a
//!   START or STOP by itself (the same rule a real slave follows);
//! - the slave never stretches the clock, so SCL reads back high as soon as the master lets go
//!   (i2c-algo-bit polls SCL after raising it and gives up after about 2 ms).
//!
//! The bus runs entirely inside register writes: there is no clock or timer, only edges.

/// The 7-bit address of the DDC EEPROM that holds the EDID (VESA E-DDC).
pub const DDC_ADDRESS: u8 = 0x50;

/// A device on the bus.
pub trait I2cSlave {
    /// 7-bit address.
    fn address(&self) -> u8;
    /// Addressed after a (repeated) START, for a read or a write; returns whether to ACK.
    fn start(&mut self, read: bool) -> bool;
    /// A byte the master wrote; returns whether to ACK.
    fn write(&mut self, byte: u8) -> bool;
    /// The next byte to send to the master (called once per byte actually sent).
    fn read(&mut self) -> u8;
    /// The master sent STOP (or the bus was reset).
    fn stop(&mut self);
}

/// A 256-byte DDC EEPROM (24C02-style) with the EDID in it.
///
/// Following a write START, the first byte sets the address pointer; further written bytes are
/// ACKed and dropped (a monitor's EEPROM is write protected). Reads stream from the pointer,
/// incrementing and wrapping at 256, so the usual `[W offset] [Sr] [R n]` and a bare `[R n]`
/// that continues where the last read stopped both work.
pub struct Eeprom {
    data: Box<[u8; 256]>,
    pointer: u8,
    expect_pointer: bool,
}

impl Eeprom {
    /// An EEPROM holding `contents` (at most 256 bytes are kept); the rest reads 0xff like an
    /// erased part.
    pub fn new(contents: &[u8]) -> Eeprom {
        let mut data = Box::new([0xffu8; 256]);
        let len = contents.len().min(data.len());
        data[..len].copy_from_slice(&contents[..len]);
        Eeprom {
            data,
            pointer: 0,
            expect_pointer: false,
        }
    }

    /// Where the next read starts.
    pub fn pointer(&self) -> u8 {
        self.pointer
    }
}

impl I2cSlave for Eeprom {
    fn address(&self) -> u8 {
        DDC_ADDRESS
    }

    fn start(&mut self, read: bool) -> bool {
        self.expect_pointer = !read;
        true
    }

    fn write(&mut self, byte: u8) -> bool {
        if self.expect_pointer {
            self.pointer = byte;
            self.expect_pointer = false;
        }
        true
    }

    fn read(&mut self) -> u8 {
        let byte = self.data[usize::from(self.pointer)];
        self.pointer = self.pointer.wrapping_add(1);
        byte
    }

    fn stop(&mut self) {
        self.expect_pointer = false;
    }
}

/// Where the slave side of the bus is within a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not addressed: ignore clocks until the next START.
    Idle,
    /// Shifting in a byte from the master; `address` for the first byte after START.
    Receive { byte: u8, bits: u8, address: bool },
    /// Holding SDA low for the ACK clock of a byte we accepted; `read` if a read follows.
    Ack { read: bool },
    /// Sending `byte`; bit `7 - sent` is on SDA.
    Transmit { byte: u8, sent: u8 },
    /// SDA released for the master's ACK/NAK of the byte we sent; `acked` once sampled.
    MasterAck { acked: Option<bool> },
}

/// Statistics, for tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BusStats {
    pub starts: u64,
    pub stops: u64,
    /// Address bytes that matched the slave and were ACKed.
    pub address_acks: u64,
    /// Address bytes nobody ACKed.
    pub address_naks: u64,
    /// Bytes the slave sent.
    pub bytes_read: u64,
}

/// An open-drain two-wire bus with at most one slave.
pub struct I2cBus<S> {
    slave: Option<S>,
    master_scl_low: bool,
    master_sda_low: bool,
    slave_sda_low: bool,
    /// Resolved line levels after the last update.
    scl: bool,
    sda: bool,
    phase: Phase,
    stats: BusStats,
}

impl<S: I2cSlave> I2cBus<S> {
    /// A bus with `slave` on it (None: nothing is connected, and nothing ever ACKs).
    pub fn new(slave: Option<S>) -> I2cBus<S> {
        I2cBus {
            slave,
            master_scl_low: false,
            master_sda_low: false,
            slave_sda_low: false,
            scl: true,
            sda: true,
            phase: Phase::Idle,
            stats: BusStats::default(),
        }
    }

    pub fn slave(&self) -> Option<&S> {
        self.slave.as_ref()
    }

    pub fn stats(&self) -> BusStats {
        self.stats
    }

    /// SCL as everyone on the bus sees it.
    pub fn scl(&self) -> bool {
        self.scl
    }

    /// SDA as everyone on the bus sees it.
    pub fn sda(&self) -> bool {
        self.sda
    }

    /// Back to idle with every line released (card reset). The slave gets a STOP so that it
    /// does not wait for the rest of a transfer the reset cut short.
    pub fn reset(&mut self) {
        self.master_scl_low = false;
        self.master_sda_low = false;
        self.slave_sda_low = false;
        self.scl = true;
        self.sda = true;
        self.phase = Phase::Idle;
        if let Some(slave) = self.slave.as_mut() {
            slave.stop();
        }
    }

    /// The master pulls SCL and/or SDA low (true) or releases them (false). Call after every
    /// change of the master's drive; edges are evaluated against the previous levels.
    pub fn set_master(&mut self, scl_low: bool, sda_low: bool) {
        self.master_scl_low = scl_low;
        self.master_sda_low = sda_low;
        let (old_scl, old_sda) = (self.scl, self.sda);
        let scl = !self.master_scl_low;
        let sda = self.resolved_sda();
        match (old_scl, scl) {
            // SCL steady high: an SDA edge is a bus condition.
            (true, true) if old_sda && !sda => self.on_start(),
            (true, true) if !old_sda && sda => self.on_stop(),
            (false, true) => self.on_scl_rising(sda),
            (true, false) => self.on_scl_falling(),
            _ => {}
        }
        self.scl = scl;
        self.sda = self.resolved_sda();
    }

    fn resolved_sda(&self) -> bool {
        !(self.master_sda_low || self.slave_sda_low)
    }

    fn on_start(&mut self) {
        self.stats.starts += 1;
        self.slave_sda_low = false;
        self.phase = Phase::Receive {
            byte: 0,
            bits: 0,
            address: true,
        };
    }

    fn on_stop(&mut self) {
        self.stats.stops += 1;
        self.slave_sda_low = false;
        self.phase = Phase::Idle;
        if let Some(slave) = self.slave.as_mut() {
            slave.stop();
        }
    }

    /// Bits are sampled while SCL is high; the rising edge is the sampling point.
    fn on_scl_rising(&mut self, sda: bool) {
        match &mut self.phase {
            Phase::Receive { byte, bits, .. } if *bits < 8 => {
                *byte = *byte << 1 | u8::from(sda);
                *bits += 1;
            }
            Phase::MasterAck { acked } => *acked = Some(!sda),
            _ => {}
        }
    }

    /// SCL just fell: the slave may change SDA now, and a byte or ACK slot is complete.
    fn on_scl_falling(&mut self) {
        self.phase = match self.phase {
            Phase::Receive {
                byte,
                bits: 8,
                address: true,
            } => self.addressed(byte),
            Phase::Receive {
                byte,
                bits: 8,
                address: false,
            } => {
                let ack = self.slave.as_mut().is_some_and(|s| s.write(byte));
                self.slave_sda_low = ack;
                if ack {
                    Phase::Ack { read: false }
                } else {
                    Phase::Idle
                }
            }
            Phase::Ack { read: true } => self.send_next_byte(),
            Phase::Ack { read: false } => {
                self.slave_sda_low = false;
                Phase::Receive {
                    byte: 0,
                    bits: 0,
                    address: false,
                }
            }
            Phase::Transmit { byte, sent } => {
                let sent = sent + 1;
                if sent == 8 {
                    // Let go of SDA for the master's ACK/NAK.
                    self.slave_sda_low = false;
                    Phase::MasterAck { acked: None }
                } else {
                    self.slave_sda_low = byte >> (7 - sent) & 1 == 0;
                    Phase::Transmit { byte, sent }
                }
            }
            Phase::MasterAck { acked: Some(true) } => self.send_next_byte(),
            // NAK (or no ACK clock at all): the master is done reading; wait for STOP or START.
            Phase::MasterAck { .. } => {
                self.slave_sda_low = false;
                Phase::Idle
            }
            phase @ (Phase::Idle | Phase::Receive { .. }) => phase,
        };
    }

    /// The first byte after START is complete: ACK it if it names our slave and the slave agrees.
    fn addressed(&mut self, byte: u8) -> Phase {
        let read = byte & 1 == 1;
        let ack = self
            .slave
            .as_mut()
            .is_some_and(|s| s.address() == byte >> 1 && s.start(read));
        self.slave_sda_low = ack;
        if ack {
            self.stats.address_acks += 1;
            Phase::Ack { read }
        } else {
            self.stats.address_naks += 1;
            Phase::Idle
        }
    }

    /// Fetches the next byte from the slave and puts its MSB on SDA.
    fn send_next_byte(&mut self) -> Phase {
        let Some(slave) = self.slave.as_mut() else {
            self.slave_sda_low = false;
            return Phase::Idle;
        };
        let byte = slave.read();
        self.stats.bytes_read += 1;
        self.slave_sda_low = byte & 0x80 == 0;
        Phase::Transmit { byte, sent: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal master that drives the bus lines directly (the hibmc tests drive it through
    /// the card's GPIO registers the way i2c-algo-bit does).
    struct Master {
        bus: I2cBus<Eeprom>,
        scl_low: bool,
        sda_low: bool,
    }

    impl Master {
        fn new(slave: Option<Eeprom>) -> Master {
            Master {
                bus: I2cBus::new(slave),
                scl_low: false,
                sda_low: false,
            }
        }
        fn scl(&mut self, high: bool) {
            self.scl_low = !high;
            self.bus.set_master(self.scl_low, self.sda_low);
        }
        fn sda(&mut self, high: bool) {
            self.sda_low = !high;
            self.bus.set_master(self.scl_low, self.sda_low);
        }
        fn start(&mut self) {
            self.sda(true);
            self.scl(true);
            self.sda(false);
            self.scl(false);
        }
        fn stop(&mut self) {
            self.sda(false);
            self.scl(true);
            self.sda(true);
        }
        /// Sends a byte, returns whether it was ACKed.
        fn write(&mut self, byte: u8) -> bool {
            for i in (0..8).rev() {
                self.sda(byte >> i & 1 == 1);
                self.scl(true);
                self.scl(false);
            }
            self.sda(true);
            self.scl(true);
            let ack = !self.bus.sda();
            self.scl(false);
            ack
        }
        fn read(&mut self, ack: bool) -> u8 {
            self.sda(true);
            let mut byte = 0;
            for _ in 0..8 {
                self.scl(true);
                byte = byte << 1 | u8::from(self.bus.sda());
                self.scl(false);
            }
            self.sda(!ack);
            self.scl(true);
            self.scl(false);
            self.sda(true);
            byte
        }
    }

    fn pattern() -> Vec<u8> {
        (0..=255u8).map(|i| i ^ 0x5a).collect()
    }

    #[test]
    fn random_read_after_pointer_write() {
        let mut m = Master::new(Some(Eeprom::new(&pattern())));
        m.start();
        assert!(m.write(0xa0));
        assert!(m.write(0x10));
        m.start(); // repeated start
        assert!(m.write(0xa1));
        let got: Vec<u8> = (0..4).map(|i| m.read(i < 3)).collect();
        m.stop();
        assert_eq!(got, pattern()[0x10..0x14]);
        assert_eq!(m.bus.slave().map(Eeprom::pointer), Some(0x14));
        let s = m.bus.stats();
        assert_eq!(
            (s.starts, s.stops, s.address_acks, s.bytes_read),
            (2, 1, 2, 4)
        );
    }

    #[test]
    fn sequential_read_wraps_at_256() {
        let mut m = Master::new(Some(Eeprom::new(&pattern())));
        m.start();
        assert!(m.write(0xa0));
        assert!(m.write(0xfe));
        m.start();
        assert!(m.write(0xa1));
        let got: Vec<u8> = (0..4).map(|i| m.read(i < 3)).collect();
        m.stop();
        assert_eq!(got, [0xfe ^ 0x5a, 0xff ^ 0x5a, 0x5a, 0x01 ^ 0x5a]);
    }

    #[test]
    fn a_read_without_pointer_write_continues_where_the_last_stopped() {
        let mut m = Master::new(Some(Eeprom::new(&pattern())));
        m.start();
        assert!(m.write(0xa1));
        assert_eq!(m.read(false), pattern()[0]);
        m.stop();
        m.start();
        assert!(m.write(0xa1));
        assert_eq!(m.read(true), pattern()[1]);
        assert_eq!(m.read(false), pattern()[2]);
        m.stop();
    }

    #[test]
    fn other_addresses_are_not_acked() {
        let mut m = Master::new(Some(Eeprom::new(&pattern())));
        for addr in [0x00u8, 0x30, 0x37, 0x51, 0x7f] {
            m.start();
            assert!(!m.write(addr << 1), "address {addr:#x}");
            // Not addressed: further bytes are not ACKed either, and SDA stays free.
            assert!(!m.write(0x00));
            m.stop();
            assert!(m.bus.sda() && m.bus.scl());
        }
        assert_eq!(m.bus.stats().address_naks, 5);
    }

    #[test]
    fn nothing_acks_on_an_empty_bus() {
        let mut m = Master::new(None);
        m.start();
        assert!(!m.write(0xa0));
        m.stop();
        m.start();
        assert!(!m.write(0xa1));
        assert_eq!(m.read(false), 0xff, "a floating SDA reads as ones");
        m.stop();
    }

    #[test]
    fn start_in_the_middle_of_a_byte_restarts_addressing() {
        let mut m = Master::new(Some(Eeprom::new(&pattern())));
        m.start();
        // Three stray bits, then START again.
        for bit in [true, false, true] {
            m.sda(bit);
            m.scl(true);
            m.scl(false);
        }
        m.start();
        assert!(m.write(0xa0));
        assert!(m.write(0x42));
        m.start();
        assert!(m.write(0xa1));
        assert_eq!(m.read(false), pattern()[0x42]);
        m.stop();
    }

    #[test]
    fn stop_during_a_read_releases_the_bus() {
        let mut m = Master::new(Some(Eeprom::new(&[0x00; 256])));
        m.start();
        assert!(m.write(0xa1));
        // First data bit of 0x00: the slave holds SDA low while SCL is low.
        assert!(!m.bus.sda());
        // Reset instead of finishing: the bus must be idle and free.
        m.bus.reset();
        assert!(m.bus.sda() && m.bus.scl());
        m.scl_low = false;
        m.sda_low = false;
        m.start();
        assert!(m.write(0xa0));
        m.stop();
    }

    #[test]
    fn short_contents_read_as_erased() {
        let mut m = Master::new(Some(Eeprom::new(&[1, 2])));
        m.start();
        assert!(m.write(0xa1));
        let got: Vec<u8> = (0..3).map(|i| m.read(i < 2)).collect();
        m.stop();
        assert_eq!(got, [1, 2, 0xff]);
    }
}
