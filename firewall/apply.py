"""Apply, confirm, roll back and restore table inet mushishi (orchestration).

An apply is: `nft -c` the new ruleset (a rejected one is never loaded), `nft -c` the
ruleset that would restore the current table (no rollback, no apply), save both, start
the guard, then load the new ruleset in one `nft -f` transaction. Until someone confirms,
the guard (a separate process in its own session, so a dropped SSH connection does not
take it down) restores the previous table at the deadline, or at once if it is told to
stop. `restore` loads the last confirmed ruleset at boot.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mushishi.firewall import state as files
from mushishi.firewall.host import (
    Ip,
    established_peers,
    listening,
    sockets,
    ssh_connection_env,
)
from mushishi.firewall.lockout import Facts, Session
from mushishi.firewall.metrics import export
from mushishi.firewall.nft import Nft, NftError
from mushishi.firewall.render_nft import restore_text
from mushishi.firewall.state import Pending, StateDir, iso, sha256
from mushishi.firewall.table import Table

log = logging.getLogger("mushishi.firewall")

SpawnGuard = Callable[[StateDir, str, float, str, str | None], int]
GUARD_SIGNALS = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}


class FirewallError(Exception):
    """A refused or failed firewall command; the message says what to do."""


def spawn_guard(state: StateDir, token: str, deadline: float, nft: str,
                textfile_dir: str | None) -> int:
    """Start the rollback guard detached from the caller's session; return its pid."""
    # The guard starts with its stop signals blocked (the mask survives exec), so one sent
    # before it reaches sigtimedwait() is queued, not fatal.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, GUARD_SIGNALS)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "mushishi.firewall.guard", "--state-dir", str(state.path),
             "--token", token, "--deadline", repr(deadline), "--nft", nft,
             *(["--textfile-dir", textfile_dir] if textfile_dir else [])],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
    return process.pid


def guard_alive(pid: int, token: str, proc_root: str = "/proc") -> bool:
    """Is `pid` still the guard started for `token` (not a recycled pid)?"""
    try:
        cmdline = Path(proc_root, str(pid), "cmdline").read_bytes()
    except OSError:
        return False
    return token.encode() in cmdline.split(b"\0")


