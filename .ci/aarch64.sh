#!/usr/bin/env bash
# CI step (issue 9): `pip install "/src[npu]"` on an emulated linux/aarch64 Python, then
# tests/aarch64/probe.py against the real rknn-toolkit-lite2 (signatures and constants equal to the x86
# fake's, and our one-line messages for: no device tree, an RK3588 without librknnrt.so, a damaged one).
#
#   bash .ci/aarch64.sh        exit 0: passed; 1: failed; 77: emulation unavailable here (says SKIPPED)
#
# How: qemu-user-static with binfmt_misc (flag F, so nothing of qemu is needed inside the chroot); an arm64
# root file system from Debian's own packages (a separate APT_CONFIG with architecture arm64 that reads
# this machine's /etc/apt/sources.list*, `apt-get install --download-only python3 python3-venv
# libstdc++6`, each .deb unpacked with dpkg-deb -x: nothing arm64 is installed on the host); a chroot in a
# private mount namespace with proc, /dev and a copy of the source tree at /src.
# Cache: $RWKVPROBE_CI_CACHE (default ~/.cache/rwkvprobe-ci)/aarch64/env-<key>: the root file system
# with /opt/venv, keyed on pyproject.toml (a changed pyproject builds it anew and installs "/src[npu]"
# again). Our own package is reinstalled from the source tree on every run.
set -euo pipefail

ENV_VERSION=2  # bump to rebuild every cached environment (2: pytest and hypothesis in the venv)
PACKAGES=(python3 python3-venv libstdc++6)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${RWKVPROBE_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rwkvprobe-ci}/aarch64
BINFMT=/proc/sys/fs/binfmt_misc
T0=${RWKVPROBE_CI_T0:-$(date +%s)}
export RWKVPROBE_CI_T0=$T0

say() { printf 'aarch64 [%3ss]: %s\n' "$(($(date +%s) - T0))" "$*"; }
skip() {
    printf '\n!!! SKIPPED: aarch64 emulation unavailable: %s\n' "$*"
    printf '!!! (pip install "[npu]" on aarch64 and the real rknn-toolkit-lite2 were NOT checked on this run)\n\n'
    exit 77
}
die() {
    printf 'aarch64: FAILED: %s\n' "$*" >&2
    exit 1
}
show_log() {
    if [ -f "$1" ]; then { echo "--- last lines of $1:"; tail -n 40 "$1"; } >&2; fi
}

# --- inside the private mount namespace: mounts, the venv, the probe --------------------------------
chroot_env() {
    CHROOT=$(command -v chroot)
    ENV_VARS=(PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 COLUMNS=200 TERM=dumb
              PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
              PIP_DEFAULT_TIMEOUT=60 PIP_PROGRESS_BAR=off PIP_ROOT_USER_ACTION=ignore)
    local v val
    for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        val=${!v:-}
        case $val in "" | *file:*) ;; *) ENV_VARS+=("$v=$val") ;; esac  # local file indexes are the host's
    done
}
in_root() { env -i "${ENV_VARS[@]}" "$CHROOT" "$ROOT" "$@"; }

unmount_all() {  # what inner() mounted, in reverse order (the namespace would drop them anyway)
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTED[i]}" 2>/dev/null || true; done
}

