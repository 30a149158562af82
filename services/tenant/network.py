"""`mushishi-tenant network` (mushishi-tenant-network.service, root with CAP_NET_ADMIN):
load the Docker tenants' egress rules, table inet mushishi_tenants, in one `nft -f`.

Docker tenants' units want and follow this unit (a drop-in `mushishi install` renders),
so the rules are in place before any of their containers starts. Loading replaces the table
atomically, so running it again (`systemctl restart mushishi-tenant-network`) puts back a
rule that was removed by hand.
"""

from __future__ import annotations

import logging

from mushishi.firewall.nft import Nft, NftError
from mushishi.firewall.tenant_egress import TENANT_TABLE, TenantEgress, render_tenant_nft
from mushishi.shared.config import MushishiSettings
from mushishi.shared.notify import Notifier

log = logging.getLogger("mushishi.tenant")


def load_tenant_egress(settings: MushishiSettings, notifier: Notifier, *,
                       nft: Nft | None = None, source: str = "") -> int:
    """Render and load the table; 0 when loaded, 1 with one line saying why not."""
    egress = TenantEgress.from_settings(settings)
    nft = nft or Nft(settings.firewall.nft)
    try:
        nft.load(render_tenant_nft(egress, source=source))
    except NftError as error:
        line = f"cannot load table {TENANT_TABLE}: {error}"
        log.error("%s", line)
        notifier.status(line)
        return 1
    nets = ", ".join(str(n) for n in egress.networks)
    line = (f"loaded table {TENANT_TABLE}: traffic from {egress.bridge} reaches only {nets}")
    log.info("%s", line)
    notifier.status(line)
    return 0
