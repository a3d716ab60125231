# shellcheck shell=bash
# Shared set-up for scripts/test, scripts/demo and scripts/bench: system packages and the venv.
# Sourced, not run. Usage: aggbatt_setup EXTRA[,EXTRA...] [COMMAND...]: each COMMAND must be on the
# PATH too (installed from the Debian package of the same name).
VENV="${AGGBATT_VENV:-$PWD/.venv}"

_apt_install() {
    local missing=() tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    command -v dbus-daemon >/dev/null 2>&1 || missing+=(dbus-daemon)
    command -v svscan >/dev/null 2>&1 || missing+=(daemontools)
    command -v busybox >/dev/null 2>&1 || missing+=(busybox)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "missing: ${missing[*]}; install them (Debian: apt-get install ${missing[*]}) and retry" >&2
        return 1
    fi
    echo "installing ${missing[*]} with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

aggbatt_setup() {
    local extras="$1" stamp
    _apt_install "${@:2}"
    stamp="$VENV/.aggbatt-$extras-$(sha256sum <pyproject.toml | cut -c1-16)"
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    if [ ! -e "$stamp" ]; then
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]"
        touch "$stamp"
    fi
}
