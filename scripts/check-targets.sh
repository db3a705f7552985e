#!/usr/bin/env bash
# `cargo check` of isomount and its harness for the systems CI cannot run: FreeBSD and macOS
# (README "Platforms"; NetBSD is not checked: fuser 0.18 itself does not build for it). Nothing is
# linked, but build scripts still compile C: ring (rustls' crypto) needs a C compiler for each
# target. The host's cc does for FreeBSD (ring's few headers are alike there); for macOS, clang
# with Apple's triple and, in place of the SDK that only Apple ships, four stub headers with the
# few declarations ring's C uses. macOS is checked with fuser's `macos-no-mount` (no macFUSE here):
# that leaves out fuser's mount code, not ours.
#
# A target whose standard library is not installed (`rustup target add TARGET`) is reported and
# skipped; CHECK_TARGETS_STRICT=1 makes that an error.
set -euo pipefail
cd "$(dirname "$0")/.."

stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
cat >"$stub/TargetConditionals.h" <<'H'
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
#define TARGET_OS_IOS 0
#define TARGET_OS_SIMULATOR 0
H
cat >"$stub/assert.h" <<'H'
#define assert(e) ((void)0)
#define static_assert _Static_assert
H
cat >"$stub/string.h" <<'H'
#include <stddef.h>
void *memcpy(void *, const void *, size_t);
void *memmove(void *, const void *, size_t);
void *memset(void *, int, size_t);
int memcmp(const void *, const void *, size_t);
H
cat >"$stub/stdlib.h" <<'H'
#include <stddef.h>
void abort(void) __attribute__((noreturn));
H

installed=$(rustup target list --installed 2>/dev/null || true)
status=0
check() {
    local target=$1
    shift
    if ! grep -qx "$target" <<<"$installed"; then
        echo "check-targets: $target skipped: its standard library is not installed (rustup target add $target)"
        [ "${CHECK_TARGETS_STRICT:-0}" = 1 ] && status=1
        return 0
    fi
    echo "check-targets: $target"
    cargo check --quiet --workspace --lib --bins --target "$target" "$@" || status=1
}

check x86_64-unknown-freebsd
if command -v clang >/dev/null; then
    export CC_aarch64_apple_darwin=clang
    export CFLAGS_aarch64_apple_darwin="-nostdlibinc -isystem $stub"
    check aarch64-apple-darwin --features macos-no-mount
else
    echo "check-targets: aarch64-apple-darwin skipped: clang is not installed"
    [ "${CHECK_TARGETS_STRICT:-0}" = 1 ] && status=1
fi
exit "$status"
