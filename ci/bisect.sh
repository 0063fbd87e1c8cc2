#!/usr/bin/env bash
# `git bisect run` script: build the checked-out kernel, run vanish against it, say good or bad.
#
#   cd linux
#   git bisect start BAD GOOD
#   git bisect run /path/to/vanish/ci/bisect.sh [vanish run options]
#
# or, to find the commit that fixed a bug:
#
#   git bisect start --term-old=broken --term-new=fixed
#   git bisect fixed FIXED_COMMIT; git bisect broken BROKEN_COMMIT
#   FIND_FIX=1 git bisect run /path/to/vanish/ci/bisect.sh [vanish run options]
#
# The options after the script name go to `vanish run` as given (default: --scenario
# unbind-rebind), e.g. `--judge-by FINGERPRINT` to count only one splat as bad, `--boot-timeout
# 600` for debug kernels. `--kernel`, `--modules`, `--arch`, `--model` and `--out` are set here.
# They are checked with `vanish run --dry-run` before anything is built: a usage error (a
# mistyped scenario) aborts the bisection at once instead of marking every commit.
#
# Environment:
#   VANISH=PATH   the vanish binary (default: target/release/vanish of this checkout, or of
#                 $CARGO_TARGET_DIR; build it once with `cargo build --release` before bisecting)
#   ARCH=aarch64  guest architecture, aarch64 or x86_64 (default aarch64)
#   CARD=hibmc    the card (hibmc or bochs) whose driver must be in the kernel; also passed as
#                 --model (default hibmc on aarch64, bochs on x86_64)
#   FIND_FIX=1    look for the fix instead of the breakage: a passing commit is "fixed" (new,
#                 exit 1), a failing one "broken" (old, exit 0); use with
#                 `git bisect start --term-old=broken --term-new=fixed`
#   RUNS=1        run vanish this many times: the commit fails if any run fails, passes only if
#                 every run passes (flake control: a bug that shows one time in three needs
#                 RUNS=5 or more to be trusted as absent)
#   OUT_ROOT=DIR  where each commit's results go (default: $SRC/.vanish-bisect); each run keeps
#                 report.json, console.log and screenshot.png under COMMIT/runN, and the
#                 commit's kernel build log is COMMIT/build.log
#   OUT, BASE, MODULES, DEBUG, CROSS_COMPILE, LLVM, JOBS: passed to build-kernel.sh. The build
#                 directory is build-kernel.sh's default ($SRC/.vanish-build/ARCH) unless OUT
#                 is set, so a build tried by hand warms the bisection and vice versa.
#
# Exit codes, as `git bisect run` reads them: 0 good (FIND_FIX: broken), 1 bad (FIND_FIX:
# fixed), 125 skip (the commit does not build, cannot have the driver, or the rig could not
# judge it), 128 abort the bisection (a usage error: it would be one at every commit).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
say() { echo "bisect.sh: $*" >&2; }
vanish=${VANISH:-${CARGO_TARGET_DIR:-$here/../target}/release/vanish}
arch=${ARCH:-aarch64}
case "$arch" in
aarch64) card=${CARD:-hibmc} ;;
x86_64) card=${CARD:-bochs} ;;
*)
	say "ARCH must be aarch64 or x86_64"
	exit 128
	;;
esac
if [ ! -x "$vanish" ]; then
	say "no vanish binary at $vanish (cargo build --release, or set VANISH)"
	exit 128
fi
src=$(pwd)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null) || {
	say "run me from the kernel tree (git bisect run runs there)"
	exit 128
}
out_root=${OUT_ROOT:-$src/.vanish-bisect}
runs=${RUNS:-1}
find_fix=${FIND_FIX:-0}
if [ $# -eq 0 ]; then set -- --scenario unbind-rebind; fi

# Check the vanish options before spending minutes on a build: the same mistake would be made
# at every commit.
dry=$("$vanish" run --dry-run --arch "$arch" --model "$card" --out "$out_root/dry-run" "$@" 2>&1)
rc=$?
if [ $rc -ne 0 ]; then
	say "vanish run --dry-run $* exit $rc: ${dry##*$'\n'}"
	say "aborting the bisection: fix the vanish options (they would fail at every commit)"
	exit 128
fi

# Build. A commit that does not build, or cannot be configured with the driver, is skipped.
mkdir -p "$out_root/$commit"
image=$(SRC="$src" VANISH="$vanish" "$here/build-kernel.sh" "$arch" "$card")
rc=$?
build_dir=${OUT:-$src/.vanish-build/$arch}
[ -f "$build_dir/build.log" ] && cp "$build_dir/build.log" "$out_root/$commit/build.log"
case $rc in
0) ;;
2)
	say "build-kernel.sh usage error"
	exit 128
	;;
*)
	say "$commit: build-kernel.sh exit $rc: skipping this commit (log: $out_root/$commit/build.log)"
	exit 125
	;;
esac
modules=()
if [ -d "$(dirname "$image")/mods" ]; then modules=(--modules "$(dirname "$image")/mods"); fi

# Judge: failing as soon as one run fails; passing only if every run passed.
failed=0
skipped=0
for i in $(seq 1 "$runs"); do
	out="$out_root/$commit/run$i"
	"$vanish" run --arch "$arch" --model "$card" --kernel "$image" "${modules[@]}" --out "$out" "$@"
	rc=$?
	say "$commit run $i/$runs: vanish exit $rc (results in $out)"
	case $rc in
	0) ;;
	1)
		failed=1
		break
		;;
	125) skipped=1 ;;
	*) exit 128 ;; # 2 = usage error, 130 = interrupted: stop bisecting
	esac
done
if [ $failed = 1 ]; then
	verdict=1
elif [ $skipped = 1 ]; then
	say "$commit: the rig could not judge it: skip"
	exit 125
else
	verdict=0
fi
if [ "$find_fix" = 1 ]; then
	# Passing = fixed = the new term (git's "bad" side, 1); failing = broken = old (0).
	if [ $verdict = 0 ]; then
		say "$commit: passes: fixed"
		exit 1
	fi
	say "$commit: fails: broken"
	exit 0
fi
if [ $verdict = 0 ]; then say "$commit: passes: good"; else say "$commit: fails: bad"; fi
exit $verdict
