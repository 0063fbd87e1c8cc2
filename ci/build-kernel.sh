#!/usr/bin/env bash
# Build a guest kernel for `vanish run --kernel` from a Linux source tree.
#
#   ci/build-kernel.sh ARCH [CARD]
#
# ARCH is aarch64 or x86_64 (vanish's --arch names). CARD is hibmc, bochs or all (default hibmc
# on aarch64, bochs on x86_64): the driver that must end up enabled. The configuration is
# `vanish kconfig --apply` (the one place that knows what a vanish guest needs): allnoconfig or
# defconfig, the rig's options merged in, olddefconfig, and a check that every option survived.
#
# Environment:
#   SRC=DIR          kernel source tree (default: the current directory)
#   OUT=DIR          build directory (default: $SRC/.vanish-build/ARCH; OUT=$SRC builds in-tree).
#                    The results go to $OUT/dist: Image (aarch64) or bzImage (x86_64), config, and
#                    mods/lib/modules/RELEASE/ (with MODULES=1 the installed modules; always
#                    modules.builtin* and modules.order, so vanish sees what is built in).
#                    make's output goes to $OUT/build.log; stderr gets one line per step.
#   BASE=minimal     minimal (allnoconfig + what vanish needs; a few minutes to build) or
#                    defconfig (the architecture's defconfig + what vanish needs)
#   MODULES=1        build the display drivers as modules instead of built in
#   DEBUG=LIST       debug options for `vanish kconfig --debug`: kasan, kfence, lockdep,
#                    debug-objects, debug-list, ubsan, test-driver-remove (comma-separated);
#                    DEBUG=1 means kasan,lockdep,debug-list. Slower boots: give vanish a longer
#                    --boot-timeout (see docs/bisect.md)
#   CROSS_COMPILE=   cross toolchain prefix (default: aarch64-linux-gnu- / x86_64-linux-gnu- when
#                    the host is the other architecture); LLVM=1 works too
#   JOBS=N           make -j (default: nproc)
#   VANISH=PATH      the vanish binary (default: target/release/vanish of this checkout, or of
#                    $CARGO_TARGET_DIR; built with cargo when missing)
#
# Prints the image's path on stdout. Exit codes: 0 built, 1 the build failed, 2 usage, 3 the
# configuration lacks what vanish needs. A bisect wrapper maps 1 and 3 to 125 (skip this
# commit); see docs/bisect.md.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
usage() {
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}
say() { echo "build-kernel.sh: $*" >&2; }

arch=${1:-}
case "$arch" in
aarch64) karch=arm64 image=arch/arm64/boot/Image target=Image card=${2:-hibmc} ;;
x86_64) karch=x86 image=arch/x86/boot/bzImage target=bzImage card=${2:-bochs} ;;
*) usage ;;
esac
case "$card" in hibmc | bochs | all) ;; *) usage ;; esac
base=${BASE:-minimal}
case "$base" in minimal | defconfig) ;; *) usage ;; esac
case "${DEBUG:-}" in
"" | 0) debug= ;;
1) debug=kasan,lockdep,debug-list ;;
*) debug=$DEBUG ;;
esac
modules=${MODULES:-0}

src=$(cd "${SRC:-.}" && pwd)
[ -f "$src/Makefile" ] && [ -d "$src/arch/$karch" ] || {
	say "$src is not a Linux source tree"
	exit 2
}
out=${OUT:-$src/.vanish-build/$arch}
mkdir -p "$out"
out=$(cd "$out" && pwd)
jobs=${JOBS:-$(nproc)}
log=$out/build.log
: >"$log"

vanish=${VANISH:-${CARGO_TARGET_DIR:-$here/../target}/release/vanish}
if [ ! -x "$vanish" ]; then
	if [ -z "${VANISH:-}" ] && command -v cargo >/dev/null; then
		say "building vanish (cargo build --release) for its kconfig"
		if ! cargo build --release --quiet --manifest-path "$here/../Cargo.toml" -p hotplug_ctl --bin vanish >>"$log" 2>&1; then
			say "cargo build of vanish failed (see $log)"
			exit 2
		fi
	else
		say "no vanish binary at $vanish (cargo build --release, or set VANISH)"
		exit 2
	fi
fi

# The toolchain: kconfig and the build must use the same one (Kconfig tests the compiler).
case "$(uname -m)" in
"$arch") cross= ;;
*) [ -n "${LLVM:-}" ] && cross= || cross=$([ "$arch" = aarch64 ] && echo aarch64-linux-gnu- || echo x86_64-linux-gnu-) ;;
esac
cross=${CROSS_COMPILE-$cross}
obj=O=$out
[ "$out" = "$src" ] && obj= # in-tree
kmake() { make -C "$src" ${obj:+"$obj"} ARCH="$karch" ${cross:+CROSS_COMPILE="$cross"} "$@"; }

kconfig=(kconfig --arch "$arch" --card "$card" --base "$base" --src "$src" --apply "$out" --log "$log")
[ "$modules" = 1 ] && kconfig+=(--modules)
[ -n "$debug" ] && kconfig+=(--debug "$debug")
kconfig+=(--cross-compile "$cross")
t0=$(date +%s)
rc=0
"$vanish" "${kconfig[@]}" || rc=$?
case $rc in
0) ;;
2) exit 2 ;;
3) exit 3 ;;
*)
	say "configuration failed (vanish kconfig exit $rc; see $log)"
	exit 1
	;;
esac

targets=("$target")
[ "$modules" = 1 ] && targets+=(modules)
t1=$(date +%s)
if ! kmake -j"$jobs" "${targets[@]}" >>"$log" 2>&1; then
	err=$(grep -m1 -E 'error:|Error [0-9]' "$log" || tail -n 1 "$log")
	say "make ${targets[*]} failed after $(($(date +%s) - t1))s: $err (full output in $log)"
	exit 1
fi
t2=$(date +%s)

release=$(cat "$out/include/config/kernel.release")
rm -rf "$out/dist"
mods=$out/dist/mods/lib/modules/$release
mkdir -p "$mods"
cp "$out/$image" "$out/dist/$target"
cp "$out/.config" "$out/dist/config"
if [ "$modules" = 1 ]; then
	if ! kmake INSTALL_MOD_PATH="$out/dist/mods" INSTALL_MOD_STRIP=1 modules_install >>"$log" 2>&1; then
		say "modules_install failed (see $log)"
		exit 1
	fi
	rm -f "$mods/build" "$mods/source"
fi
# What is built in, even without modules: vanish reads modules.builtin to know a driver needs no
# loading.
for f in modules.builtin modules.builtin.modinfo modules.order; do
	if [ -f "$out/$f" ]; then
		[ -f "$mods/$f" ] || cp "$out/$f" "$mods/$f"
	else
		[ -f "$mods/$f" ] || : >"$mods/$f"
	fi
done
say "$release ($arch, $card, $base${debug:+, debug $debug}${modules:+$([ "$modules" = 1 ] && echo ", modules")}): configured in $((t1 - t0))s, built in $((t2 - t1))s with -j$jobs; $out/dist (log: $log)"
echo "$out/dist/$target"
