"""How a failed unit and its alert name each other.

Every mushishi unit carries `OnFailure=mushishi-alert@%N.service`: `%N` is the unit's
name without its type suffix, so the failure of `mushishi-backup.service` starts
`mushishi-alert@mushishi-backup.service` (not `…@mushishi-backup.service.service`), and
the alert's instance (`%i`, `mushishi-backup`) names the service that failed.
"""

from __future__ import annotations

ON_FAILURE = "OnFailure=mushishi-alert@%N.service"

# systemd's unit types: a name ending in one of these already says what it is.
UNIT_TYPES = ("service", "socket", "target", "timer", "path", "mount", "automount", "swap",
              "device", "slice", "scope")


def failed_unit(instance: str) -> str:
    """The unit a mushishi-alert@ instance is about: `mushishi-backup` is
    `mushishi-backup.service`; a name with its type suffix (`mushishi-backup.service`, as
    given by hand or by a unit installed before %N) is kept as it is."""
    _, dot, suffix = instance.rpartition(".")
    if dot and suffix in UNIT_TYPES:
        return instance
    return f"{instance}.service"
