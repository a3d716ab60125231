"""scripts/aggbatt-ctl on a GX sandbox: daemontools from apt, a private bus, the real daemon.

The lifecycle test walks what a user does over the years: install, change the config, a crash,
an update, a broken update that rolls back, a firmware update that empties /service, uninstall.
It runs under the shell found as `sh` and, when installed, under BusyBox (the GX's userland).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from aggbatt.config import default_config, load_config
from tests.gxhelpers import (
    BUS_NAME,
    CTL,
    PYTHON_TAG,
    REPO,
    Gx,
    build_release,
    missing_tools,
    rewrite_release,
    setting,
    start_localsettings,
    wait_for,
)

pytestmark = [
    pytest.mark.bus,
    pytest.mark.skipif(bool(missing_tools()),
                       reason=f"needs daemontools and dbus-send: apt-get install daemontools "
                              f"dbus-bin (missing: {', '.join(missing_tools())})"),
]

MARK = "# aggbatt-ctl boot hook"
REFERENCE = Path(__file__).parents[1] / "fixtures" / "reference"
# What aggbatt-ctl and service/run call; under BusyBox these are all applets.
APPLETS = ("sh", "mv", "ln", "tar", "gzip", "sha256sum", "cut", "sed", "awk", "grep", "cp", "rm",
           "mkdir", "readlink", "cat", "tail", "head", "df", "dirname", "date", "sleep", "cmp",
           "chmod", "tr", "ls", "uname", "printf", "echo", "basename", "rmdir")


def busybox_env(gx: Gx) -> dict[str, str]:
    bindir = gx.base / "busybox-bin"
    bindir.mkdir()
    busybox = shutil.which("busybox")
    assert busybox is not None
    for applet in APPLETS:
        (bindir / applet).symlink_to(busybox)
    env = gx.env
    env["PATH"] = f"{bindir}:{env['PATH']}"
    return env


def hook_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if MARK in line]


def link(path: Path) -> str:
    return os.readlink(path)


def install_with_svscan(gx: Gx, tarball: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """install, with svscan started the moment the service entry appears: the same as svscan's
    periodic rescan finding it, without waiting up to 5 s for that rescan."""
    process = subprocess.Popen(["sh", str(CTL), "install", str(tarball)], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (gx.service / "log" / "run").exists() or process.poll() is not None, 30,
                 "install to create the service entry")
        gx.start_svscan()
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("userland", ["sh", "busybox"])
def test_lifecycle(gx: Gx, userland: str) -> None:
    """The sh variant walks every step; the BusyBox variant the ones that lean on the userland's
    tools (unpack, checksums, symlink switch, rc.local edits, rollback, removal)."""
    full = userland == "sh"
    settings_file = gx.base.parent / "localsettings.json"  # outside the sandbox it checks
    localsettings = None
    if full:
        env = gx.env
        # Venus picks a pack as battery monitor and BMS until the aggregate is selected.
        localsettings = start_localsettings(gx.bus_address, settings_file)
    else:
        if shutil.which("busybox") is None:
            pytest.skip("busybox not installed (apt-get install busybox)")
        env = busybox_env(gx)
        # A user's rc.local with other drivers' lines and no final newline stays byte-identical.
        gx.rc_local.write_text("#!/bin/bash\n/data/other-driver/enable.sh &")
        gx.rc_local.chmod(0o755)
    rc_local_before = gx.rc_local.read_bytes() if gx.rc_local.exists() else None
    v1 = build_release(gx.dist, "1.0.0")
    v2 = build_release(gx.dist, "2.0.0")
    bad = build_release(gx.dist, "3.0.0", broken=True)
    before = gx.listing()
    try:
        lifecycle(gx, env, full, v1, v2, bad, before, rc_local_before, settings_file)
    finally:
        if localsettings is not None:
            localsettings.terminate()
            localsettings.wait(timeout=10)


def lifecycle(gx: Gx, env: dict[str, str], full: bool, v1: Path, v2: Path, bad: Path,
              before: set[str], rc_local_before: bytes | None, settings_file: Path) -> None:
    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return gx.ctl(*args, env=env)

    selection = ("/Settings/SystemSetup/BatteryService", "/Settings/SystemSetup/BmsInstance")

    # --- install: release, config from the commented defaults, boot hook, running service ---
    result = install_with_svscan(gx, v1, env)
    assert result.returncode == 0, result.stdout + result.stderr
    if full:
        assert [setting(settings_file, p) for p in selection] == ["com.victronenergy.battery/100", 100]
    else:
        assert "choose the aggregate in Settings > System setup" in result.stderr
    pid = gx.healthy_pid()
    assert pid is not None
    assert link(gx.root / "current") == "releases/1.0.0"
    assert link(gx.enabled_link) == str(gx.root)
    config = (gx.root / "config.toml").read_text()
    assert config == (gx.root / "current" / "config.example.toml").read_text()
    assert load_config(gx.root / "config.toml") == default_config()
    assert len(hook_lines(gx.rc_local)) == 1 and os.access(gx.rc_local, os.X_OK)
    assert gx.rc_local.read_text().startswith("#!/bin/")
    status = ctl("status")
    assert status.returncode == 0 and f"{BUS_NAME} owned by pid {pid}" in status.stdout

    if full:
        assert "config OK" in ctl("check-config").stdout
        # --- idempotent: the user's config is never overwritten, one hook line, no restart ---
        assert config.count("# readmit_after = 5.0\n") == 1
        mine = config.replace("# readmit_after = 5.0\n", "readmit_after = 12.0\n")
        (gx.root / "config.toml").write_text(mine)
        for again in (("install", str(v1)), ("enable",)):
            result = ctl(*again)
            assert result.returncode == 0, result.stdout + result.stderr
        assert (gx.root / "config.toml").read_text() == mine
        assert load_config(gx.root / "config.toml").freshness.readmit_after == 12.0
        assert len(hook_lines(gx.rc_local)) == 1
        assert gx.healthy_pid() == pid

        # --- kill -9: supervise restarts it, state and config stay ---
        state_before = {p.name: p.read_bytes() for p in (gx.root / "state").iterdir()
                        if not p.name.startswith(".")}
        os.kill(pid, 9)
        pid = wait_for(lambda: (p := gx.healthy_pid()) != pid and p, 20, "a new daemon after kill -9")
        assert {p.name for p in (gx.root / "state").iterdir()} >= state_before.keys()
        assert (gx.root / "config.toml").read_text() == mine
    else:
        # --- switching from the reference: stop, convert its config and state, start ---
        assert ctl("stop").returncode == 0
        wait_for(lambda: ": down " in gx.svstat(), 10, "aggbatt-ctl stop")
        result = ctl("cli", "migrate-ini", str(REFERENCE / "config_LFP.ini"), "--out",
                     str(gx.root / "config.toml"), "--state-dir", str(gx.root / "state"), "--force")
        assert result.returncode == 0, result.stdout + result.stderr
        assert (gx.root / "state" / "balancing.json").is_file()
        result = ctl("start")
        assert result.returncode == 0, result.stdout + result.stderr
        assert gx.healthy_pid() is not None

    # --- update to a good release ---
    result = ctl("update", str(v2))
    assert result.returncode == 0, result.stdout + result.stderr
    assert link(gx.root / "current") == "releases/2.0.0"
    assert link(gx.root / "previous") == "releases/1.0.0"
    assert gx.healthy_pid() is not None
    assert "*** starting aggbatt 2.0.0" in gx.log_text()
    if full:
        result = ctl("restart")
        assert result.returncode == 0, result.stdout + result.stderr
        running, other = "2.0.0", "1.0.0"
    else:
        assert load_config(gx.root / "config.toml").charge.strategy == "own"  # kept by update
        result = ctl("rollback")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "*** starting aggbatt 1.0.0" in gx.log_text().rsplit("*** starting aggbatt 2.0.0", 1)[1]
        running, other = "1.0.0", "2.0.0"
    assert link(gx.root / "current") == f"releases/{running}"
    assert link(gx.root / "previous") == f"releases/{other}"
    assert gx.healthy_pid() is not None

    # --- a release whose daemon exits at once: rolled back, the old one runs again ---
    result = ctl("update", str(bad))
    assert result.returncode == 1
    assert f"rolled back to {running}, which runs again" in result.stderr
    assert "broken on purpose" in result.stderr  # the failing release's log lines are shown
    assert link(gx.root / "current") == f"releases/{running}"
    assert link(gx.root / "previous") == f"releases/{other}"
    assert sorted(os.listdir(gx.root / "releases")) == ["1.0.0", "2.0.0"]
    pid = wait_for(gx.healthy_pid, 20, "the rolled-back release to own the bus name")
    if full:
        # The python fallback finds the same owner when dbus-send is missing.
        status = gx.ctl("status", env=dict(env, AGGBATT_DBUS_SEND="no-dbus-send-here"))
        assert f"owned by pid {pid}" in status.stdout

    # --- reboot after a firmware update: /service is empty, rc.local brings aggbatt back ---
    gx.stop_svscan()
    shutil.rmtree(gx.service_dir)
    gx.service_dir.mkdir()
    if full:
        gx.start_svscan()  # Venus: svscan at rc5 S95, rc.local at S99, found at the next rescan
    subprocess.run([shutil.which("sh", path=env["PATH"]), str(gx.rc_local)], env=env, timeout=30,
                   check=True)
    if not full:
        wait_for(lambda: (gx.service / "log" / "run").exists(), 10, "the boot hook's copy")
        gx.start_svscan()
    pid = wait_for(gx.healthy_pid, 20, "the boot hook to bring the service back")
    assert link(gx.root / "current") == f"releases/{running}"
    for _ in range(2):
        assert ctl("boot").returncode == 0
    assert gx.healthy_pid() == pid  # boot never restarts a running service

    # --- uninstall: only config and state stay; --purge: exactly as before ---
    result = ctl("uninstall")
    assert result.returncode == 0, result.stdout + result.stderr
    if full:
        assert [setting(settings_file, p) for p in selection] == ["default", -1]
    wait_for(lambda: not gx.live_processes(), 10, f"no processes left: {gx.live_processes()}")
    assert gx.owner_pid() is None
    after = gx.listing()
    assert before - after == set()
    # The app folders themselves are the system's: they stay.
    folders = {"data/apps/available/", "data/apps/enabled/"}
    app = "data/apps/available/aggbatt/"
    kept = folders | {app, f"{app}config.toml", f"{app}state/"}
    assert after - before == kept | {p for p in after if p.startswith(f"{app}state/")}
    result = ctl("uninstall", "--purge")
    assert result.returncode == 0, result.stdout + result.stderr
    assert gx.listing() == before | folders
    assert (gx.rc_local.read_bytes() if gx.rc_local.exists() else None) == rc_local_before


def test_install_refuses_a_damaged_download(gx: Gx) -> None:
    tarball = build_release(gx.dist, "1.0.0")
    Path(f"{tarball}.sha256").write_text("0" * 64 + f"  {tarball.name}\n")
    result = gx.ctl("install", str(tarball))
    assert result.returncode == 1
    assert "SHA-256 is" in result.stderr and "download it again" in result.stderr
    assert not gx.root.exists() or not any((gx.root / "releases").glob("*"))


def test_install_refuses_files_that_do_not_match_the_sums(gx: Gx) -> None:
    tarball = build_release(gx.dist, "1.0.0")
    Path(f"{tarball}.sha256").unlink()
    with tarfile.open(tarball) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    with tarfile.open(tarball, "w:gz") as tar:
        for member, data in members:
            if member.name.endswith("/app/aggbatt/cli.py"):
                data = data + b"\n# tampered\n"
                member.size = len(data)
            tar.addfile(member, None if data is None else io.BytesIO(data))
    result = gx.ctl("install", str(tarball))
    assert result.returncode == 1
    assert "do not match its SHA256SUMS" in result.stderr
    assert "only the checksums inside the tarball are checked" in result.stderr
    assert not any((gx.root / "releases").iterdir())  # the staging dir is cleaned up


def test_install_refuses_a_bundle_for_another_python(gx: Gx) -> None:
    tarball = build_release(gx.dist, "1.0.0", tag="cp399")
    result = gx.ctl("install", str(tarball))
    assert result.returncode == 1
    assert f"built for cp399 but this device's {sys.executable} is {PYTHON_TAG}" in result.stderr
    assert f"get the aggbatt bundle built for {PYTHON_TAG}" in result.stderr
    assert not (gx.root / "current").exists()


def test_hook_goes_to_rc_local_disabled_and_is_removed_from_it(gx: Gx) -> None:
    # Venus >= 3.60 renames rc.local when the user disables system hooks in the GUI.
    disabled = Path(f"{gx.rc_local}.disabled")
    disabled.write_text("#!/bin/sh\necho other\n")
    env = dict(gx.env, AGGBATT_HEALTH_TIMEOUT="1")
    result = gx.ctl("install", str(build_release(gx.dist, "1.0.0")), env=env)
    # No svscan in this test: the service cannot come up, and the error says what to do.
    assert result.returncode == 1
    assert '"Disable custom startup scripts" is on' in result.stderr
    assert "aggbatt-ctl restart" in result.stderr
    assert not gx.rc_local.exists()
    assert len(hook_lines(disabled)) == 1
    doctor = gx.ctl("doctor", env=env)
    assert f"boot hook:  in {disabled}" in doctor.stdout
    assert '"Disable custom startup scripts" is on' in doctor.stdout
    assert "aggbatt is off after the next reboot" in doctor.stdout
    status = gx.ctl("status", env=env)
    assert f"warning: boot hook in {disabled}" in status.stderr
    assert "aggbatt is off after the next reboot" in status.stderr
    result = gx.ctl("uninstall", env=env)
    assert result.returncode == 0, result.stderr
    assert disabled.read_text() == "#!/bin/sh\necho other\n"


def test_doctor_reports_where_dependencies_come_from(gx: Gx) -> None:
    assert "release:    none installed" in gx.ctl("doctor").stdout
    gx.ctl("install", str(build_release(gx.dist, "1.0.0")), env=dict(gx.env, AGGBATT_HEALTH_TIMEOUT="1"))
    doctor = gx.ctl("doctor")
    assert doctor.returncode == 0
    assert f"release:    1.0.0, built for {PYTHON_TAG}" in doctor.stdout
    import dbus_fast
    import pydantic

    assert f"from {os.path.dirname(dbus_fast.__file__)}" in doctor.stdout
    assert f"pydantic:       {pydantic.VERSION} from {os.path.dirname(pydantic.__file__)}" in doctor.stdout
    assert "free space:" in doctor.stdout and " MB " in doctor.stdout
    assert "boot hook:  present in" in doctor.stdout
    assert f"app:        enabled ({gx.enabled_link})" in doctor.stdout


def test_logs_with_and_without_tai64nlocal(gx: Gx) -> None:
    gx.log_dir.mkdir(parents=True)
    # multilog's TAI64N label of 2020-01-01 00:00:00 UTC: 2^62 + 10 + Unix seconds, then ns.
    label = "@" + format(2**62 + 10 + 1577836800, "016x") + "00000000"
    (gx.log_dir / "@400000005e0bdc2a00000000.s").write_text(f"{label} older file\n")
    (gx.log_dir / "current").write_text(f"{label} *** starting aggbatt 1.0.0 ***\n")
    stamped = gx.ctl("logs", env=dict(gx.env, TZ="UTC"))
    assert stamped.returncode == 0, stamped.stderr
    assert stamped.stdout.splitlines() == [
        "2020-01-01 00:00:00.000000000 older file",
        "2020-01-01 00:00:00.000000000 *** starting aggbatt 1.0.0 ***"]
    bindir = gx.base / "bin-without-tai64nlocal"
    bindir.mkdir()
    (bindir / "cat").symlink_to(shutil.which("cat"))
    raw = gx.ctl("logs", env=dict(gx.env, PATH=str(bindir)), shell=shutil.which("sh"))
    assert raw.returncode == 0
    assert raw.stdout.splitlines()[1] == f"{label} *** starting aggbatt 1.0.0 ***"
    assert "tai64nlocal missing" in raw.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("frobnicate",), "unknown command 'frobnicate'"),
    (("update",), "which release?"),
    (("update", "/nonexistent.tar.gz"), "not installed"),
    (("start",), "not enabled"),
    (("uninstall", "--everything"), "unknown option --everything"),
])
def test_usage_errors_say_what_to_do(gx: Gx, args: tuple[str, ...], message: str) -> None:
    result = gx.ctl(*args)
    assert result.returncode == 1
    assert message in result.stderr


def test_relative_root_is_rejected(gx: Gx) -> None:
    result = gx.ctl("status", env=dict(gx.env, AGGBATT_ROOT="data/apps/aggbatt"))
    assert result.returncode == 1
    assert "not an absolute path" in result.stderr


PLUGIN = "gui-v2/aggbatt.json"


def old_hook_line(gx: Gx) -> str:
    """The boot hook line that an install from before the app folders wrote."""
    ctl = f"{gx.old_root}/current/bin/aggbatt-ctl"
    return (f"[ -x '{ctl}' ] && AGGBATT_ROOT='{gx.old_root}' AGGBATT_SERVICE_DIR='{gx.service_dir}' "
            f"'{ctl}' boot >/dev/null 2>&1 & {MARK}")


def place_old_install(gx: Gx, tarball: Path) -> None:
    """An install as releases before the app folders left it: everything in /data/apps/aggbatt,
    the hook line on that path, and a service whose run script looks there."""
    releases = gx.old_root / "releases"
    releases.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(releases)
    unpacked = next(releases.iterdir())
    version = (unpacked / "VERSION").read_text().strip()
    unpacked.rename(releases / version)
    (gx.old_root / "current").symlink_to(f"releases/{version}")
    (gx.old_root / "state").mkdir()
    gx.rc_local.write_text(f"#!/bin/sh\n{old_hook_line(gx)}\n")
    gx.rc_local.chmod(0o755)
    (gx.old_root / ".rc-local-record").write_text(f"{gx.rc_local} created\n")
    shutil.copytree(releases / version / "service", gx.service)
    run = gx.service / "run"
    default = 'ROOT="${AGGBATT_ROOT:-/data/apps/available/aggbatt}"'
    assert default in run.read_text()
    run.write_text(run.read_text().replace(default, f'ROOT="{gx.old_root}"'))


def test_update_moves_an_install_from_before_the_app_folders(gx: Gx) -> None:
    v1 = build_release(gx.dist, "1.0.0")
    rewrite_release(v1, {PLUGIN: None})
    v2 = build_release(gx.dist, "2.0.0")
    plugin = '{"name": "aggbatt", "version": "2.0.0"}\n'
    rewrite_release(v2, {PLUGIN: plugin})
    place_old_install(gx, v1)
    example = (gx.old_root / "current" / "config.example.toml").read_text()
    mine = example.replace("# readmit_after = 5.0\n", "readmit_after = 12.0\n")
    assert mine != example
    (gx.old_root / "config.toml").write_text(mine)
    (gx.old_root / "state" / "mine.json").write_text('{"kept": true}\n')
    gx.start_svscan()
    old_pid = wait_for(gx.healthy_pid, 20, "the old install's daemon")
    # Dot files are the daemon's temporary files of an atomic save in progress.
    old_state = {p.name for p in (gx.old_root / "state").iterdir() if not p.name.startswith(".")}

    result = gx.ctl("update", str(v2))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"moved {gx.old_root} to {gx.root}" in result.stdout
    assert (gx.root / "config.toml").read_text() == mine
    assert (gx.root / "state" / "mine.json").read_text() == '{"kept": true}\n'
    assert {p.name for p in (gx.root / "state").iterdir()} >= old_state
    assert link(gx.old_root) == str(gx.root)  # what still knows the old path finds the new one
    assert link(gx.enabled_link) == str(gx.root)
    assert (gx.enabled_link / PLUGIN).read_text() == plugin
    assert link(gx.root / "current") == "releases/2.0.0"
    assert link(gx.root / "previous") == "releases/1.0.0"
    ctl = f"{gx.root}/current/bin/aggbatt-ctl"
    assert gx.rc_local.read_text() == (
        f"#!/bin/sh\n[ -x '{ctl}' ] && AGGBATT_ROOT='{gx.root}' "
        f"AGGBATT_SERVICE_DIR='{gx.service_dir}' '{ctl}' boot >/dev/null 2>&1 & {MARK}\n")
    pid = gx.healthy_pid()
    assert pid is not None and pid != old_pid
    assert load_config(gx.root / "config.toml").freshness.readmit_after == 12.0

    again = gx.ctl("update", str(v2))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "moved" not in again.stdout and "already the current release" in again.stdout
    assert gx.healthy_pid() == pid

    # Back to a release without a plugin: its pages would show paths that release lacks.
    result = gx.ctl("rollback")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "release 1.0.0 has no gui-v2 plugin: removed" in result.stdout
    assert not (gx.root / PLUGIN).exists()
    assert "gui-v2:     no plugin" in gx.ctl("doctor").stdout

    result = gx.ctl("uninstall")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not os.path.lexists(gx.enabled_link) and not os.path.lexists(gx.old_root)
    assert sorted(os.listdir(gx.root)) == ["config.toml", "state"]
    assert (gx.root / "config.toml").read_text() == mine


def test_move_never_replaces_a_file_in_the_new_place(gx: Gx) -> None:
    """Both places exist: what the new place lacks moves, identical files are dropped, a file that
    differs is left in the old place with a warning. Run again, nothing changes; once the user has
    removed the differing file, the old place becomes a link."""
    env = busybox_env(gx) if shutil.which("busybox") else gx.env
    (gx.root / "state").mkdir(parents=True)
    (gx.root / "config.toml").write_text("# newer\n")
    (gx.root / "state" / "soc.json").write_text('{"soc": 50}\n')
    release = gx.old_root / "releases" / "1.0.0"
    release.mkdir(parents=True)
    (release / "VERSION").write_text("1.0.0\n")
    (gx.old_root / "current").symlink_to("releases/1.0.0")
    (gx.old_root / "state").mkdir()
    (gx.old_root / "config.toml").write_text("# older\n")
    (gx.old_root / "state" / "soc.json").write_text('{"soc": 50}\n')
    (gx.old_root / "state" / "balancing.json").write_text('{"last": 1}\n')

    for attempt in range(2):
        # The move comes first; the missing tarball stops the update right after it.
        result = gx.ctl("update", str(gx.dist / "missing.tar.gz"), env=env)
        assert result.returncode == 1 and "missing.tar.gz: no such file" in result.stderr
        assert ("moved from" in result.stdout) == (attempt == 0), result.stdout
        assert "differ" in result.stderr and " config.toml." in result.stderr
        assert (gx.root / "config.toml").read_text() == "# newer\n"
        assert (gx.old_root / "config.toml").read_text() == "# older\n"
        assert (gx.root / "state" / "balancing.json").read_text() == '{"last": 1}\n'
        assert (gx.root / "state" / "soc.json").read_text() == '{"soc": 50}\n'
        assert sorted(p.name for p in gx.old_root.rglob("*") if p.is_file()) == ["config.toml"]
        assert link(gx.root / "current") == "releases/1.0.0"
        assert (gx.root / "current" / "VERSION").is_file()

    (gx.old_root / "config.toml").unlink()
    result = gx.ctl("update", str(gx.dist / "missing.tar.gz"), env=env)
    assert link(gx.old_root) == str(gx.root), result.stdout + result.stderr
    assert (gx.root / "config.toml").read_text() == "# newer\n"


def test_move_interrupted_after_the_rename_is_finished_by_the_next_run(gx: Gx) -> None:
    # A power cut right after the rename: the folder is in the new place with its marker.
    (gx.root / "state").mkdir(parents=True)
    (gx.root / "config.toml").write_text("# mine\n")
    (gx.root / ".moved-from-old-place").touch()
    result = gx.ctl("update", str(gx.dist / "missing.tar.gz"))
    assert result.returncode == 1
    assert link(gx.old_root) == str(gx.root)
    assert not (gx.root / ".moved-from-old-place").exists()
    assert (gx.root / "config.toml").read_text() == "# mine\n"


def test_new_run_script_under_an_old_ctl_says_how_to_move(gx: Gx) -> None:
    """An old release's aggbatt-ctl updating the old place starts the new service/run, which
    looks in the app folder: its refusal (shown by the old ctl's rollback) says what to run."""
    (gx.old_root / "current").mkdir(parents=True)
    (gx.old_root / "current" / "VERSION").write_text("2.0.0\n")
    result = subprocess.run(["sh", str(REPO / "service" / "run")], capture_output=True, text=True,
                            env=dict(gx.env, AGGBATT_GUARD_SLEEP="0"), timeout=30)
    assert f"this release lives in the Venus app folder {gx.root}" in result.stdout
    assert "bin/aggbatt-ctl update aggbatt-<version>.tar.gz" in result.stdout
