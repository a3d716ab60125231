"""A GX device in a temp dir: daemontools' svscan on a private /service, /data, /var/log and a
private D-Bus as the system bus, plus release tarballs built from this repository.

Nothing here touches the real /data, /service or system bus: every path reaches service/run and
aggbatt-ctl through the AGGBATT_* variables, the bus through DBUS_SYSTEM_BUS_ADDRESS.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent
CTL = REPO / "scripts" / "aggbatt-ctl"
BUNDLE = REPO / "scripts" / "bundle"
BUS_NAME = "com.victronenergy.battery.aggregate"
PYTHON_TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"

T = TypeVar("T")


def missing_tools() -> list[str]:
    return [t for t in ("svscan", "supervise", "svc", "svstat", "svok", "multilog", "dbus-send")
            if shutil.which(t) is None]


def build_release(out: Path, version: str, *, tag: str = PYTHON_TAG, broken: bool = False) -> Path:
    """A release tarball of this repository without bundled dependencies: the test's own Python
    has them. `broken`: its daemon exits at once (import-time error)."""
    result = subprocess.run(
        [sys.executable, str(BUNDLE), "--no-deps", "--compile", "none", "--python-tag", tag,
         "--version", version, "--out", str(out)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    tarball = Path(result.stdout.strip())
    if broken:
        rewrite_release(tarball, {"app/aggbatt/cli.py": 'raise SystemExit("broken on purpose")\n'})
    return tarball


def rewrite_release(tarball: Path, changes: dict[str, str | None]) -> None:
    """Replace, add (text) or remove (None) files of a release tarball, with consistent
    SHA256SUMS and .sha256 sidecar."""
    with tarfile.open(tarball) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    top = members[0][0].name.split("/")[0]
    contents = {m.name[len(top) + 1:]: data for m, data in members if data is not None}
    for rel, text in changes.items():
        if text is None:
            contents.pop(rel, None)
        else:
            contents[rel] = text.encode()
    old = {m.name[len(top) + 1:] for m, _ in members}
    template = next(m for m, data in members if data is not None)
    for rel in sorted(set(contents) - old):
        member = tarfile.TarInfo(f"{top}/{rel}")
        member.mode, member.mtime = template.mode, template.mtime
        members.append((member, contents[rel]))
    contents["SHA256SUMS"] = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {rel}\n"
        for rel, data in sorted(contents.items()) if rel != "SHA256SUMS").encode()
    with tarfile.open(tarball, "w:gz") as tar:
        for member, _ in members:
            rel = member.name[len(top) + 1:]
            if member.isfile() and rel not in contents:
                continue
            if member.isfile():
                member.size = len(contents[rel])
                tar.addfile(member, io.BytesIO(contents[rel]))
            else:
                tar.addfile(member)
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    Path(f"{tarball}.sha256").write_text(f"{digest}  {tarball.name}\n")


LOCALSETTINGS = """
import asyncio, sys
from dbus_fast.aio import MessageBus
from aggbatt.sim.settings import SimSettings