inner() {
    ROOT=$1 MODE=$2
    local env_dir logs n
    env_dir=$(dirname "$ROOT") logs=$CACHE/logs
    MOUNTED=()
    trap unmount_all EXIT
    # /proc: a tmpfs linking to the real proc (mounted at /.hostproc), so that the probe can write
    # /proc/device-tree/compatible, which rknn-toolkit-lite2 reads to find the SoC
    mount -t proc proc "$ROOT/.hostproc" && MOUNTED+=("$ROOT/.hostproc")
    mount -t tmpfs -o mode=0755,size=4m rwkvprobe-proc "$ROOT/proc" && MOUNTED+=("$ROOT/proc")
    for n in /proc/*; do
        n=${n##*/}
        case $n in *[!0-9]*) ln -s "/.hostproc/$n" "$ROOT/proc/$n" ;; esac  # not the numbered processes
    done
    mount --bind /dev "$ROOT/dev" && MOUNTED+=("$ROOT/dev")
    chroot_env

    if [ "$MODE" = build ]; then
        say "venv + pip install \"/src[npu]\" on emulated aarch64 (cold: resolves and downloads every wheel)"
        local pip_wheel
        pip_wheel=$(cd "$ROOT" && find usr/share/python-wheels -name 'pip-*.whl' | sort | tail -n 1)
        [ -n "$pip_wheel" ] || die "no pip wheel in the arm64 python3-venv (usr/share/python-wheels)"
        in_root /usr/bin/python3 -m venv --without-pip /opt/venv >"$logs/venv.log" 2>&1 \
            || { show_log "$logs/venv.log"; die "python3 -m venv failed"; }
        # the Debian pip wheel installs a current pip (much faster to resolve under emulation) + build tools
        in_root /opt/venv/bin/python "/$pip_wheel/pip" install --no-compile pip setuptools wheel >>"$logs/venv.log" 2>&1 \
            || { show_log "$logs/venv.log"; die "installing pip into the aarch64 venv failed"; }
        in_root /opt/venv/bin/python -m pip install --no-compile --no-build-isolation "/src[npu]" >"$logs/pip.log" 2>&1 \
            || { show_log "$logs/pip.log"; die "pip install \"/src[npu]\" failed on aarch64"; }
        grep -E '^Successfully installed' "$logs/pip.log" | cut -c1-300 | sed 's/$/ .../' || true
        in_root /opt/venv/bin/python -m pip install --no-compile pytest hypothesis >"$logs/pip-tests.log" 2>&1 \
            || { show_log "$logs/pip-tests.log"; die "pip install pytest hypothesis failed on aarch64"; }
        touch "$env_dir/ready"
    else
        say "cached environment: reinstalling rwkvprobe from this source tree (pip install --no-deps --force-reinstall /src)"
        in_root /opt/venv/bin/python -m pip install --no-compile --no-deps --force-reinstall --no-build-isolation /src \
            >"$logs/pip.log" 2>&1 || { show_log "$logs/pip.log"; die "pip install /src failed on aarch64"; }
    fi
    in_root /opt/venv/bin/python -m pip check >"$logs/pip-check.log" 2>&1 \
        || { show_log "$logs/pip-check.log"; die "pip check: the aarch64 venv has broken requirements"; }
    say "probe (tests/aarch64/probe.py) on emulated aarch64"
    in_root /opt/venv/bin/python /src/tests/aarch64/probe.py || die "the aarch64 probe failed (see above)"
    # Issue 14: the backend-correctness tests on aarch64 too (every backend and dtype the core install has
    # there: numpy, onnxruntime's float and quantized kernels, the bandwidth probe's numba and numpy kernels),
    # on RWKV shapes and odd shapes. Timing means nothing under emulation; correctness does.
    say "backend correctness tests (pytest) on emulated aarch64"
    in_root /opt/venv/bin/python -m pytest -q -p no:cacheprovider --rootdir /src -m "not slow" \
        /src/tests/test_backends.py /src/tests/test_quant.py /src/tests/test_bandwidth.py \
        -k "correct or matches_dequantized or wrong_kernel or refus or offers or kernels_compute or each_engine" \
        || die "backend correctness tests failed on aarch64 (see above)"
}

if [ "${1:-}" = --inner ]; then
    inner "$2" "$3"
    exit 0
fi

# --- on the host ------------------------------------------------------------------------------------
safe_rm() {  # a folder under $CACHE: unmount what a killed run left below it, never cross a file system
    local d=$1 m
    case $d in "$CACHE"/?*) ;; *) die "refusing to remove $d" ;; esac
    awk -v p="$d/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
        umount -l "$m" || true
    done
    rm -rf --one-file-system "$d"
}

aarch64_registered() { [ -r "$BINFMT/qemu-aarch64" ] && head -n 1 "$BINFMT/qemu-aarch64" | grep -qx enabled; }

host_apt_install() {  # Debian's packages, installed on the host (only qemu's)
    local log=$CACHE/logs/apt-host.log
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >"$log" 2>&1 && return 0
    apt-get update -q >>"$log" 2>&1 || true  # stale package lists on a fresh machine
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1 || { show_log "$log"; return 1; }
}

set_up_emulation() {
    local arch
    arch=$(uname -m)
    if [ "$arch" = aarch64 ]; then
        say "native aarch64 host: no emulation needed"
        return
    fi
    [ "$arch" = x86_64 ] || skip "host architecture $arch is not set up for this step"
    [ -e "$BINFMT/register" ] || mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null \
        || skip "binfmt_misc is not available (cannot mount $BINFMT)"
    if ! aarch64_registered; then
        if ! dpkg-query -W -f '${Status}' qemu-user-static 2>/dev/null | grep -q 'ok installed'; then
            say "apt-get install qemu-user-static binfmt-support"
            host_apt_install qemu-user-static binfmt-support || skip "qemu-user-static could not be installed with apt-get"
        fi
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
        aarch64_registered || skip "qemu-aarch64 is not registered in $BINFMT (update-binfmts --enable qemu-aarch64 failed)"
    fi
    grep -q '^flags:.*F' "$BINFMT/qemu-aarch64" \
        || skip "qemu-aarch64 is registered without flag F (fix binary): a chroot cannot reach the interpreter"
    grep -qx enabled "$BINFMT/status" || skip "binfmt_misc is disabled ($BINFMT/status)"
}

