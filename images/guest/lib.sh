# vanish guest library: what /init needs before the agent runs. Everything the host asks the
# guest goes through the agent's typed protocol (crate guest_protocol), not through shell.

# find_card VENDOR DEVICE: PCI addresses of functions with these IDs (0x-prefixed hex).
find_card() {
	for d in /sys/bus/pci/devices/*; do
		[ -e "$d/vendor" ] || continue
		[ "$(cat "$d/vendor")" = "$1" ] && [ "$(cat "$d/device")" = "$2" ] && echo "${d##*/}"
	done
}

# set_bus_master BDF: COMMAND |= MEMORY | MASTER through sysfs config space.
set_bus_master() {
	printf '\006' | dd of="/sys/bus/pci/devices/$1/config" bs=1 seek=4 count=1 conv=notrunc 2>/dev/null
}