async def main():
    bus = await MessageBus(bus_address=sys.argv[1]).connect()
    sim = SimSettings(bus, state_file=sys.argv[2], initial={
        "/Settings/SystemSetup/BatteryService": "default", "/Settings/SystemSetup/BmsInstance": -1})
    await sim.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def start_localsettings(bus_address: str, state_file: Path) -> subprocess.Popen[str]:
    """The simulated com.victronenergy.settings with systemcalc's two selection settings at their
    GX defaults; every change lands in `state_file` (JSON)."""
    process = subprocess.Popen([sys.executable, "-c", LOCALSETTINGS, bus_address, str(state_file)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        process.wait()
        raise AssertionError("the simulated localsettings did not start")
    return process


def setting(state_file: Path, path: str) -> object:
    return json.loads(state_file.read_text())["settings"][path]["value"]


def wait_for(check: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Gx:
    base: Path
    bus_address: str
    svscan: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for d in (self.data / "apps", self.service_dir, self.base / "log", self.dist):
            d.mkdir(parents=True, exist_ok=True)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def apps(self) -> Path:
        return self.base / "data" / "apps"

    @property
    def root(self) -> Path:
        return self.apps / "available" / "aggbatt"

    @property
    def enabled_link(self) -> Path:
        return self.apps / "enabled" / "aggbatt"

    @property
    def old_root(self) -> Path:
        """Where releases before the Venus app folders installed aggbatt."""
        return self.apps / "aggbatt"

    @property
    def service_dir(self) -> Path:
        return self.base / "service"

    @property
    def service(self) -> Path:
        return self.base / "service" / "aggbatt"

    @property
    def rc_local(self) -> Path:
        return self.base / "data" / "rc.local"

    @property
    def log_dir(self) -> Path:
        return self.base / "log" / "aggbatt"

    @property
    def dist(self) -> Path:
        return self.base / "dist"


    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGGBATT_")}
        env.update(
            AGGBATT_APPS_DIR=str(self.apps),
            AGGBATT_ROOT=str(self.root),
            AGGBATT_SERVICE_DIR=str(self.service_dir),
            AGGBATT_RC_LOCAL=str(self.rc_local),
            AGGBATT_LOG_DIR=str(self.log_dir),
            AGGBATT_PYTHON=sys.executable,
            AGGBATT_HEALTH_TIMEOUT="20",
            AGGBATT_HEALTH_SETTLE="0.5",
            DBUS_SYSTEM_BUS_ADDRESS=self.bus_address,
            PYTHONDONTWRITEBYTECODE="1",
        )
        return env

    def ctl(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None,
            shell: str = "sh") -> subprocess.CompletedProcess[str]:
        return subprocess.run([shell, str(CTL), *args], env=env or self.env, capture_output=True,
                              text=True, timeout=timeout)

    # ----- daemontools --------------------------------------------------------------------

    def start_svscan(self) -> None:
        assert self.svscan is None
        self.svscan = subprocess.Popen(["svscan", str(self.service_dir)], env=self.env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)

    def stop_svscan(self) -> None:
        """Like a shutdown: svscan first (it would start a new supervise for every one that
        exits), then every supervised service and its log."""
        if self.svscan is not None:
            self.svscan.send_signal(signal.SIGTERM)
            self.svscan.wait(timeout=10)
            self.svscan = None
        entries = list(self.service_dir.iterdir()) if self.service_dir.exists() else []
        for entry in entries:
            subprocess.run(["svc", "-dx", str(entry), str(entry / "log")],
                           stderr=subprocess.DEVNULL, timeout=10)
        for entry in entries:
            try:
                wait_for(lambda e=entry: not self.supervised(e) and not self.supervised(e / "log"),
                         10, f"supervise in {entry} to exit ({self.live_processes()})")
            except AssertionError:
                # Leave nothing running behind a failed test, then report the failure.
                subprocess.run(["svc", "-kx", str(entry), str(entry / "log")],
                               stderr=subprocess.DEVNULL, timeout=10)
                wait_for(lambda e=entry: not self.supervised(e) and not self.supervised(e / "log"),
                         5, f"supervise in {entry} to exit after svc -k")
                raise

    @staticmethod
    def supervised(directory: Path) -> bool:
        return subprocess.run(["svok", str(directory)], stderr=subprocess.DEVNULL).returncode == 0

    def svstat(self, directory: Path | None = None) -> str:
        return subprocess.run(["svstat", str(directory or self.service)], capture_output=True,
                              text=True, timeout=10).stdout

    def service_pid(self, directory: Path | None = None) -> int | None:
        match = re.search(r": up \(pid (\d+)\)", self.svstat(directory))
        return int(match.group(1)) if match else None

    # ----- bus ----------------------------------------------------------------------------

    def owner_pid(self, name: str = BUS_NAME) -> int | None:
        result = subprocess.run(
            ["dbus-send", f"--bus={self.bus_address}", "--print-reply", "--reply-timeout=2000",
             "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
             "org.freedesktop.DBus.GetConnectionUnixProcessID", f"string:{name}"],
            capture_output=True, text=True, timeout=10)
        match = re.search(r"uint32 (\d+)", result.stdout)
        return int(match.group(1)) if match else None

    def healthy_pid(self) -> int | None:
        """The supervised pid when it owns the bus name, else None."""
        pid = self.service_pid()
        return pid if pid is not None and self.owner_pid() == pid else None

    # ----- what is left -------------------------------------------------------------------

    def listing(self) -> set[str]:
        found: set[str] = set()
        for top in (self.data, self.service_dir, self.base / "log"):
            for path in [top, *top.rglob("*")]:
                found.add(str(path.relative_to(self.base)) + ("/" if path.is_dir() else ""))
        return found

    def live_processes(self) -> list[str]:
        """Processes (not zombies) working in or on this sandbox, svscan itself excepted."""
        found = []
        base = str(self.base)
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or (self.svscan and int(proc.name) == self.svscan.pid):
                continue
            try:
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                cwd = os.readlink(proc / "cwd")
            except (OSError, IndexError):
                continue
            if state != "Z" and (cwd.startswith(base) or base in cmdline):
                found.append(f"{proc.name} {cmdline} (cwd {cwd})")
        return found

    def log_text(self) -> str:
        current = self.log_dir / "current"
        return current.read_text(errors="replace") if current.exists() else ""
