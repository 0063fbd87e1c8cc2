//! The models behind the server: a byte script of config and BAR accesses, resets and vblanks
//! against both cards. Models must accept any index, offset and length without panicking.
#![no_main]

use device::{build_model, CardSpec, DeviceModel, ModelKind, Monitor};
use libfuzzer_sys::fuzz_target;

fn op(model: &mut dyn DeviceModel, s: &[u8]) {
    let kind = s[0] % 6;
    let bar = (s[1] % 7) as usize;
    let offset = u64::from_le_bytes([s[2], s[3], s[4], s[5], 0, 0, 0, 0]) >> (s[1] >> 5);
    let len = [1usize, 2, 4, 8, 3, 0, 16, 256][(s[6] % 8) as usize];
    let data = [s[7]; 256];
    match kind {
        0 => {
            let mut buf = vec![0u8; len];
            model.bar_read(bar, offset, &mut buf);
        }
        1 => model.bar_write(bar, offset, &data[..len]),
        2 => {
            let mut buf = vec![0u8; len];
            model.config().read(offset & 0x1fff, &mut buf);
        }
        3 => model.config_mut().write(offset & 0x1fff, &data[..len]),
        4 => {
            let _ = model.vblank_period();
            let _ = model.vblank();
            let _ = model.scanout();
        }
        _ => {
            if s[7] == 0xa5 {
                model.reset();
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, script)) = data.split_first() else {
        return;
    };
    let kind = if which & 1 == 0 {
        ModelKind::Hibmc
    } else {
        ModelKind::Bochs
    };
    let monitor = if which & 2 != 0 { Monitor::Absent } else { Monitor::Default };
    let Ok(spec) = CardSpec::new(kind, Some(1 << 22), monitor) else {
        return;
    };
    let Ok(mut model) = build_model(&spec) else {
        return;
    };
    for s in script.chunks_exact(8) {
        op(&mut *model.device, s);
    }
    let _ = model.device.register_stats();
});
