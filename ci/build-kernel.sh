#!/usr/bin/env bash
# Build a guest kernel for `vanish run --kernel` from a Linux source tree.
#
#   ci/build-kernel.sh ARCH [CARD]
#
# ARCH is aarch64 or x86_64 (vanish's --arch names). CARD (hibmc or bochs; default hibmc on
# aarch64, bochs on x86_64) is the driver that must end up enabled: the script fails with exit
# code 3 when the tree cannot be configured with it. Both drivers are enabled where they build.
#
# Environment:
#   SRC=DIR          kernel source tree (default: the current directory)
#   OUT=DIR          build directory (default: $SRC/.vanish-build/ARCH); the results go to
#                    $OUT/dist: Image (aarch64) or bzImage (x86_64), config, and with MODULES=1
#                    mods/ (an INSTALL_MOD_PATH tree for `vanish run --modules`)
#   MODULES=1        build the display drivers as modules instead of built in
#   DEBUG=1          also enable KASAN, lockdep, DEBUG_LIST and DEBUG_ATOMIC_SLEEP (slower boots:
#                    give vanish a longer --boot-timeout)
#   CROSS_COMPILE=   cross toolchain prefix (default: aarch64-linux-gnu- / x86_64-linux-gnu- when
#                    the host is the other architecture); LLVM=1 works too
#   JOBS=N           make -j (default: nproc)
#
# Exit codes: 0 built, 1 the build failed, 2 usage, 3 the configuration lacks what vanish needs.
# A bisect wrapper maps 1 and 3 to 125 (skip this commit); see docs/bisect.md.
set -euo pipefail

usage() {
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}

arch=${1:-}
case "$arch" in
aarch64) karch=arm64 image=arch/arm64/boot/Image target=Image card=${2:-hibmc} cross=aarch64-linux-gnu- ;;
x86_64) karch=x86 image=arch/x86/boot/bzImage target=bzImage card=${2:-bochs} cross=x86_64-linux-gnu- ;;
*) usage ;;
esac
case "$card" in
hibmc) driver=DRM_HISI_HIBMC ;;
bochs) driver=DRM_BOCHS ;;
*) usage ;;
esac

src=$(cd "${SRC:-.}" && pwd)
[ -f "$src/Makefile" ] && [ -d "$src/arch/$karch" ] || {
	echo "build-kernel.sh: $src is not a Linux source tree" >&2
	exit 2
}
out=${OUT:-$src/.vanish-build/$arch}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ "$(uname -m)" = "$arch" ]; then
	cross=
fi
cross=${CROSS_COMPILE-$cross}
jobs=${JOBS:-$(nproc)}
kmake() { make -C "$src" O="$out" ARCH="$karch" ${cross:+CROSS_COMPILE="$cross"} "$@"; }

# The guest vanish boots: serial console, initramfs, virtio-serial for its agent, PCIe native
# hotplug on the root port the card sits behind, DRM with fbdev emulation (for /dev/fb0).
builtin=(PCI PCIEPORTBUS HOTPLUG_PCI HOTPLUG_PCI_PCIE VIRTIO_MENU VIRTIO VIRTIO_PCI
	VIRTIO_CONSOLE BLK_DEV_INITRD DEVTMPFS DEVTMPFS_MOUNT TTY DRM DRM_FBDEV_EMULATION FB
	FRAMEBUFFER_CONSOLE)
case "$arch" in
aarch64) builtin+=(SERIAL_AMBA_PL011 SERIAL_AMBA_PL011_CONSOLE) ;;
x86_64) builtin+=(SERIAL_8250 SERIAL_8250_CONSOLE) ;;
esac
debug=(DEBUG_KERNEL KASAN PROVE_LOCKING DEBUG_LIST DEBUG_ATOMIC_SLEEP)
drivers=(DRM_HISI_HIBMC DRM_BOCHS)

config=(--file "$out/.config")
for o in "${builtin[@]}"; do config+=(-e "$o"); done
if [ "${DEBUG:-0}" = 1 ]; then
	for o in "${debug[@]}"; do config+=(-e "$o"); done
fi
for o in "${drivers[@]}"; do
	if [ "${MODULES:-0}" = 1 ]; then config+=(-m "$o"); else config+=(-e "$o"); fi
done

echo "build-kernel.sh: configuring $src for $arch in $out" >&2
# defconfig every time: across a bisection the options change under a stale .config.
if ! kmake defconfig >&2 || ! "$src/scripts/config" "${config[@]}" || ! kmake olddefconfig >&2; then
	echo "build-kernel.sh: configuration failed" >&2
	exit 1
fi

# olddefconfig silently drops what the tree cannot have (unmet dependencies, unknown symbols).
missing=()
for o in VIRTIO_PCI VIRTIO_CONSOLE HOTPLUG_PCI_PCIE BLK_DEV_INITRD "$driver"; do
	grep -Eq "^CONFIG_$o=(y|m)$" "$out/.config" || missing+=("CONFIG_$o")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "build-kernel.sh: this tree cannot be configured with ${missing[*]}" >&2
	exit 3
fi

echo "build-kernel.sh: building $target with $jobs jobs" >&2
targets=("$target")
if [ "${MODULES:-0}" = 1 ]; then targets+=(modules); fi
if ! kmake -j"$jobs" "${targets[@]}" >&2; then
	echo "build-kernel.sh: the build failed" >&2
	exit 1
fi

rm -rf "$out/dist"
mkdir -p "$out/dist"
cp "$out/$image" "$out/dist/$target"
cp "$out/.config" "$out/dist/config"
if [ "${MODULES:-0}" = 1 ]; then
	if ! kmake INSTALL_MOD_PATH="$out/dist/mods" INSTALL_MOD_STRIP=1 modules_install >&2; then
		echo "build-kernel.sh: modules_install failed" >&2
		exit 1
	fi
fi
echo "build-kernel.sh: $(kmake -s kernelrelease) in $out/dist" >&2
echo "$out/dist/$target"
