"""A real dbus-daemon on a private socket, for tests that must not touch the system bus."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

DBUS_DAEMON = "/usr/bin/dbus-daemon"

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class PrivateBus:
    """`with PrivateBus() as bus:` — `bus.address` is a unix:path=… address."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="mushishi-bus-")
        self.socket = Path(self._dir.name) / "bus"
        self.address = f"unix:path={self.socket}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateBus:
        """Start dbus-daemon and wait for its socket."""
        if not Path(DBUS_DAEMON).exists():
            raise RuntimeError(f"{DBUS_DAEMON} is missing: install the dbus package")
        config = Path(self._dir.name) / "bus.conf"
        config.write_text(_CONFIG.format(socket=self.socket))
        self._process = subprocess.Popen(
            [DBUS_DAEMON, f"--config-file={config}", "--nofork", "--nopidfile"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                error = self._process.stderr.read().decode() if self._process.stderr else ""
                self.stop()
                raise RuntimeError(f"dbus-daemon did not start: {error}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop dbus-daemon and remove its directory."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process is not None and self._process.stderr is not None:
            self._process.stderr.close()
        self._dir.cleanup()

    def __enter__(self) -> PrivateBus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
