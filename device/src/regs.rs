//! Register tables as data, and the one adapter that turns any guest access into register
//! accesses.
//!
//! A card declares its register BAR once, as a sorted table of [`Register`]s: offset, width,
//! element count (for arrays such as a palette), power-on value, write mask, write-1-to-clear
//! mask, and the behaviour hooks beside the entry. [`Registers`] holds the values and the
//! per-register access counters; [`read()`] and [`write()`] are the only code that interprets an
//! access, so every card gets the same access-size semantics:
//!
//! - an access of any length at any alignment is split at register boundaries; each piece is a
//!   register-sized read, or a read-modify-write that changes only the bytes the access covers
//!   (`write_mask` picks the bits an ordinary write may change, `w1c` the bits a written 1
//!   clears, both limited to those bytes);
//! - bytes outside every register (a gap, past the end of the block, another BAR) read as 0 and
//!   drop writes; the access is counted once as unimplemented, and the first such offset (rounded
//!   down to the block's gap granule) is tallied, up to [`MAX_TALLIED_OFFSETS`] distinct ones;
//! - hooks run once per register piece: a read hook computes what the guest sees from the model
//!   (it cannot change it: reads have no side effects on either card), a write hook runs after the
//!   masked value is stored and may act on it (drive a bus, refuse a value).
//!
//! QEMU splits accesses the same way in `memory.c` (`access_with_adjusted_size`), except that it
//! widens a sub-register write by filling the other bytes with zeros where a device declares a
//! minimum implementation size (bochs-display's DISPI block: `.impl.min_access_size = 2`). Here a
//! narrow write keeps the other bytes, as the models always did; the kernel drivers never issue
//! such writes (bochs-drm: `readb` EDID, `readw`/`writew` DISPI, `readl`/`writel` qext; hibmc-drm:
//! `readl`/`writel` only), so the difference is unobservable to them.
//!
//! Hand-written, not a crate: register crates (`tock-registers` and the like) describe a device
//! from the driver's side; nothing maintained implements the device side of a register file.

use std::collections::BTreeMap;

/// Distinct unimplemented offsets remembered for reports; a guest scanning a BAR cannot make the
/// tally grow past this (the total count keeps counting).
pub const MAX_TALLIED_OFFSETS: usize = 4096;

/// Computes what the guest reads from element `element` of a register whose stored value is
/// `stored`.
pub type ReadHook<M> = fn(model: &M, element: usize, stored: u64) -> u64;

/// Runs after a write to a register was stored.
pub type WriteHook<M> = fn(model: &mut M, write: Written);

/// What a write did, for a [`WriteHook`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// Element of the register (0 unless it is an array).
    pub element: usize,
    /// Offset of that element in the block.
    pub offset: u64,
    /// The value before the write.
    pub old: u64,
    /// The value stored now (write mask and W1C applied).
    pub new: u64,
}

/// One register (or an array of equal registers) of a block.
///
/// Invariants, checked by [`Registers::new`]: `width` is 1, 2, 4 or 8; `offset` is a multiple of
/// `width`; `count >= 1`; `reset`, `write_mask` and `w1c` fit in `width` bytes; `write_mask` and
/// `w1c` do not overlap (a bit is either written or cleared by a 1).
pub struct Register<M> {
    pub name: &'static str,
    pub offset: u64,
    /// Bytes per element.
    pub width: u8,
    /// Elements, `width` bytes apart.
    pub count: u32,
    /// Power-on value of every element.
    pub reset: u64,
    /// Bits an ordinary write changes; the others keep their value.
    pub write_mask: u64,
    /// Bits a written 1 clears (write-1-to-clear status).
    pub w1c: u64,
    pub on_read: Option<ReadHook<M>>,
    pub on_write: Option<WriteHook<M>>,
}

// Manual impls: derives would demand `M: Clone`, which the hooks do not need.
impl<M> Clone for Register<M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Register<M> {}

impl<M> std::fmt::Debug for Register<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Register")
            .field("name", &self.name)
            .field("offset", &format_args!("{:#x}", self.offset))
            .field("width", &self.width)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

const fn width_mask(width: u8) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width as u32)) - 1
    }
}

impl<M> Register<M> {
    /// Read-write storage of `width` bytes, power-on value 0.
    pub const fn storage(name: &'static str, offset: u64, width: u8) -> Self {
        Register {
            name,
            offset,
            width,
            count: 1,
            reset: 0,
            write_mask: width_mask(width),
            w1c: 0,
            on_read: None,
            on_write: None,
        }
    }

