"""A real systemd, booted as PID 1 in namespaces over an overlay of `/`: for tests and the demo.

The machine image is the lower layer, a tmpfs the upper one, so nothing inside can change
the host: not /etc, not /tmp (systemd-tmpfiles cleans /tmp at boot), not the network
(a fresh network namespace with only `lo`). The tmpfs and every mount live only in the
sandbox's private mount namespace, and PID 1 of its PID namespace is systemd itself, so
when systemd exits, everything inside goes with it. Each sandbox also has a cgroup namespace
rooted at `<cgroup2>/mushishi-sandbox/<name>` with its own cgroup2 mount, so concurrent
sandboxes never share a unit's cgroup (or its IPAddressDeny= BPF programs).

Teardown is guaranteed three ways: `stop()` asks systemd to power off (SIGRTMIN+4; SIGTERM
only makes PID 1 re-execute), then SIGKILLs it; `unshare --kill-child` kills systemd if
unshare dies; and unshare itself gets SIGKILL when the process that booted it dies
(PR_SET_PDEATHSIG), unless the sandbox is `detached` (the demo).

Usage: `python -m devtools.sandbox boot|stop|status|shell NAME`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from mushishi.shared.processes import pid_alive

# Not /tmp: systemd-tmpfiles cleans /tmp when the sandbox boots.
DEFAULT_STATE_DIR = Path("/var/tmp/mushishi-sandbox")  # noqa: S108
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PR_SET_PDEATHSIG = 1

# Units the machine image enables that have no business in a test box.
_UNWANTED = (
    "multi-user.target.wants", "timers.target.wants", "getty.target.wants",
    "sysinit.target.wants/systemd-timesyncd.service",
    # docker.io and podman enable these: a test that wants a container engine starts it.
    "default.target.wants", "sockets.target.wants/docker.socket",
    "sockets.target.wants/podman.socket",
)
_MASKED = (
    "console-getty.service", "getty@.service", "systemd-timesyncd.service",
    "systemd-networkd.service", "systemd-resolved.service", "apt-daily.timer",
    "apt-daily-upgrade.timer", "e2scrub_reap.service", "systemd-pstore.service",
    "postgresql.service", "nginx.service", "prometheus.service", "ufw.service",
    "prometheus-node-exporter.service",
)

# Runs as PID 1 of the new PID namespace, in the new mount and network namespaces.
_INNER = r"""
set -eu
base="$1"; shift
mount -t tmpfs -o mode=0755 mushishi-sandbox "$base"
mkdir -p "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
mount --rbind /dev "$base/root/dev"
mount -t proc proc "$base/root/proc"
mount --rbind /sys "$base/root/sys"
# Our own cgroup2 tree: this process sits in a cgroup namespace rooted at the sandbox's
# cgroup, so the sandbox's systemd runs in unified mode on a hierarchy no other sandbox (and
# not the host) shares: its system.slice, BPF filters and kills stay its own.
mount -t cgroup2 -o nsdelegate cgroup2 "$base/root/sys/fs/cgroup"
# The BPF filesystem systemd mounts on a host (not in a container): pinned programs that
# units attach with IPEgressFilterPath= (mushishi-dns-filter) live there.
mount -t bpf -o mode=0700 bpf "$base/root/sys/fs/bpf"
for shared in "$@"; do
    mkdir -p "$base/root$shared"
    mount --bind "$shared" "$base/root$shared"
done
etc="$base/root/etc/systemd/system"
for unwanted in __UNWANTED__; do rm -rf "$etc/$unwanted"; done
for masked in __MASKED__; do ln -sfn /dev/null "$etc/$masked"; done
echo mushishi-sandbox > "$base/root/etc/hostname"
hostname mushishi-sandbox
ip link set lo up
mkdir -p "$base/root/oldroot"
cd "$base/root"
pivot_root . oldroot
umount -l /oldroot
rmdir /oldroot
# systemd makes / shared only when it is not in a container; its per-unit credentials
# (LoadCredential=) are mounted in a child namespace and reach the unit only through
# shared propagation. The peers live inside this sandbox's mount namespace only.
mount --make-rshared /
exec env -i container=mushishi-sandbox PATH=__PATH__ /lib/systemd/systemd --system \
    --unit="$UNIT" --log-target=journal