build_rootfs() {  # $ENV_DIR/root: Debian's arm64 python3, python3-venv, libstdc++6 and their dependencies
    local apt=$CACHE/apt debs=$ENV_DIR/debs log=$CACHE/logs/apt-arm64.log deb
    grep -rhsqE '^[[:space:]]*(deb[[:space:]]|URIs:)' /etc/apt/sources.list /etc/apt/sources.list.d/ \
        || die "no Debian sources in /etc/apt/sources.list*"
    mkdir -p "$apt/lists/partial" "$apt/cache" "$apt/etc/preferences.d" "$debs/partial" "$ROOT"
    : >"$apt/status"  # nothing installed: apt downloads the whole dependency closure
    # Architecture arm64 only; sources: this machine's own (/etc/apt/sources.list and sources.list.d, as
    # its apt uses them); state, lists and downloads: here, never the host's.
    cat >"$apt/apt.conf" <<EOF
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
APT::Install-Recommends "false";
Dir::Etc::SourceList "/etc/apt/sources.list";
Dir::Etc::SourceParts "/etc/apt/sources.list.d";
Dir::Etc::Preferences "$apt/etc/preferences";
Dir::Etc::PreferencesParts "$apt/etc/preferences.d";
Dir::State "$apt";
Dir::State::Lists "$apt/lists";
Dir::State::status "$apt/status";
Dir::Cache "$apt/cache";
Dir::Cache::archives "$debs";
EOF
    say "arm64 root file system: apt-get --download-only ${PACKAGES[*]} (APT_CONFIG=$apt/apt.conf)"
    APT_CONFIG=$apt/apt.conf apt-get update -q >"$log" 2>&1 || { show_log "$log"; die "apt-get update (arm64) failed"; }
    APT_CONFIG=$apt/apt.conf apt-get install -y -q --download-only "${PACKAGES[@]}" >>"$log" 2>&1 \
        || { show_log "$log"; die "apt-get --download-only (arm64) failed"; }
    for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
    say "unpacked $(find "$debs" -name '*.deb' | wc -l) arm64 packages ($(du -sm "$ROOT" | cut -f1) MB)"
    rm -rf "$debs"
    mkdir -p "$ROOT"/{proc,dev,src,root,.hostproc,etc/ssl/certs} "$ROOT/tmp"
    chmod 1777 "$ROOT/tmp"
}

main() {
    [ "$(uname -s)" = Linux ] || skip "not Linux ($(uname -s))"
    [ "$(id -u)" -eq 0 ] || skip "not root (chroot, mounts and binfmt_misc need root)"
    local tool
    for tool in chroot unshare mount dpkg-deb apt-get sha256sum flock; do
        command -v "$tool" >/dev/null || skip "$tool is not installed"
    done
    mkdir -p "$CACHE/logs"
    exec 9>"$CACHE/lock"
    flock 9  # one run at a time per cache
    set_up_emulation

    local key mode ca
    key=$({ echo "$ENV_VERSION ${PACKAGES[*]}"; cat "$REPO/pyproject.toml"; } | sha256sum | cut -c1-16)
    ENV_DIR=$CACHE/env-$key ROOT=$CACHE/env-$key/root
    if [ -f "$ENV_DIR/ready" ]; then
        mode=reinstall
        say "cached environment $ENV_DIR (same pyproject.toml)"
    else
        mode=build
        for old in "$CACHE"/env-*; do [ -e "$old" ] && safe_rm "$old"; done
        build_rootfs
    fi

    # this run's source tree (tracked and untracked files, not the ignored ones), the resolver and CAs
    safe_rm "$ROOT/src"
    mkdir -p "$ROOT/src"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        [ -f "$f" ] && printf '%s\0' "$f"
    done | tar --null -T - -cf -) | tar -xf - -C "$ROOT/src"
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
    cp -L /etc/hosts "$ROOT/etc/hosts" 2>/dev/null || true
    for ca in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
        [ -n "$ca" ] && [ -f "$ca" ] && { cp -L "$ca" "$ROOT/etc/ssl/certs/ca-certificates.crt"; break; }
    done

    local machine
    machine=$(env -i "$(command -v chroot)" "$ROOT" /usr/bin/python3 -c 'import platform; print(platform.machine())' 2>&1) \
        || skip "the arm64 python does not run here: ${machine:0:200}"
    [ "$machine" = aarch64 ] || skip "the arm64 python reports machine '$machine'"

    unshare --mount --propagation private -- bash "${BASH_SOURCE[0]}" --inner "$ROOT" "$mode"
    say "passed ($mode: $([ "$mode" = build ] && echo "cold, environment built" || echo "warm, cached environment"))"
}

main "$@"