    /// A read-only register reading `value` (unless a read hook says otherwise).
    pub const fn read_only(name: &'static str, offset: u64, width: u8, value: u64) -> Self {
        Self::storage(name, offset, width)
            .reset(value)
            .write_mask(0)
    }

    /// Status bits that latch and are cleared by writing 1 (`bits`); no bit is writable.
    pub const fn w1c(name: &'static str, offset: u64, width: u8, bits: u64) -> Self {
        let mut r = Self::storage(name, offset, width).write_mask(0);
        r.w1c = bits;
        r
    }

    pub const fn reset(mut self, value: u64) -> Self {
        self.reset = value;
        self
    }

    pub const fn write_mask(mut self, mask: u64) -> Self {
        self.write_mask = mask;
        self
    }

    /// `count` elements of this register, `width` bytes apart.
    pub const fn array(mut self, count: u32) -> Self {
        self.count = count;
        self
    }

    pub const fn on_read(mut self, hook: ReadHook<M>) -> Self {
        self.on_read = Some(hook);
        self
    }

    pub const fn on_write(mut self, hook: WriteHook<M>) -> Self {
        self.on_write = Some(hook);
        self
    }

    /// Bytes the register (all its elements) spans.
    pub const fn span(&self) -> u64 {
        self.width as u64 * self.count as u64
    }

    /// Bytes past the end.
    pub const fn end(&self) -> u64 {
        self.offset + self.span()
    }

    fn check(&self) -> Result<(), TableError> {
        let fail = |why: &str| {
            Err(TableError(format!(
                "{} at {:#x}: {why}",
                self.name, self.offset
            )))
        };
        if !matches!(self.width, 1 | 2 | 4 | 8) {
            return fail("width must be 1, 2, 4 or 8 bytes");
        }
        // Width is a power of two here, so the low bits say whether the offset is a multiple.
        if self.offset & (u64::from(self.width) - 1) != 0 {
            return fail("offset is not a multiple of the width");
        }
        if self.count == 0 {
            return fail("no elements");
        }
        let outside = !width_mask(self.width);
        if (self.reset | self.write_mask | self.w1c) & outside != 0 {
            return fail("reset value or masks wider than the register");
        }
        if self.write_mask & self.w1c != 0 {
            return fail("a bit is both writable and write-1-to-clear");
        }
        Ok(())
    }
}

/// A register table that breaks [`Register`]'s invariants or overlaps itself: a bug in a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("register table: {0}")]
pub struct TableError(pub String);

/// Access counts of one register, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterCount {
    pub name: &'static str,
    pub offset: u64,
    /// Register pieces read and written: an access that straddles two registers counts at both.
    pub reads: u64,
    pub writes: u64,
}

/// What the guest did to a register block, for reports and the control socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterStats {
    /// Every register the guest touched, by offset; an array counts as one register at its
    /// first element's offset.
    pub registers: Vec<RegisterCount>,
    /// Accesses that touched bytes outside every register (each counted once).
    pub unimplemented: u64,
    /// (offset, accesses) of the unimplemented offsets touched, at most
    /// [`MAX_TALLIED_OFFSETS`] of them.
    pub unimplemented_offsets: Vec<(u64, u64)>,
}

impl RegisterStats {
    /// (name, offset, reads, writes) of every register touched, for logs and assertions.
    pub fn counts(&self) -> Vec<(&'static str, u64, u64, u64)> {
        self.registers
            .iter()
            .map(|r| (r.name, r.offset, r.reads, r.writes))
            .collect()
    }
}

/// The register block of one BAR: the table, the values and the counters.
///
/// Invariants: `table` is sorted by offset, its entries do not overlap and all end within
/// `size` (checked by [`Registers::new`]); `first_slot[i]` is where entry `i`'s elements start
/// in `values`, which holds one value per element, each within its register's width; `counts`
/// has one pair per entry. Counters survive [`Registers::reset`]: they describe what the guest
/// did, not the device state.
pub struct Registers<M: 'static> {
    table: &'static [Register<M>],
    bar: usize,
    size: u64,
    /// Unimplemented offsets are tallied per naturally aligned granule of this many bytes.
    granule: u64,
    first_slot: Vec<usize>,
    values: Vec<u64>,
    counts: Vec<[u64; 2]>,
    unimplemented: u64,
    unimplemented_offsets: BTreeMap<u64, u64>,
}