"""


class SandboxError(RuntimeError):
    """The sandbox could not be booted, reached or stopped; the message says why."""


def _pdeathsig_kill() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def cgroup2_root() -> Path:
    """The host's cgroup2 mount: /sys/fs/cgroup (unified) or /sys/fs/cgroup/unified (hybrid)."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    points = {line.split()[1] for line in mounts if line.split()[2] == "cgroup2"}
    for candidate in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if candidate in points:
            return Path(candidate)
    raise SandboxError("no cgroup2 hierarchy is mounted (/sys/fs/cgroup or "
                       "/sys/fs/cgroup/unified); the sandbox needs one for its own systemd")


def _remove_cgroup_tree(path: Path) -> None:
    """rmdir a cgroup and its children, deepest first (a cgroup still in use stays)."""
    if not path.is_dir():
        return
    for child in sorted((p for p in path.rglob("*") if p.is_dir()),
                        key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def _enter_cgroup_and_pdeathsig(cgroup: Path, pdeathsig: bool) -> None:
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    if pdeathsig:
        _pdeathsig_kill()


def check_host() -> None:
    """Raise SandboxError naming what this machine lacks to boot a sandbox."""
    if os.geteuid() != 0:
        raise SandboxError("the systemd sandbox needs root (namespaces, mounts, pivot_root)")
    for tool in ("/usr/bin/unshare", "/usr/bin/nsenter", "/lib/systemd/systemd"):
        if not Path(tool).exists():
            raise SandboxError(f"{tool} is missing: install util-linux and systemd")
    if shutil.which("ip") is None:
        raise SandboxError("`ip` is missing: install iproute2")
    if "overlay" not in Path("/proc/filesystems").read_text():
        raise SandboxError("the kernel has no overlayfs (modprobe overlay)")


class Sandbox:
    """One booted systemd. Use as a context manager, or boot()/stop() explicitly."""

    def __init__(
        self,
        name: str | None = None,
        *,
        state_dir: Path = DEFAULT_STATE_DIR,
        shared_dirs: Sequence[Path] = (),
        unit: str = "multi-user.target",
        detached: bool = False,
    ) -> None:
        self.name = name or f"sbx-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.dir = Path(state_dir) / self.name
        self.shared = self.dir / "shared"
        self.shared_dirs = [self.shared, *(Path(d) for d in shared_dirs)]
        self.unit = unit
        self.detached = detached
        self.pid: int | None = None
        self.cgroup = _cgroup_root_or_none() / "mushishi-sandbox" / self.name
        self._unshare: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def boot(self, timeout: float = 90.0) -> Sandbox:
        """Boot systemd and wait until it is `running` or `degraded`."""
        check_host()
        if self.dir.exists():
            raise SandboxError(f"{self.dir} exists: a sandbox named {self.name} may be running "
                               f"(python -m devtools.sandbox stop {self.name})")
        (self.dir / "base").mkdir(parents=True)
        parent = cgroup2_root() / "mushishi-sandbox"
        for stale in (parent.iterdir() if parent.is_dir() else ()):
            if stale.is_dir() and not (self.dir.parent / stale.name).exists():
                _remove_cgroup_tree(stale)  # left by a sandbox whose runner was killed
        self.cgroup.mkdir(parents=True, exist_ok=True)
        for shared in self.shared_dirs:
            shared.mkdir(parents=True, exist_ok=True)
        inner = (
            _INNER.replace("__UNWANTED__", " ".join(_UNWANTED))
            .replace("__MASKED__", " ".join(_MASKED))
            .replace("__PATH__", SANDBOX_PATH)
        )
        argv = [
            "/usr/bin/unshare", "--pid", "--fork", "--kill-child=SIGKILL", "--mount", "--uts",
            "--ipc", "--net", "--cgroup", "--propagation", "private",
            "/bin/sh", "-c", inner, "mushishi-sandbox", str(self.dir / "base"),
            *(str(d) for d in self.shared_dirs),
        ]
        log = (self.dir / "console.log").open("wb")
        self._unshare = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={"PATH": SANDBOX_PATH, "UNIT": self.unit},
            preexec_fn=functools.partial(
                _enter_cgroup_and_pdeathsig, self.cgroup, not self.detached),
            start_new_session=self.detached,
        )
        log.close()
        (self.dir / "unshare.pid").write_text(str(self._unshare.pid))
        try:
            self.pid = self._find_init(timeout=10)
            (self.dir / "init.pid").write_text(str(self.pid))
            self._wait_running(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _find_init(self, timeout: float) -> int:
        assert self._unshare is not None
        deadline = time.monotonic() + timeout
        children = Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")
        while time.monotonic() < deadline:
            if self._unshare.poll() is not None:
                raise SandboxError(f"the sandbox died while booting:\n{self.console_tail()}")
            with contextlib.suppress(OSError):
                pids = children.read_text().split()
                if pids:
                    return int(pids[0])
            time.sleep(0.02)
        raise SandboxError("the sandbox's init process did not appear")

    def _wait_running(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = "unknown"
        while time.monotonic() < deadline:
            if self._unshare is not None and self._unshare.poll() is not None:
                raise SandboxError(f"systemd exited while booting:\n{self.console_tail()}")
            result = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.2)
        failed = self.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
        raise SandboxError(f"systemd did not finish booting in {timeout:.0f}s (state: {state}; "
                           f"failed units: {failed.strip() or 'none'})")

    def stop(self, timeout: float = 30.0) -> None:
        """Power the sandbox off, SIGKILL it if it lingers, and remove its state directory."""
        pid = self.pid or _read_pid(self.dir / "init.pid")
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGRTMIN + 4)
            if not _wait_gone(pid, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 10)
        unshare = self._unshare.pid if self._unshare else _read_pid(self.dir / "unshare.pid")
        if unshare is not None and _alive(unshare):
            with contextlib.suppress(ProcessLookupError):
                os.kill(unshare, signal.SIGKILL)
            _wait_gone(unshare, 10)
        if self._unshare is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._unshare.wait(timeout=5)
        self.pid = None
        _remove_cgroup_tree(self.cgroup)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self.boot()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- talking to it -----------------------------------------------------------------
    def _nsenter(self, namespaces: Sequence[str]) -> list[str]:
        if self.pid is None:
            raise SandboxError("the sandbox is not running")
        return ["/usr/bin/nsenter", "-t", str(self.pid), *namespaces]

    def run(
        self,
        argv: Sequence[str] | str,
        *,
        check: bool = True,
        timeout: float = 120.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the sandbox (all its namespaces); a string runs under sh -c."""
        command = ["/bin/sh", "-c", argv] if isinstance(argv, str) else list(argv)
        if user is not None:
            command = ["/usr/bin/setpriv", f"--reuid={user}", f"--regid={user}",
                       "--init-groups", "--", *command]
        environment = {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "",
                       "SYSTEMD_COLORS": "0", "HOME": "/root", **(env or {})}
        result = subprocess.run(
            [*self._nsenter(["-a"]), "--", *command], capture_output=True, text=True,
            input=input, timeout=timeout, env=environment, check=False,
        )
        if check and result.returncode != 0:
            raise SandboxError(
                f"`{shlex.join(command)}` exited {result.returncode} in sandbox {self.name}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def net_command(self, argv: Sequence[str]) -> list[str]:
        """argv prefixed to run with the host's files but the sandbox's network namespace."""
        return [*self._nsenter(["-n"]), "--", *argv]

    def path(self, inside: str | os.PathLike[str]) -> Path:
        """The host path of a file inside the sandbox (through /proc/PID/root)."""
        if self.pid is None:
            raise SandboxError("the sandbox is not running")
        return Path(f"/proc/{self.pid}/root") / Path(inside).relative_to("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        """Write a file inside the sandbox, creating its directory."""
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        target.chmod(mode)

    def systemctl(self, *args: str, check: bool = True, timeout: float = 120.0
                  ) -> subprocess.CompletedProcess[str]:
        """`systemctl ARGS…` inside the sandbox."""
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def is_active(self, unit: str) -> str:
        """`systemctl is-active UNIT`'s answer (active, inactive, failed, activating…)."""
        return self.systemctl("is-active", unit, check=False).stdout.strip()

    def wait_for(self, unit: str, state: str = "active", timeout: float = 60.0) -> None:
        """Wait until `unit` reaches `state`; raise SandboxError with its status if not."""
        deadline = time.monotonic() + timeout
        current = "unknown"
        while time.monotonic() < deadline:
            current = self.is_active(unit)
            if current == state:
                return
            time.sleep(0.1)
        status = self.systemctl("status", "--lines=30", unit, check=False).stdout
        raise SandboxError(f"{unit} is {current}, not {state}, after {timeout:.0f}s:\n{status}")

    def journal(self, *args: str) -> str:
        """`journalctl --no-pager ARGS…` inside the sandbox (after a flush)."""
        self.run(["journalctl", "--flush"], check=False)
        return self.run(["journalctl", "--no-pager", *args], check=False).stdout

    def add_default_route(self) -> None:
        """A default route, as a real box has one, through a veth that leads nowhere: the
        router's start-up probe of its kernel confinement (and a tenant's) then gets EPERM
        from IPAddressDeny= and shows `kernel ✓`, not `?` (no route), which
        `require_kernel_confinement = true` (the installed config's) refuses."""
        self.run("ip link add wan0 type veth peer name wan1 && ip link set wan0 up && "
                 "ip link set wan1 up && ip route add default dev wan0")

    def install(self, config_text: str, *, bindir: str | None = None,
                credentials: Mapping[str, str] | None = None) -> str:
        """Write the config and credentials, then run `mushishi install` inside."""
        self.write("/etc/mushishi/mushishi.toml", config_text)
        for name, value in (credentials or {}).items():
            self.write(f"/etc/mushishi/credentials/{name}", value, mode=0o600)
        bindir = bindir or str(Path(sys.executable).parent)
        result = self.run([f"{bindir}/mushishi", "install", "--bindir", bindir])
        return result.stdout

    def console_tail(self, lines: int = 40) -> str:
        """The last lines systemd printed to its console."""
        try:
            text = (self.dir / "console.log").read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])


