#!/bin/busybox sh
# vanish guest /init: mount, load modules, then serve the host's agent over virtio-serial.
# The host reads the console for progress lines starting with "vanish:".
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /run
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
. /etc/vanish/lib.sh
echo "vanish: init on $(uname -r)"

modules=/lib/modules/$(uname -r)
# Support modules first (virtio, DRM helpers), in dependency order.
for m in $(cat /etc/vanish/modules); do
	insmod "$modules/$m" || echo "vanish: insmod $m failed"
done
# hibmc 6.1/6.12 never set Bus Master Enable, and QEMU drops MSIs of a device whose BME is 0
# (msi_notify writes through the bus-master address space). Real hosts deliver them anyway, so
# the harness sets BME before the driver probes instead of patching the guest kernel.
if [ -s /etc/vanish/bme-ids ]; then
	for bdf in $(find_card $(cat /etc/vanish/bme-ids)); do set_bus_master "$bdf"; done
fi
for m in $(cat /etc/vanish/driver-modules); do
	insmod "$modules/$m" || echo "vanish: insmod $m failed"
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
# The static Rust agent (images/agent) adds userspace DRM/fbdev clients; the shell loop below
# speaks the same line protocol for plain commands.
if [ -x /bin/vanish-agent ]; then
	exec /bin/vanish-agent serve --port "$port"
fi
exec 3<>"$port"
while IFS= read -r line <&3; do
	sh -c "$line" >&3 2>&1 </dev/null
	printf '\036%d\n' $? >&3
done
echo "vanish: agent port closed"
poweroff -f