/// A model whose register BAR is a [`Registers`] block; what [`read()`] and [`write()`] need.
pub trait RegisterMapped: Sized + 'static {
    fn registers(&self) -> &Registers<Self>;
    fn registers_mut(&mut self) -> &mut Registers<Self>;
}

/// The part of an access that one step of the adapter handles.
enum Piece {
    /// `n` bytes of element `element` of table entry `entry`, from byte lane `lane`.
    Register {
        entry: usize,
        element: usize,
        lane: usize,
        n: usize,
    },
    /// `n` bytes outside every register; `at` is the granule to tally.
    Gap { at: u64, n: usize },
}

impl<M: 'static> Registers<M> {
    /// The block of BAR `bar`, `size` bytes, laid out by `table`; gaps are tallied per `granule`
    /// bytes (a power of two: the card's usual register width).
    pub fn new(
        table: &'static [Register<M>],
        bar: usize,
        size: u64,
        granule: u64,
    ) -> Result<Self, TableError> {
        if !granule.is_power_of_two() {
            return Err(TableError(format!(
                "granule {granule} is not a power of two"
            )));
        }
        let mut end = 0;
        let mut first_slot = Vec::with_capacity(table.len());
        let mut slots = 0usize;
        for reg in table {
            reg.check()?;
            if reg.offset < end {
                return Err(TableError(format!(
                    "{} at {:#x} overlaps or precedes the register before it",
                    reg.name, reg.offset
                )));
            }
            end = reg.end();
            if end > size {
                return Err(TableError(format!(
                    "{} ends at {end:#x}, past the block's {size:#x} bytes",
                    reg.name
                )));
            }
            first_slot.push(slots);
            slots += reg.count as usize;
        }
        let mut block = Registers {
            table,
            bar,
            size,
            granule,
            first_slot,
            values: vec![0; slots],
            counts: vec![[0; 2]; table.len()],
            unimplemented: 0,
            unimplemented_offsets: BTreeMap::new(),
        };
        block.reset();
        Ok(block)
    }

    /// Every register to its power-on value.
    pub fn reset(&mut self) {
        for (entry, reg) in self.table.iter().enumerate() {
            let first = self.first_slot[entry];
            self.values[first..first + reg.count as usize].fill(reg.reset);
        }
    }

    /// (table entry, element) of the register element that starts exactly at `offset`.
    fn locate(&self, offset: u64) -> Option<(usize, usize)> {
        let entry = self.table.partition_point(|r| r.end() <= offset);
        let reg = self.table.get(entry)?;
        let rel = offset.checked_sub(reg.offset)?;
        (rel & (u64::from(reg.width) - 1) == 0)
            .then_some((entry, (rel / u64::from(reg.width)) as usize))
    }

    fn slot(&self, offset: u64) -> Option<usize> {
        self.locate(offset)
            .map(|(entry, element)| self.first_slot[entry] + element)
    }

    /// The stored value of the register element at `offset` (not what a read hook would make of
    /// it). `offset` is one of the model's own constants; an offset that names no register is a
    /// bug in the model and reads 0.
    pub fn get(&self, offset: u64) -> u64 {
        debug_assert!(self.slot(offset).is_some(), "no register at {offset:#x}");
        self.slot(offset).map_or(0, |slot| self.values[slot])
    }

    /// Stores `value` into the register element at `offset`, bypassing the write masks and
    /// hooks: the device itself changing its state (a status bit latching, a refused value).
    pub fn set(&mut self, offset: u64, value: u64) {
        debug_assert!(self.slot(offset).is_some(), "no register at {offset:#x}");
        if let Some((entry, element)) = self.locate(offset) {
            self.values[self.first_slot[entry] + element] =
                value & width_mask(self.table[entry].width);
        }
    }

    /// Accesses to offsets no register covers, so far.
    pub fn unimplemented(&self) -> u64 {
        self.unimplemented
    }

    /// What a guest read of the element `element` of entry `entry` returns: the stored value
    /// through the register's read hook, if it has one. `read` and `peek` both use it.
    fn value(model: &M, entry: usize, element: usize) -> u64
    where
        M: RegisterMapped,
    {
        let regs = model.registers();
        let stored = regs.values[regs.first_slot[entry] + element];
        regs.table[entry]
            .on_read
            .map_or(stored, |hook| hook(model, element, stored))
    }

    /// Counters so far.
    pub fn stats(&self) -> RegisterStats {
        RegisterStats {
            registers: self
                .table
                .iter()
                .zip(&self.counts)
                .filter(|(_, counts)| counts[0] + counts[1] > 0)
                .map(|(reg, &[reads, writes])| RegisterCount {
                    name: reg.name,
                    offset: reg.offset,
                    reads,
                    writes,
                })
                .collect(),
            unimplemented: self.unimplemented,
            unimplemented_offsets: self
                .unimplemented_offsets
                .iter()
                .map(|(&o, &n)| (o, n))
                .collect(),
        }
    }

    /// The piece of an access that starts at `at` with `left` bytes to go (`left > 0`).
    fn piece(&self, at: u64, left: usize) -> Piece {
        let entry = self.table.partition_point(|r| r.end() <= at);
        let next = self.table.get(entry);
        if let Some(reg) = next.filter(|r| r.offset <= at) {
            let width = u64::from(reg.width);
            let rel = at - reg.offset;
            let lane = (rel % width) as usize;
            return Piece::Register {
                entry,
                element: (rel / width) as usize,
                lane,
                n: (reg.width as usize - lane).min(left),
            };
        }
        let granule_start = at & !(self.granule - 1);
        if at >= self.size {
            // Past the end of the block: the whole rest of the access (bytes that would wrap
            // the address space included; only the first missed offset is tallied anyway).
            return Piece::Gap {
                at: granule_start,
                n: left,
            };
        }
        // Up to the next granule, register or the end of the block, whichever comes first:
        // each is past `at`, so the piece is never empty.
        let granule_end = granule_start.saturating_add(self.granule);
        let next_register = next.map_or(u64::MAX, |r| r.offset);
        let stop = granule_end.min(next_register).min(self.size);
        let n = usize::try_from(stop - at).map_or(left, |n| n.min(left));
        Piece::Gap {
            at: granule_start,
            n,
        }
    }

    fn note_unimplemented(&mut self, at: Option<u64>) {
        self.unimplemented += 1;
        if let Some(at) = at {
            if self.unimplemented_offsets.len() < MAX_TALLIED_OFFSETS
                || self.unimplemented_offsets.contains_key(&at)
            {
                *self.unimplemented_offsets.entry(at).or_insert(0) += 1;
            }
        }
    }
}

