#!/bin/bash
# `make arm64-check`: the INT8 bundle on a Debian bookworm arm64 root under qemu-user-static, against this
# x86 machine, on the fixed real frames of edge/cli/parity.py. Builds the root once with debootstrap
# (cached in $ARM64_ROOT), installs the `edge` extra from PyPI's aarch64 wheels into a venv inside it (the
# versions of this checkout's venv, so that only the architecture differs), runs
# `python -m edge.cli.parity dump` with one thread here and on each emulated CPU (a Raspberry Pi 4's
# Cortex-A72, without the dot-product instructions; a Pi 5's Cortex-A76, with them) and compares boxes,
# labels and embeddings (`compare`, exit 1 when a tolerance fails); each machine first checks the bundle's
# signature against $TRUSTED_KEY with its own Ed25519 code. Emulated timings mean nothing: it
# reports parity and install facts only. Needs root (binfmt_misc, debootstrap, chroot, bind mounts) and
# the network.
set -euo pipefail

ROOT=${ARM64_ROOT:-.cache/arm64-root}
DATA=${DATA:-../shared/data}
BUNDLE=${BUNDLE:-bundles/default}
OUT=${OUT:-results/arm64-check}
PYTHON=${PYTHON:-.venv/bin/python}
TRUSTED_KEY=${TRUSTED_KEY:-.cache/signing/dev-bundle.pub}  # the public key the bundle was signed with
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CPUS=${ARM64_CPUS:-cortex-a72 cortex-a76}  # qemu CPU models: a Pi 4's and a Pi 5's cores
HOST_CA=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}  # pip inside the root trusts what the host's pip trusts
VENV=/opt/trapedge          # inside the root
SOURCE=/opt/trapedge-src    # a copy of the package sources, inside the root
WHEELS=/opt/wheels          # the downloaded aarch64 wheels, inside the root
MOUNTED=()

say() { printf 'arm64-check: %s\n' "$*"; }
die() { printf 'arm64-check: %s\n' "$*" >&2; exit 2; }

# in_root COMMAND...: run COMMAND in the arm64 root (through qemu-aarch64) with a clean environment
in_root() {
    chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/bin:/bin LANG=C.UTF-8 PIP_CERT=/etc/host-ca.crt \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 "$@"
}

need_host() {
    [ "$(id -u)" = 0 ] || die "needs root (binfmt_misc, debootstrap, chroot): sudo make arm64-check"
    [ -x "$PYTHON" ] || die "$PYTHON not found: make setup first"
    [ -f "$BUNDLE/manifest.json" ] || die "no bundle at $BUNDLE: make export first"
    [ -f "$TRUSTED_KEY" ] || die "no public key at $TRUSTED_KEY: set TRUSTED_KEY= to the .pub the bundle was signed with"
    [ -d "$DATA" ] || die "no data at $DATA: set DATA="
    local missing=()
    for package in qemu-user-static binfmt-support debootstrap; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# cpuinfo MODEL: an aarch64 /proc/cpuinfo for MODEL, one entry per host processor. qemu-user 7.2 passes
# the host's x86 /proc/cpuinfo through, and onnxruntime's cpuinfo library crashes on it at import
cpuinfo() {
    local part variant revision features n
    case $1 in
        cortex-a72) part=0xd08 variant=0x0 revision=3 features="fp asimd evtstrm crc32 cpuid" ;;
        cortex-a76) part=0xd0b variant=0x4 revision=1
            features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
        *) die "no /proc/cpuinfo for CPU $1: ARM64_CPUS takes cortex-a72 and cortex-a76" ;;
    esac
    for ((n = 0; n < $(getconf _NPROCESSORS_CONF); n++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' "$n" "$features"
        printf 'CPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' "$variant" "$part" "$revision"
    done
}

# dump_emulated MODEL: the bundle on the frames in the root, qemu emulating MODEL (its /proc/cpuinfo bound)
dump_emulated() {
    cpuinfo "$1" >"$OUT/cpuinfo-$1"
    mount --bind "$OUT/cpuinfo-$1" "$ROOT/proc/cpuinfo"
    MOUNTED+=("$ROOT/proc/cpuinfo")
    in_root QEMU_CPU="$1" "$VENV/bin/python" -m edge.cli.parity dump /data --bundle /bundle --threads 1 \
        --trusted-key "$(cat "$TRUSTED_KEY")" --emulated "$1" --out "/out/aarch64-$1.json"
    umount "$ROOT/proc/cpuinfo"
    unset 'MOUNTED[${#MOUNTED[@]}-1]'
}

# qemu-aarch64 registered with binfmt_misc, with the F flag (the interpreter is opened now, so it needs no
# copy inside the root)
register_qemu() {
    local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e "$entry" ] || update-binfmts --enable qemu-aarch64
    grep -q '^enabled' "$entry" || die "$entry is disabled: update-binfmts --enable qemu-aarch64"
    grep -q '^flags:.*F' "$entry" || die "$entry lacks the F flag: reinstall Debian's qemu-user-static"
}

# refuse to delete a folder something is still mounted under (a bind of /dev, say)
check_unmounted() {
    local path
    path=$(realpath -m "$1")
    if awk -v p="$path/" 'index($2 "/", p) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        die "something is still mounted under $path: umount it first"
    fi
}

