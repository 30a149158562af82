"""`mushishi-tenant guard NAME` (ExecStartPre=): refuse to start a tenant that does not fit.

Free VRAM must cover the tenant's `vram_mib`; otherwise one line names the tenant, the need
and what holds the memory, and the unit fails before the tenant's command ever runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from mushishi.services.tenant.stoplist import cgroup_of, describe_holders
from mushishi.shared.config import MushishiSettings
from mushishi.shared.gpu import GpuProbe, GpuProbeError, GpuSnapshot
from mushishi.shared.journal import log_extra
from mushishi.shared.notify import Notifier

log = logging.getLogger("mushishi.tenant")


def refusal_line(tenant: str, need_mib: int, snapshot: GpuSnapshot, stop_list: Sequence[str],
                 cgroups: Callable[[int], str] = cgroup_of) -> str | None:
    """The one-line reason a tenant does not fit, or None when it does."""
    if snapshot.free_mib >= need_mib:
        return None
    holders = describe_holders(snapshot, stop_list, cgroups)
    held = "; ".join(holders[:6]) if holders else "nothing reported"
    return (f"tenant {tenant} does not fit: needs {need_mib} MiB of VRAM, "
            f"{snapshot.free_mib} MiB free of {snapshot.total_mib} MiB; held by: {held}")


def guard(settings: MushishiSettings, tenant: str, probe_factory: Callable[[], GpuProbe],
          notifier: Notifier) -> int:
    """Exit status for ExecStartPre=: 0 when the tenant fits."""
    need = settings.tenants[tenant].vram_mib
    try:
        probe = probe_factory()
        try:
            snapshot = probe.read()
        finally:
            probe.close()
    except GpuProbeError as error:
        line = f"tenant {tenant}: cannot check free VRAM: {error}"
        log.error("%s", line)
        notifier.status(line)
        return 1
    line = refusal_line(tenant, need, snapshot, settings.gpu.stop_list)
    if line is not None:
        log.error("%s", line, extra=log_extra(backend=tenant))
        notifier.status(line)
        return 1
    log.info("tenant %s fits: needs %d MiB, %d MiB free", tenant, need, snapshot.free_mib,
             extra=log_extra(backend=tenant))
    return 0