def _cgroup_root_or_none() -> Path:
    try:
        return cgroup2_root()
    except (SandboxError, OSError):
        return Path("/nonexistent-cgroup2")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if not pid_alive(pid):
        return False
    # A zombie is not alive; reap it if it is ours.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def attach(name: str, state_dir: Path = DEFAULT_STATE_DIR) -> Sandbox:
    """A handle on a detached sandbox booted by another process (the demo)."""
    sandbox = Sandbox(name, state_dir=state_dir, detached=True)
    sandbox.pid = _read_pid(sandbox.dir / "init.pid")
    if sandbox.pid is None or not _alive(sandbox.pid):
        raise SandboxError(f"no running sandbox named {name} (in {state_dir})")
    return sandbox


def main(argv: Sequence[str] | None = None) -> int:
    """Boot, stop, inspect or enter a detached sandbox."""
    parser = argparse.ArgumentParser(prog="python -m devtools.sandbox")
    parser.add_argument("action", choices=["boot", "stop", "status", "shell", "pid"])
    parser.add_argument("name", nargs="?", default="demo")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    try:
        if args.action == "boot":
            sandbox = Sandbox(args.name, state_dir=args.state_dir, detached=True).boot()
            print(json.dumps({"name": sandbox.name, "pid": sandbox.pid}))
        elif args.action == "stop":
            sandbox = Sandbox(args.name, state_dir=args.state_dir, detached=True)
            sandbox.stop()
            print(f"sandbox {args.name} stopped")
        elif args.action == "pid":
            print(attach(args.name, args.state_dir).pid)
        elif args.action == "status":
            sandbox = attach(args.name, args.state_dir)
            print(sandbox.systemctl("list-units", "mushishi*", check=False).stdout)
        else:
            sandbox = attach(args.name, args.state_dir)
            os.execv("/usr/bin/nsenter", [*sandbox._nsenter(["-a"]), "--", "/bin/bash", "-l"])
    except SandboxError as error:
        print(f"sandbox: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
