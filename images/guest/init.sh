#!/bin/busybox sh
# vanish guest /init: mount, load modules, then serve the host's agent over virtio-serial.
# The host reads the console for progress lines starting with "vanish:".
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /run
/bin/busybox --install -s
export PATH=/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
# ptys for `vanish run --shell` (the agent's @shell)
mkdir -p /dev/pts && mount -t devpts -o ptmxmode=0666 devpts /dev/pts
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
. /etc/vanish/lib.sh
echo "vanish: init on $(uname -r)"

# Support modules first (virtio); modprobe resolves dependencies from modules.dep, and
# succeeds quietly for modules built into the kernel.
for m in $(cat /etc/vanish/modules); do
	modprobe "$m" || echo "vanish: modprobe $m failed"
done
# Firmware's part, done once at boot: set Bus Master Enable on the card, as a UEFI that drove the
# console on it leaves it. hibmc 6.1/6.12 never call pci_set_master(), and QEMU (like a real PCI
# device) drops MSIs while BME is 0, so without this their vblank IRQs never arrive at boot
# ("vblank wait timed out"). Only at boot: after unbind (pci_disable_device clears BME),
# remove/rescan or a hot-add no firmware runs, so a driver that does not set BME itself loses its
# interrupts there, on real hardware as here, and vanish reports what follows.
if [ -s /etc/vanish/bme-ids ]; then
	for bdf in $(find_card $(cat /etc/vanish/bme-ids)); do set_bus_master "$bdf"; done
fi
for m in $(cat /etc/vanish/driver-modules); do
	modprobe "$m" || echo "vanish: modprobe $m failed"
done
echo "vanish: modules loaded"
echo "vanish: $(uname -r) booted with $(cat /proc/cmdline)" > /dev/tty1 2>/dev/null

port=
i=0
while [ $i -lt 200 ]; do
	for d in /sys/class/virtio-ports/*; do
		[ "$(cat "$d/name" 2>/dev/null)" = vanish.agent ] && port=/dev/${d##*/}
	done
	[ -n "$port" ] && [ -e "$port" ] && break
	i=$((i + 1))
	sleep 0.05
done
if [ -z "$port" ]; then
	echo "vanish: no agent port (is virtio_console loaded?)"
	poweroff -f
fi
echo "vanish: agent on $port"
# The static Rust agent (images/agent) answers the host's typed requests (crate guest_protocol).
if [ -x /bin/vanish-agent ]; then
	exec /bin/vanish-agent serve --port "$port"
fi
echo "vanish: no /bin/vanish-agent in the initramfs"
poweroff -f