/// Mask of `n` bytes from byte lane `lane`.
fn lanes(lane: usize, n: usize) -> u64 {
    width_mask(n as u8) << (8 * lane)
}

/// What the guest reads from the register element at `offset`, as [`read()`] would return it but
/// without counting; None if no register element starts there.
pub fn peek<M: RegisterMapped>(model: &M, offset: u64) -> Option<u64> {
    let (entry, element) = model.registers().locate(offset)?;
    Some(Registers::value(model, entry, element))
}

/// One register piece of an access, for [`access`]'s callback.
struct Part {
    entry: usize,
    element: usize,
    /// First byte lane of the element the piece covers.
    lane: usize,
    /// Where the piece lies in the access's data.
    bytes: std::ops::Range<usize>,
}

/// The one walk over an access of `len` bytes both directions share: other BARs, gaps, the end
/// of the block and the end of the address space are counted here (once per access); each
/// register piece goes to `on_register`.
fn access<M: RegisterMapped>(
    model: &mut M,
    bar: usize,
    offset: u64,
    len: usize,
    mut on_register: impl FnMut(&mut M, Part),
) {
    if len == 0 {
        return;
    }
    if bar != model.registers().bar {
        model.registers_mut().note_unimplemented(None);
        return;
    }
    let mut missed = None;
    let mut done = 0;
    while done < len {
        let Some(at) = offset.checked_add(done as u64) else {
            missed = missed.or(Some(None));
            break;
        };
        match model.registers().piece(at, len - done) {
            Piece::Register {
                entry,
                element,
                lane,
                n,
            } => {
                let part = Part {
                    entry,
                    element,
                    lane,
                    bytes: done..done + n,
                };
                on_register(model, part);
                done += n;
            }
            Piece::Gap { at, n } => {
                missed = missed.or(Some(Some(at)));
                done += n;
            }
        }
    }
    if let Some(at) = missed {
        model.registers_mut().note_unimplemented(at);
    }
}

/// A guest read of `data.len()` bytes at `offset` of BAR `bar`. Never panics: see the module
/// documentation for what unimplemented bytes do.
pub fn read<M: RegisterMapped>(model: &mut M, bar: usize, offset: u64, data: &mut [u8]) {
    data.fill(0);
    access(model, bar, offset, data.len(), |model, part| {
        let value = Registers::value(model, part.entry, part.element);
        let lanes = part.lane..part.lane + part.bytes.len();
        data[part.bytes].copy_from_slice(&value.to_le_bytes()[lanes]);
        model.registers_mut().counts[part.entry][0] += 1;
    });
}

