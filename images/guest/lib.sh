# vanish guest library: sourced by /init and by agent commands (". /etc/vanish/lib.sh; ...").

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

# card_status VENDOR DEVICE: key=value lines describing our card as the guest sees it.
card_status() {
	bdf=$(find_card "$1" "$2" | head -n 1)
	if [ -z "$bdf" ]; then
		echo "present=0"
		return 0
	fi
	d=/sys/bus/pci/devices/$bdf
	echo "present=1"
	echo "pci_address=$bdf"
	echo "sysfs_path=$(readlink -f "$d")"
	parent=$(basename "$(dirname "$(readlink -f "$d")")")
	echo "parent=$parent"
	if [ -e "/sys/bus/pci/devices/$parent/vendor" ]; then
		echo "parent_id=$(cat "/sys/bus/pci/devices/$parent/vendor"):$(cat "/sys/bus/pci/devices/$parent/device")"
		echo "parent_class=$(cat "/sys/bus/pci/devices/$parent/class")"
	fi
	if [ -e "$d/driver" ]; then
		echo "driver=$(basename "$(readlink "$d/driver")")"
	else
		echo "driver="
	fi
	echo "command=$(od -An -tx2 -j4 -N2 "$d/config" | tr -d ' ')"
	for c in "$d"/drm/card*; do
		[ -e "$c" ] && echo "drm=${c##*/}"
	done
	for g in "$d"/graphics/fb*; do
		[ -e "$g" ] && echo "fb=${g##*/}"
	done
	echo "dri_nodes=$(ls /dev/dri 2>/dev/null | tr '\n' ' ')"
	[ -e /dev/fb0 ] && echo "fb0=1" || echo "fb0=0"
	[ -e /dev/dri/card0 ] && echo "dri_card0=1" || echo "dri_card0=0"
	for conn in "$d"/drm/card*/card*-*; do
		[ -e "$conn/status" ] || continue
		echo "connector=${conn##*/} $(cat "$conn/status")"
		echo "modes=${conn##*/} $(tr '\n' ' ' < "$conn/modes")"
	done
	[ -e /sys/class/graphics/fb0/virtual_size ] && echo "fb0_size=$(cat /sys/class/graphics/fb0/virtual_size)"
	irq=$(grep -E 'hibmc|bochs' /proc/interrupts | head -n 1)
	[ -n "$irq" ] && echo "irq=$(echo $irq | tr -s ' ')"
	return 0
}

# irq_count NAME: total interrupts on lines whose action name matches.
irq_count() {
	grep "$1" /proc/interrupts | awk '{ n = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) n += $i; else break; t += n } END { print t + 0 }'
}

# read_bar BDF BAR OFFSET: one 32-bit read of a memory BAR, as the CPU sees it (0x-hex).
# The agent maps sysfs resourceN; busybox devmem is the fallback (STRICT_DEVMEM may refuse it).
read_bar() {
	if [ -x /bin/vanish-agent ]; then
		vanish-agent peek "$1" "$2" "$3"
		return
	fi
	start=$(sed -n "$(($2 + 1))p" "/sys/bus/pci/devices/$1/resource" | cut -d' ' -f1)
	[ -n "$start" ] && [ "$start" != 0x0000000000000000 ] || { echo "BAR $2 of $1 is not assigned" >&2; return 1; }
	devmem $((start + $3)) 32
}

# probe_modes VENDOR DEVICE: re-probe the card's connectors with the device's full size limits
# (as xrandr would) and print "modes=CONNECTOR MODE..." lines. Needed on 7.x, whose fbdev client
# re-probes every 10 s with its framebuffer's size as the limit, pruning bigger modes from sysfs.
probe_modes() {
	bdf=$(find_card "$1" "$2" | head -n 1)
	for conn in /sys/bus/pci/devices/$bdf/drm/card*/card*-*; do
		[ -e "$conn/status" ] || continue
		echo detect > "$conn/status" 2>/dev/null
		echo "connector=${conn##*/} $(cat "$conn/status")"
		echo "modes=${conn##*/} $(tr '\n' ' ' < "$conn/modes")"
	done
}