@dataclass
class Firewall:
    """One box's table inet mushishi: the nft adapter, the state directory, a clock."""

    nft: Nft
    state: StateDir
    textfile_dir: str | None = None
    clock: Callable[[], float] = time.time
    spawn: SpawnGuard = spawn_guard
    signal_guard: Callable[[int, str], None] = field(default=lambda pid, token: _stop(pid, token))

    # -- apply -------------------------------------------------------------------------

    def apply(self, ruleset: str, timeout_s: float) -> Pending:
        """Load `ruleset` now; it stays only if confirmed within `timeout_s` seconds."""
        try:
            return self._apply(ruleset, timeout_s)
        finally:
            export(self.state, self.textfile_dir)

    def _apply(self, ruleset: str, timeout_s: float) -> Pending:
        with self.state.locked():
            now = self.clock()
            pending = self.state.pending()
            if pending is not None:
                if now >= pending.deadline and not guard_alive(pending.guard_pid,
                                                               pending.token):
                    raise FirewallError(
                        f"the change applied at {iso(pending.applied_at)} was never confirmed "
                        "and its guard is gone (killed?): run `mushishi firewall rollback`")
                raise FirewallError(
                    f"a change applied at {iso(pending.applied_at)} is waiting for "
                    f"confirmation until {iso(pending.deadline)}: run `mushishi firewall "
                    "confirm` or `mushishi firewall rollback` first")
            digest = sha256(ruleset)
            try:
                self.nft.check(ruleset)
            except NftError as error:
                self.state.record(now, "rejected", f"nft -c rejected the ruleset: {error}",
                                  digest)
                log.error("firewall ruleset rejected by nft -c; nothing changed: %s", error)
                raise FirewallError("nft -c rejected the ruleset; nothing was changed:\n"
                                    f"{error}") from None
            previous = self.nft.list_table(stateless=True)
            try:
                self.nft.check(restore_text(previous))
            except NftError as error:
                raise FirewallError(
                    "the current table inet mushishi could not be put back if needed (nft -c "
                    f"rejects its own listing), so nothing was changed:\n{error}") from None
            self.state.write(files.PREVIOUS, previous or files.NO_TABLE_MARKER)
            self.state.write(files.APPLIED, ruleset)
            token = secrets.token_hex(16)
            deadline = now + timeout_s
            pid = self.spawn(self.state, token, deadline, self.nft.binary, self.textfile_dir)
            pending = Pending(token=token, applied_at=now, deadline=deadline, guard_pid=pid,
                              sha256=digest)
            self.state.set_pending(pending)
            try:
                self.nft.load(ruleset)
            except NftError as error:
                self.state.remove(files.PENDING)
                self.signal_guard(pid, token)
                self.state.record(now, "failed", f"nft -f failed: {error}", digest)
                raise FirewallError(f"nft -f failed; nothing was changed:\n{error}") from None
            self.state.record(now, "applied", "waiting for confirmation until "
                              f"{iso(deadline)}", digest)
            log.warning("firewall ruleset %s applied; rolls back at %s unless confirmed",
                        digest[:12], iso(deadline))
            return pending

    # -- confirm / rollback -------------------------------------------------------------

    def confirm(self) -> Pending:
        """Keep the pending ruleset: it becomes the confirmed one restored at boot."""
        try:
            return self._confirm()
        finally:
            export(self.state, self.textfile_dir)

    def _confirm(self) -> Pending:
        with self.state.locked():
            pending = self._pending_or_explain("confirm")
            now = self.clock()
            if now >= pending.deadline:
                raise FirewallError(
                    f"too late: the deadline was {iso(pending.deadline)}; the guard restores "
                    "the previous rules (see `mushishi firewall verify`)")
            applied = self.state.read(files.APPLIED) or ""
            self.state.write(files.CONFIRMED, applied)
            self.state.remove(files.PENDING)
            self.state.record(now, "confirmed", f"confirmed {now - pending.applied_at:.0f} s "
                              "after apply", pending.sha256)
            log.warning("firewall ruleset %s confirmed", pending.sha256[:12])
        self.signal_guard(pending.guard_pid, pending.token)
        return pending

    def rollback(self, reason: str, *, token: str | None = None) -> bool:
        """Put the previous table back if a change is pending (for `token`, if given)."""
        try:
            return self._rollback(reason, token)
        finally:
            export(self.state, self.textfile_dir)

    def _rollback(self, reason: str, token: str | None) -> bool:
        with self.state.locked():
            pending = self.state.pending()
            if pending is None or (token is not None and pending.token != token):
                if token is None:
                    self._pending_or_explain("roll back")
                return False
            previous = self.state.read(files.PREVIOUS)
            text = restore_text(None if previous in (None, files.NO_TABLE_MARKER)
                                else previous)
            try:
                self.nft.load(text)
            except NftError as error:
                self.state.record(self.clock(), "rollback-failed", str(error), pending.sha256)
                log.critical("firewall rollback FAILED: %s", error)
                raise FirewallError(f"rollback failed: {error}") from None
            self.state.remove(files.PENDING)
            self.state.record(self.clock(), "rolled-back", reason, sha256(text))
            log.warning("firewall ruleset %s rolled back: %s", pending.sha256[:12], reason)
        if token is None:
            self.signal_guard(pending.guard_pid, pending.token)
        return True

    def _pending_or_explain(self, verb: str) -> Pending:
        pending = self.state.pending()
        if pending is not None:
            return pending
        last = self.state.last()
        tail = f" (last change: {last['action']} at {last['time']}: {last['detail']})" \
            if last else ""
        raise FirewallError(f"nothing to {verb}: no change is waiting for confirmation{tail}")

    # -- boot ---------------------------------------------------------------------------

    def restore(self) -> str:
        """Load the last confirmed ruleset (at boot); return its sha256."""
        try:
            return self._restore()
        finally:
            export(self.state, self.textfile_dir)

    def _restore(self) -> str:
        with self.state.locked():
            confirmed = self.state.read(files.CONFIRMED)
            if confirmed is None:
                raise FirewallError(
                    f"no confirmed ruleset in {self.state.path}: run `mushishi firewall apply` "
                    "and confirm it first")
            digest = sha256(confirmed)
            try:
                self.nft.check(confirmed)
                self.nft.load(confirmed)
            except NftError as error:
                self.state.record(self.clock(), "restore-failed", str(error), digest)
                raise FirewallError(f"could not load {self.state.path / files.CONFIRMED}:\n"
                                    f"{error}") from None
            stale = self.state.pending()
            detail = "restored the confirmed ruleset"
            if stale is not None:
                self.state.remove(files.PENDING)
                detail += (f"; the unconfirmed change applied at {iso(stale.applied_at)} "
                           "was dropped")
            self.state.record(self.clock(), "restored", detail, digest)
            log.info("firewall: %s (%s)", detail, digest[:12])
            return digest


def _stop(pid: int, token: str) -> None:
    """Tell the guard started for `token` to finish (it rolls back only if still pending)."""
    if guard_alive(pid, token):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def lockout_facts(table: Table, ip: Ip, *, proc_root: str = "/proc") -> Facts:
    """Gather what the SSH lock-out guard needs from the live host."""
    ssh_port = table.service("ssh").port
    all_sockets = sockets(proc_root)
    sessions: list[Session] = []
    from_env = ssh_connection_env()
    if from_env is not None:
        client, port = from_env
        sessions.append(Session(client, port, ip.route_interface(client), "$SSH_CONNECTION"))
    for peer in established_peers(all_sockets, ssh_port):
        if from_env is None or peer != from_env[0]:
            sessions.append(Session(peer, ssh_port, ip.route_interface(peer),
                                    f"established connection to tcp/{ssh_port}"))
    tailnet = table.tailnet_interface
    tailnet_up = any(link.name == tailnet and link.up for link in ip.links()) \
        and ip.has_address(tailnet)
    ssh_listening = any(s.proto == "tcp" and s.local_port == ssh_port
                        for s in listening(all_sockets))
    return Facts(tuple(sessions), tailnet_up, ssh_listening)
