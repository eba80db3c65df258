#!/bin/sh
# The Debian packages `make demo` and `make test` need beside the venv (run by the Makefile before
# it makes the venv). Checks each; only when something is missing: apt-get as root, sudo apt-get
# when sudo works (without a password, or asking for it on a terminal), otherwise one line naming
# the packages and the command to run, and a non-zero exit. Nothing is fetched when all is there.
set -eu

PYTHON=${PYTHON:-python3}
MOSQUITTO=${TRAPEDGE_MOSQUITTO:-/usr/sbin/mosquitto}

missing=""

# has_lib SONAME: the dynamic linker finds SONAME (ldconfig lives in /sbin, off a user's PATH)
has_lib() {
    { command -v ldconfig || echo /sbin/ldconfig; } | { read -r ldconfig; "$ldconfig" -p; } | grep -q "^[[:space:]]*$1 "
}

# need PACKAGE CHECK...: PACKAGE is missing when the CHECK command fails
need() {
    package=$1
    shift
    if ! "$@" >/dev/null 2>&1; then
        case " $missing " in *" $package "*) ;; *) missing="${missing:+$missing }$package" ;; esac
    fi
}

check() {
    missing=""
    need python3 command -v "$PYTHON"
    need python3-venv "$PYTHON" -c 'import ensurepip, venv'       # `python3 -m venv` (Debian splits it off)
    need ca-certificates test -s /etc/ssl/certs/ca-certificates.crt  # pip's PIP_CERT, PyPI over https
    need mosquitto test -x "$MOSQUITTO"                               # the local broker: demo, tests
    need mosquitto command -v mosquitto_passwd
    need chromium command -v chromium                                 # the review UI tests (playwright)
    need libatomic1 has_lib libatomic.so.1                            # playwright's bundled node driver
    need openssl command -v openssl                                   # the TLS broker tests' certificates
    need systemd command -v systemd-analyze                           # the unit file tests
    need mount command -v mount                                       # the disk-full tests' tmpfs
    if [ "$(id -u)" = 0 ]; then
        need postgresql-common id -u postgres                         # root's throwaway PostgreSQL runs as postgres
    fi
}

check
[ -z "$missing" ] && exit 0

# shellcheck disable=SC2086  # $missing is a list of package names
install() {
    $1 apt-get update -qq
    $1 env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

wanted=$missing
started=$(date +%s)
if ! command -v apt-get >/dev/null 2>&1; then
    echo "trapedge: missing system packages (Debian names): $missing - install them with your package manager, then run make again" >&2
    exit 1
elif [ "$(id -u)" = 0 ]; then
    echo "trapedge: installing the missing system packages: $missing (apt-get)"
    install ""
elif command -v sudo >/dev/null 2>&1 && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then
    echo "trapedge: installing the missing system packages: $missing (sudo apt-get)"
    install sudo
else
    echo "trapedge: missing system packages; run this as root (or with sudo), then make again: apt-get install --no-install-recommends $missing" >&2
    exit 1
fi

check
if [ -n "$missing" ]; then
    echo "trapedge: still missing after apt-get install $wanted: $missing" >&2
    exit 1
fi
echo "trapedge: installed $wanted in $(($(date +%s) - started)) s"
