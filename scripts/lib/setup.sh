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

# Qt (PySide6, the `gui` extra) in a venv of its own, for the gui-v2 plugin: scripts/bundle takes
# its rcc, and the plugin test loads the pages in its offscreen QML engine. The wheels are large,
# so the venv of the daemon, the demo and the benchmark stays without them. A failed install only
# warns: the plugin test then skips and says why.
aggbatt_gui_setup() {
    local gui_venv="${AGGBATT_GUI_VENV:-$PWD/.venv-gui}"
    local stamp
    stamp="$gui_venv/.aggbatt-gui-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -e "$stamp" ]; then
        _apt_install_qt_libs || true
        { [ -x "$gui_venv/bin/python" ] || python3 -m venv "$gui_venv"; } &&
            "$gui_venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[gui]" &&
            touch "$stamp" ||
            echo "warning: could not install PySide6 into $gui_venv; the gui-v2 plugin test skips" >&2
    fi
    [ -e "$stamp" ] && export AGGBATT_QT_PYTHON="$gui_venv/bin/python"
    return 0
}

# The system libraries Qt's offscreen platform loads (present on most desktops, not on a minimal
# Debian).
_apt_install_qt_libs() {
    local missing=()
    local lib pkg
    for pair in libEGL.so.1:libegl1 libGL.so.1:libgl1 libfontconfig.so.1:libfontconfig1 \
                libxkbcommon.so.0:libxkbcommon0 libglib-2.0.so.0:libglib2.0-0; do
        lib="${pair%%:*}"; pkg="${pair##*:}"
        ldconfig -p 2>/dev/null | grep -q "$lib" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "the Qt test needs: ${missing[*]}" >&2
        return 1
    fi
    echo "installing ${missing[*]} with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" fonts-dejavu-core >/dev/null
}
