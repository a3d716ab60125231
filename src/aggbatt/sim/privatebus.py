"""A private dbus-daemon for tests, the demo and the benchmark: nothing touches the system bus."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field

from aggbatt.errors import AggbattError


class DbusDaemonMissing(AggbattError, RuntimeError):
    """No dbus-daemon to start a private bus with."""


@dataclass
class PrivateBus:
    """A running dbus-daemon with the session policy, listening on a socket in a temp dir."""

    address: str
    process: subprocess.Popen[bytes]
    directory: str
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PrivateBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The session policy plus connections that do not say who they are: a client whose Unix user the
# bus cannot tell, to test what the daemon lets such callers do.
_ANONYMOUS_CONFIG = """<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <auth>ANONYMOUS</auth>
  <allow_anonymous/>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def start_private_bus(*, allow_anonymous: bool = False) -> PrivateBus:
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        raise DbusDaemonMissing(
            "dbus-daemon not found: install it (Debian: apt-get install dbus-daemon) and retry"
        )
    directory = tempfile.mkdtemp(prefix="aggbatt-bus-")
    socket = os.path.join(directory, "bus")
    policy = "--session"
    if allow_anonymous:
        config = os.path.join(directory, "bus.conf")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(_ANONYMOUS_CONFIG)
        policy = f"--config-file={config}"
    process = subprocess.Popen(
        [daemon, policy, "--nofork", "--nopidfile", "--print-address=1",
         f"--address=unix:path={socket}"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    if not line:
        process.kill()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError("dbus-daemon started but printed no address")
    process.stdout.close()
    return PrivateBus(address=line, process=process, directory=directory)
