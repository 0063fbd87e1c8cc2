#!/usr/bin/env bash
# `git bisect run` script: build the checked-out kernel, run vanish against it, say good or bad.
#
#   cd linux
#   git bisect start BAD GOOD
#   git bisect run /path/to/vanish/ci/bisect.sh [vanish run options]
#
# The options after the script name go to `vanish run` (default: --scenario unbind-rebind).
# `--kernel`, `--modules`, `--arch` and `--out` are set here.
#
# Environment:
#   VANISH=PATH   the vanish binary (default: target/release/vanish next to this script;
#                 build it once with `cargo build --release` before bisecting)
#   ARCH=aarch64  guest architecture, aarch64 or x86_64 (default aarch64)
#   CARD=hibmc    the card (hibmc or bochs) whose driver must be in the kernel; also passed as
#                 --model (default hibmc on aarch64, bochs on x86_64)
#   RUNS=1        run vanish this many times: the commit is bad if any run fails, good only if
#                 every run passes (flake control: a bug that shows one time in three needs
#                 RUNS=5 or more to be trusted as absent)
#   OUT_ROOT=DIR  where each commit's results go (default: $SRC/.vanish-bisect); each run keeps
#                 report.json, console.log and screenshot.png under COMMIT/runN
#   MODULES, DEBUG, CROSS_COMPILE, LLVM, JOBS: passed to build-kernel.sh
#
# Exit codes, as `git bisect run` reads them: 0 good, 1 bad, 125 skip (the commit does not
# build, cannot have the driver, or the rig could not judge it), 128 abort the bisection (a
# usage error: it would be one at every commit).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
vanish=${VANISH:-$here/../target/release/vanish}
arch=${ARCH:-aarch64}
case "$arch" in
aarch64) card=${CARD:-hibmc} ;;
x86_64) card=${CARD:-bochs} ;;
*)
	echo "bisect.sh: ARCH must be aarch64 or x86_64" >&2
	exit 128
	;;
esac
if [ ! -x "$vanish" ]; then
	echo "bisect.sh: no vanish binary at $vanish (cargo build --release, or set VANISH)" >&2
	exit 128
fi
src=$(pwd)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null) || {
	echo "bisect.sh: run me from the kernel tree (git bisect run runs there)" >&2
	exit 128
}
out_root=${OUT_ROOT:-$src/.vanish-bisect}
runs=${RUNS:-1}
if [ $# -eq 0 ]; then set -- --scenario unbind-rebind; fi

# Build. A commit that does not build, or cannot be configured with the driver, is skipped.
image=$(SRC="$src" OUT="$out_root/build-$arch" "$here/build-kernel.sh" "$arch" "$card")
rc=$?
case $rc in
0) ;;
2)
	echo "bisect.sh: build-kernel.sh usage error" >&2
	exit 128
	;;
*)
	echo "bisect.sh: $commit: build-kernel.sh exit $rc: skipping this commit" >&2
	exit 125
	;;
esac
modules=()
if [ -d "$(dirname "$image")/mods" ]; then modules=(--modules "$(dirname "$image")/mods"); fi

# Judge: bad as soon as one run fails; good only if every run passed.
skipped=0
for i in $(seq 1 "$runs"); do
	out="$out_root/$commit/run$i"
	"$vanish" run --arch "$arch" --model "$card" --kernel "$image" "${modules[@]}" --out "$out" "$@"
	rc=$?
	echo "bisect.sh: $commit run $i/$runs: vanish exit $rc (results in $out)" >&2
	case $rc in
	0) ;;
	1) exit 1 ;;
	125) skipped=1 ;;
	*) exit 128 ;; # 2 = usage error, 130 = interrupted: stop bisecting
	esac
done
if [ $skipped = 1 ]; then exit 125; fi
exit 0