/// A guest write of `data` at `offset` of BAR `bar`: each register piece is a read-modify-write
/// through the register's write mask and W1C mask, then its write hook. Never panics.
pub fn write<M: RegisterMapped>(model: &mut M, bar: usize, offset: u64, data: &[u8]) {
    access(model, bar, offset, data.len(), |model, part| {
        let n = part.bytes.len();
        let mut bytes = [0u8; 8];
        bytes[part.lane..part.lane + n].copy_from_slice(&data[part.bytes]);
        let value = u64::from_le_bytes(bytes);
        let covered = lanes(part.lane, n);
        let regs = model.registers_mut();
        let reg = regs.table[part.entry];
        let slot = regs.first_slot[part.entry] + part.element;
        let old = regs.values[slot];
        let writable = reg.write_mask & covered;
        let cleared = reg.w1c & covered & value;
        let new = (old & !writable | value & writable) & !cleared;
        regs.values[slot] = new;
        regs.counts[part.entry][1] += 1;
        if let Some(hook) = reg.on_write {
            let offset = reg.offset + part.element as u64 * u64::from(reg.width);
            hook(
                model,
                Written {
                    element: part.element,
                    offset,
                    old,
                    new,
                },
            );
        }
    });
}

/// A conformance check each card's tests run over windows of its BAR, against a byte map
/// written from the card's documentation (not from its table).
#[cfg(test)]
pub(crate) mod conformance {
    use std::ops::Range;

    use crate::DeviceModel;