bootstrap_root() {
    if [ -f "$ROOT/.trapedge-root" ]; then
        say "arm64 root: cached in $ROOT"
        return
    fi
    say "arm64 root: debootstrap bookworm arm64 into $ROOT (both stages, through qemu)"
    check_unmounted "$ROOT.partial"
    rm -rf "$ROOT.partial"
    mkdir -p "$(dirname "$ROOT")"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$ROOT.partial" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 || die "debootstrap failed: $OUT/debootstrap.log"
    mv "$ROOT.partial" "$ROOT"
    touch "$ROOT/.trapedge-root"
}

# mount_into SOURCE TARGET [OPTIONS]: bind SOURCE at TARGET inside the root (unmounted on exit)
mount_into() {
    local target="$ROOT$2"
    if [ -d "$1" ]; then mkdir -p "$target"; else touch "$target"; fi
    mount --bind "$1" "$target"
    MOUNTED+=("$target")
    if [ "${3:-}" = ro ]; then
        mount -o remount,bind,ro "$target"
    fi
}

unmount_all() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTED[i]}" || umount -l "${MOUNTED[i]}"
    done
    MOUNTED=()
}

mount_all() {
    check_unmounted "$ROOT"  # left by a run that was killed
    trap unmount_all EXIT
    mount -t proc proc "$ROOT/proc"
    MOUNTED+=("$ROOT/proc")
    mount_into /sys /sys ro
    mount_into /dev /dev
    mount_into "$HOST_CA" /etc/host-ca.crt ro
    mount_into /etc/resolv.conf /etc/resolv.conf ro
    mount_into "$(realpath "$DATA")" /data ro
    mount_into "$(realpath "$BUNDLE")" /bundle ro
    mount_into "$(realpath "$OUT")" /out
}

# the checkout's package sources (what `pip install .` reads), fresh on every run
copy_sources() {
    rm -rf "$ROOT$SOURCE"
    mkdir -p "$ROOT$SOURCE"
    cp -r pyproject.toml README.md common edge trapedge train export central "$ROOT$SOURCE/"
    find "$ROOT$SOURCE" -name __pycache__ -prune -exec rm -rf {} +
}

# the edge extra's aarch64 wheels and the venv, again only when pyproject.toml or the pins change;
# trapedge itself is reinstalled from the fresh copy every run
install_edge() {
    "$PYTHON" -m pip list --format=freeze --exclude-editable >"$ROOT/opt/constraints.txt"
    local key
    key=$(cat pyproject.toml "$ROOT/opt/constraints.txt" | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$ROOT$VENV/.installed" 2>/dev/null)" != "$key" ]; then
        say "installing the edge extra from PyPI's aarch64 wheels into $VENV (pinned to $PYTHON's versions)"
        rm -rf "$ROOT$VENV" "$ROOT$WHEELS"
        in_root python3 -m venv "$VENV"
        in_root "$VENV/bin/pip" download -q --dest "$WHEELS" --constraint /opt/constraints.txt \
            "${SOURCE}[edge]" 'setuptools>=68' wheel
        in_root "$VENV/bin/pip" install -q --no-index --find-links "$WHEELS" --constraint /opt/constraints.txt \
            --report /out/pip-install-report.json "${SOURCE}[edge]"
        echo "$key" >"$ROOT$VENV/.installed"
    else
        say "edge extra: cached in $VENV; reinstalling trapedge from this checkout"
        in_root "$VENV/bin/pip" install -q --no-index --find-links "$WHEELS" --no-deps --force-reinstall "$SOURCE"
    fi
    if in_root "$VENV/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
        die "torch got installed in the arm64 venv: the edge extra must not pull it"
    fi
}

install_facts() {
    local wheels=("$ROOT$WHEELS"/*.whl)
    {
        echo "aarch64 wheels downloaded for the edge extra (MB, largest first):"
        stat -c '%s %n' "${wheels[@]}" | sort -rn | awk '{ n = split($2, part, "/"); total += $1
            printf "%8.1f  %s\n", $1 / 1e6, part[n] }
            END { printf "%8.1f  total (%d wheels; setuptools and wheel only build trapedge)\n", total / 1e6, NR }'
        printf 'venv on disk: %s; the arm64 root with it: %s\n' "$(du -sh "$ROOT$VENV" | cut -f1)" "$(du -sh "$ROOT" | cut -f1)"
        printf 'pip %s, %s\n' "$(in_root "$VENV/bin/pip" --version | cut -d' ' -f2)" "$(in_root "$VENV/bin/python" -VV)"
    } | tee "$OUT/install-facts.txt"
}

main() {
    local start=$SECONDS
    need_host
    mkdir -p "$OUT"
    register_qemu
    bootstrap_root
    mount_all
    copy_sources
    install_edge
    say "x86_64: the bundle on the fixed frames"
    "$PYTHON" -m edge.cli.parity dump "$DATA" --bundle "$BUNDLE" --threads 1 --trusted-key "$(cat "$TRUSTED_KEY")" \
        --out "$OUT/x86_64.json"
    local cpu status=0
    for cpu in $CPUS; do
        say "aarch64, qemu emulating a $cpu: the bundle on the same frames"
        dump_emulated "$cpu"
    done
    unmount_all  # before install_facts measures the root
    echo
    install_facts
    for cpu in $CPUS; do
        echo
        "$PYTHON" -m edge.cli.parity compare "$OUT/x86_64.json" "$OUT/aarch64-$cpu.json" --out "$OUT/summary-$cpu.json" \
            | tee "$OUT/summary-$cpu.txt" || status=1
    done
    echo
    say "$((SECONDS - start)) s in all (emulated: no timing here says anything about a Pi or a Jetson); results in $OUT"
    return "$status"
}

main "$@"
