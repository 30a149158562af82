"""The SSH lock-out guard: would these rules cut the operator off? (pure)

`apply` gathers the facts (firewall/host.py) and refuses when this finds a problem,
unless the operator passes --allow-ssh-lockout (console access at hand).
"""

from __future__ import annotations

from dataclasses import dataclass

from mushishi.firewall.table import Table, input_allowed, source_of


@dataclass(frozen=True, slots=True)
class Session:
    """An inbound SSH session: the client, the server port it used, where it comes in."""

    client: str
    server_port: int
    interface: str | None
    origin: str  # "$SSH_CONNECTION" or "established connection"


@dataclass(frozen=True, slots=True)
class Facts:
    """What the host looks like right now."""

    sessions: tuple[Session, ...]
    tailnet_up: bool
    ssh_listening: bool


@dataclass(frozen=True, slots=True)
class Verdict:
    """Problems block the apply; warnings are printed."""

    problems: tuple[str, ...]
    warnings: tuple[str, ...]


def check_lockout(table: Table, facts: Facts) -> Verdict:
    """Problems that would lock someone out of SSH with `table` live."""
    ssh = table.service("ssh")
    problems: list[str] = []
    warnings: list[str] = []
    for session in facts.sessions:
        if session.interface is None:
            warnings.append(f"cannot tell which interface the SSH session from {session.client} "
                            f"({session.origin}) arrives on; make sure it is allowed")
            continue
        source = source_of(session.interface, table)
        services = [s for s in table.services
                    if s.proto == "tcp" and s.port == session.server_port]
        if services and input_allowed(services[0], source):
            continue
        if not services:
            why = (f"tcp/{session.server_port} is not in the table "
                   f"([firewall.ssh].port is {ssh.port})")
        else:
            why = f"SSH is exposed to {services[0].exposure!r} only"
        problems.append(
            f"your SSH session from {session.client} comes in over {session.interface} "
            f"({source}), and with these rules a new SSH connection from there would be "
            f"dropped: {why}. Reconnect over an interface the table allows (for "
            f"exposure 'tailnet': ssh to the box's tailnet address) and apply again, or set "
            f"[firewall.ssh].exposure = \"lan\" for now")
    if ssh.exposure == "tailnet" and not facts.tailnet_up:
        problems.append(
            f"the tailnet interface {table.tailnet_interface} is not up with an address, and "
            "[firewall.ssh].exposure = \"tailnet\": SSH would be reachable from nowhere but "
            "the console. Run `tailscale up` first, or set [firewall.ssh].exposure = \"lan\" "
            "until the tailnet works")
    if ssh.exposure != "local" and not facts.ssh_listening:
        problems.append(
            f"nothing listens on tcp/{ssh.port} ([firewall.ssh].port): if sshd uses another "
            "port, set it there, or the new rules would leave the real one closed")
    return Verdict(tuple(problems), tuple(warnings))