    /// What one byte of a register block is, as the card's documentation says.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Byte {
        /// Read-write storage.
        Storage,
        /// Always reads this value; writes do nothing.
        Fixed(u8),
        /// Latched status bits (this value after `make`), cleared by writing 1.
        W1c(u8),
        /// Outside every register: reads 0, an access touching it counts as unimplemented.
        Gap,
    }

    /// What a fill with 1-byte writes leaves in storage byte `offset`.
    fn pattern(offset: u64) -> u8 {
        (offset as u8).wrapping_mul(37) ^ 0x5a
    }

    /// Every access width (1, 2, 4, 8) at every start inside `window` (so every alignment 0..7,
    /// and every straddle of neighbouring registers the window holds): a read returns the
    /// documented bytes and counts as unimplemented iff it touches a gap; a write changes
    /// exactly the covered storage bytes, clears exactly the written W1C ones, and nothing else.
    /// `make` builds a fresh card in the state the map describes.
    pub(crate) fn check(
        make: &dyn Fn() -> Box<dyn DeviceModel>,
        bar: usize,
        window: Range<u64>,
        byte: &dyn Fn(u64) -> Byte,
    ) {
        let fresh = || {
            let mut card = make();
            for o in window.clone() {
                if byte(o) == Byte::Storage {
                    card.bar_write(bar, o, &[pattern(o)]);
                }
            }
            card
        };
        let state = |o: u64| match byte(o) {
            Byte::Storage => pattern(o),
            Byte::Fixed(v) | Byte::W1c(v) => v,
            Byte::Gap => 0,
        };
        let unimplemented = |card: &dyn DeviceModel| card.register_stats().unimplemented;
        for len in [1u64, 2, 4, 8] {
            for at in window.start..=window.end - len {
                let covered = at..at + len;
                let touches_gap = covered.clone().any(|o| byte(o) == Byte::Gap);

                let mut card = fresh();
                let before = unimplemented(&*card);
                let mut got = vec![0xa5; len as usize];
                card.bar_read(bar, at, &mut got);
                let want: Vec<u8> = covered.clone().map(state).collect();
                assert_eq!(got, want, "read of {len} at {at:#x}");
                assert_eq!(
                    unimplemented(&*card) - before,
                    u64::from(touches_gap),
                    "unimplemented count of the read of {len} at {at:#x}"
                );

                let mut card = fresh();
                let before = unimplemented(&*card);
                let data: Vec<u8> = (0..len as u8)
                    .map(|i| 0xc3 ^ i.wrapping_mul(0x11))
                    .collect();
                card.bar_write(bar, at, &data);
                assert_eq!(
                    unimplemented(&*card) - before,
                    u64::from(touches_gap),
                    "unimplemented count of the write of {len} at {at:#x}"
                );
                for o in window.clone() {
                    let mut one = [0xa5];
                    card.bar_read(bar, o, &mut one);
                    let want = match (byte(o), covered.contains(&o)) {
                        (Byte::Storage, true) => data[(o - at) as usize],
                        (Byte::W1c(v), true) => v & !data[(o - at) as usize],
                        _ => state(o),
                    };
                    assert_eq!(
                        one[0], want,
                        "byte {o:#x} after a write of {len} at {at:#x}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block exercising every feature: widths 1, 2, 4 and 8, an array, a W1C register, a
    /// partial write mask, read and write hooks, gaps between registers and after the last one.
    struct Toy {
        regs: Registers<Toy>,
        /// What the write hook saw, in order.
        writes: Vec<Written>,
        /// Added by the read hook of MIRROR.
        bias: u64,
    }

    const BYTE: u64 = 0x00;
    const HALF: u64 = 0x02;
    const WORD: u64 = 0x04;
    const QUAD: u64 = 0x08;
    const STATUS: u64 = 0x10;
    const MASKED: u64 = 0x14;
    const MIRROR: u64 = 0x18;
    const ARRAY: u64 = 0x20;
    const SIZE: u64 = 0x40;

    static TOY: [Register<Toy>; 8] = [
        Register::storage("BYTE", BYTE, 1).reset(0x11),
        Register::storage("HALF", HALF, 2).reset(0x2222),
        Register::storage("WORD", WORD, 4)
            .reset(0x4444_4444)
            .on_write(|t: &mut Toy, w| t.writes.push(w)),
        Register::storage("QUAD", QUAD, 8).reset(0x8888_8888_8888_8888),
        Register::w1c("STATUS", STATUS, 4, 0xff),
        Register::storage("MASKED", MASKED, 4).write_mask(0x00ff_00ff),
        Register::read_only("MIRROR", MIRROR, 4, 0x100).on_read(|t: &Toy, _, v| v + t.bias),
        // 0x1c..0x20 is a gap; four 16-bit entries, then a gap to the end.
        Register::storage("ARRAY", ARRAY, 2).array(4),
    ];

    impl RegisterMapped for Toy {
        fn registers(&self) -> &Registers<Toy> {
            &self.regs
        }
        fn registers_mut(&mut self) -> &mut Registers<Toy> {
            &mut self.regs
        }
    }

    fn toy() -> Toy {
        Toy {
            regs: Registers::new(&TOY, 1, SIZE, 4).unwrap(),
            writes: Vec::new(),
            bias: 0,
        }
    }

    fn rd(t: &mut Toy, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0xa5; len];
        read(t, 1, offset, &mut data);
        data
    }

    /// The block as the guest sees it, byte by byte, computed from stored values (the reference
    /// the adapter is checked against; MIRROR has no bias in these tests).
    fn image(t: &Toy) -> Vec<u8> {
        let mut img = vec![0u8; SIZE as usize];
        for reg in t.regs.table {
            for e in 0..reg.count as u64 {
                let at = reg.offset + e * u64::from(reg.width);
                let v = peek(t, at).unwrap().to_le_bytes();
                img[at as usize..(at + u64::from(reg.width)) as usize]
                    .copy_from_slice(&v[..reg.width as usize]);
            }
        }
        img
    }

    fn implemented(offset: u64) -> bool {
        TOY.iter().any(|r| (r.offset..r.end()).contains(&offset))
    }

    #[test]
    fn reset_values_and_hooks_are_what_reads_return() {
        let mut t = toy();
        assert_eq!(rd(&mut t, BYTE, 1), [0x11]);
        assert_eq!(rd(&mut t, HALF, 2), [0x22, 0x22]);
        assert_eq!(rd(&mut t, WORD, 4), [0x44; 4]);
        assert_eq!(rd(&mut t, QUAD, 8), [0x88; 8]);
        assert_eq!(rd(&mut t, STATUS, 4), [0; 4]);
        t.bias = 5;
        assert_eq!(rd(&mut t, MIRROR, 4), [0x05, 0x01, 0, 0]);
        assert_eq!(peek(&t, MIRROR), Some(0x105));
        assert_eq!(peek(&t, MIRROR + 1), None, "not the start of a register");
        assert_eq!(peek(&t, 0x1c), None, "a gap");
        assert_eq!(t.regs.stats().unimplemented, 0);
    }

    /// Every width at every alignment over the whole block and past its end, against the
    /// byte image: a read returns exactly the image's bytes (0 outside registers), and counts
    /// as unimplemented iff it covers a byte outside every register.
    #[test]
    fn reads_of_every_width_at_every_alignment_match_the_byte_image() {
        let mut t = toy();
        let img = image(&t);
        for len in [1usize, 2, 4, 8] {
            for base in (0..SIZE + 8).step_by(8) {
                for align in 0..8u64 {
                    let at = base + align;
                    let before = t.regs.stats().unimplemented;
                    let got = rd(&mut t, at, len);
                    let want: Vec<u8> = (at..at + len as u64)
                        .map(|o| img.get(o as usize).copied().unwrap_or(0))
                        .collect();
                    assert_eq!(got, want, "read {len} at {at:#x}");
                    let missing = (at..at + len as u64).any(|o| !implemented(o));
                    assert_eq!(
                        t.regs.stats().unimplemented - before,
                        u64::from(missing),
                        "unimplemented count of read {len} at {at:#x}"
                    );
                }
            }
        }
    }

    /// Every width at every alignment: a write changes exactly the covered bytes of writable
    /// registers (through their masks), nothing else, and W1C bits only where a 1 is written.
    #[test]
    fn writes_of_every_width_at_every_alignment_change_only_covered_writable_bytes() {
        for len in [1usize, 2, 4, 8] {
            for at in 0..SIZE + 8 {
                let mut t = toy();
                t.regs.set(STATUS, 0xff);
                let before = image(&t);
                let data: Vec<u8> = (0..len).map(|i| 0xc0 | i as u8).collect();
                write(&mut t, 1, at, &data);
                let after = image(&t);
                for o in 0..SIZE {
                    let covered = (at..at + len as u64).contains(&o);
                    let written = covered.then(|| data[(o - at) as usize]);
                    let lane_bits = |reg: u64, mask: u64| (mask >> (8 * (o - reg))) as u8;
                    let want = match TOY.iter().find(|r| (r.offset..r.end()).contains(&o)) {
                        None => 0,
                        Some(r) => {
                            let elem_start = o - (o - r.offset) % u64::from(r.width);
                            let wm = lane_bits(elem_start, r.write_mask);
                            let w1c = lane_bits(elem_start, r.w1c);
                            let old = before[o as usize];
                            match written {
                                None => old,
                                Some(v) => (old & !wm | v & wm) & !(v & w1c),
                            }
                        }
                    };
                    assert_eq!(
                        after[o as usize], want,
                        "byte {o:#x} after writing {len} at {at:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn write_straddling_two_registers_does_a_read_modify_write_of_each() {
        let mut t = toy();
        // Last two bytes of WORD and first two of QUAD.
        write(&mut t, 1, WORD + 2, &[1, 2, 3, 4]);
        assert_eq!(t.regs.get(WORD), 0x0201_4444);
        assert_eq!(t.regs.get(QUAD), 0x8888_8888_8888_0403);
        assert_eq!(
            t.writes,
            [Written {
                element: 0,
                offset: WORD,
                old: 0x4444_4444,
                new: 0x0201_4444
            }],
            "the hook runs once, with the merged value"
        );
        let stats = t.regs.stats();
        let count = |name| stats.registers.iter().find(|r| r.name == name).copied();
        assert_eq!(count("WORD").map(|c| (c.reads, c.writes)), Some((0, 1)));
        assert_eq!(count("QUAD").map(|c| (c.reads, c.writes)), Some((0, 1)));
        assert_eq!(stats.unimplemented, 0);
    }

    #[test]
    fn write_one_to_clear_clears_only_written_ones_in_covered_bytes() {
        let mut t = toy();
        t.regs.set(STATUS, 0xff);
        write(&mut t, 1, STATUS, &0u32.to_le_bytes());
        assert_eq!(t.regs.get(STATUS), 0xff, "writing 0 clears nothing");
        write(&mut t, 1, STATUS, &0x0000_0f05u32.to_le_bytes());
        assert_eq!(
            t.regs.get(STATUS),
            0xfa,
            "bits above the W1C mask do nothing"
        );
        write(&mut t, 1, STATUS + 1, &[0xff]);
        assert_eq!(
            t.regs.get(STATUS),
            0xfa,
            "a byte write reaches only its lane"
        );
        write(&mut t, 1, STATUS, &[0xf0]);
        assert_eq!(t.regs.get(STATUS), 0x0a);
    }

    #[test]
    fn write_mask_keeps_read_only_bits_and_read_only_registers() {
        let mut t = toy();
        write(&mut t, 1, MASKED, &u32::MAX.to_le_bytes());
        assert_eq!(t.regs.get(MASKED), 0x00ff_00ff);
        write(&mut t, 1, MIRROR, &u32::MAX.to_le_bytes());
        assert_eq!(t.regs.get(MIRROR), 0x100);
        assert_eq!(
            t.regs.stats().unimplemented,
            0,
            "a read-only register is implemented: the write is counted, not missed"
        );
    }

    #[test]
    fn arrays_are_elements_counted_as_one_register() {
        let mut t = toy();
        write(&mut t, 1, ARRAY + 6, &0xbeefu16.to_le_bytes());
        // A 4-byte access covers two elements.
        write(&mut t, 1, ARRAY + 2, &0x1234_5678u32.to_le_bytes());
        assert_eq!(t.regs.get(ARRAY + 6), 0xbeef);
        assert_eq!(t.regs.get(ARRAY + 2), 0x5678);
        assert_eq!(t.regs.get(ARRAY + 4), 0x1234);
        assert_eq!(
            rd(&mut t, ARRAY, 8),
            [0, 0, 0x78, 0x56, 0x34, 0x12, 0xef, 0xbe]
        );
        let stats = t.regs.stats();
        assert_eq!(
            stats.registers,
            [RegisterCount {
                name: "ARRAY",
                offset: ARRAY,
                reads: 4,
                writes: 3
            }]
        );
    }

    #[test]
    fn gaps_and_the_end_of_the_block_are_zero_counted_and_tallied_per_granule() {
        let mut t = toy();
        assert_eq!(rd(&mut t, 0x1c, 4), [0; 4]);
        write(&mut t, 1, 0x1e, &[1, 2]);
        // Straddles MIRROR and the gap: the register part is served, the access is counted.
        assert_eq!(rd(&mut t, MIRROR + 1, 4), [1, 0, 0, 0]);
        // Past the end, and one that wraps the address space.
        assert_eq!(rd(&mut t, SIZE - 2, 8), [0; 8]);
        write(&mut t, 1, u64::MAX - 1, &[9; 4]);
        // Another BAR.
        assert_eq!(
            {
                let mut d = [0xa5; 4];
                read(&mut t, 0, 0, &mut d);
                d
            },
            [0; 4]
        );
        write(&mut t, 3, 0, &[1]);
        let stats = t.regs.stats();
        assert_eq!(stats.unimplemented, 7);
        assert_eq!(
            stats.unimplemented_offsets,
            [(0x1c, 3), (0x3c, 1), (u64::MAX - 3, 1)],
            "granule starts; none for other BARs or the wrapped part"
        );
        // Zero-length accesses touch nothing.
        read(&mut t, 1, 0x1c, &mut []);
        write(&mut t, 1, 0x1c, &[]);
        assert_eq!(t.regs.stats().unimplemented, 7);
    }

    #[test]
    fn reset_restores_power_on_values_and_keeps_the_counters() {
        let mut t = toy();
        write(&mut t, 1, 0, &[0xff; 16]);
        t.regs.set(STATUS, 3);
        rd(&mut t, 0x1c, 4);
        t.regs.reset();
        assert_eq!(image(&t), image(&toy()));
        let stats = t.regs.stats();
        assert_eq!(stats.registers.len(), 4, "BYTE, HALF, WORD, QUAD");
        assert_eq!(stats.unimplemented, 2, "the gap at 1 and the read at 0x1c");
    }

    #[test]
    fn broken_tables_are_refused() {
        static OVERLAP: [Register<Toy>; 2] =
            [Register::storage("A", 0, 4), Register::storage("B", 2, 2)];
        static MISALIGNED: [Register<Toy>; 1] = [Register::storage("A", 2, 4)];
        static WIDTH: [Register<Toy>; 1] = [Register::storage("A", 0, 3)];
        static MASKS: [Register<Toy>; 1] = [Register::w1c("A", 0, 4, 1).write_mask(1)];
        static WIDE_RESET: [Register<Toy>; 1] = [Register::storage("A", 0, 2).reset(0x1_0000)];
        static PAST_END: [Register<Toy>; 1] = [Register::storage("A", 0, 4).array(17)];
        for table in [
            &OVERLAP[..],
            &MISALIGNED,
            &WIDTH,
            &MASKS,
            &WIDE_RESET,
            &PAST_END,
        ] {
            assert!(Registers::new(table, 1, SIZE, 4).is_err(), "{table:?}");
        }
        assert!(Registers::new(&TOY, 1, SIZE, 3).is_err(), "granule");
        assert!(Registers::new(&TOY, 1, 0x20, 4).is_err(), "block too small");
    }
}
