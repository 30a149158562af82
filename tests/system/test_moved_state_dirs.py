"""State directories moved in the config stay writable under the units' hardening.

The units run with ProtectSystem=strict, which leaves only their own StateDirectory=
writable; `mushishi install` must open (ReadWritePaths=) and create (tmpfiles) every
directory the config moves. Real units, real restic, in a booted systemd.
"""

from __future__ import annotations

import json

import tomlkit

from devtools.sandbox import Sandbox
from tests.paths import EXAMPLE_CONFIG
from tests.system.stack import STANDIN


def test_moved_watchdog_backup_and_router_state_dirs_are_written(
    fresh_sandbox: Sandbox,
) -> None:
    box = fresh_sandbox
    box.add_default_route()  # the example config requires the kernel confinement's proof
    document = tomlkit.parse(EXAMPLE_CONFIG.read_text())
    document["gpu"]["probe"] = "simulated"
    document["ntfy"]["url"] = "http://127.0.0.1:9"  # alerts wait in the outbox
    document["watchdog"]["disk_mounts"] = ["/"]
    document["watchdog"]["state_dir"] = "/srv/state/watchdog"
    document["router"]["state_dir"] = "/srv/state/router"
    backup = document["backup"]
    backup["state_dir"] = "/srv/state/backup"
    backup["cache_dir"] = "/srv/state/restic-cache"
    backup["repository"] = "/var/lib/mushishi/restic-repo"
    sets = tomlkit.aot()
    table = tomlkit.table()
    table["path"], table["reason"], table["exclude"] = "/etc/mushishi", "the config", []
    sets.append(table)
    backup["sets"] = sets
    for unit in ("mushishi-tenant@", "mushishi-gpud", "mushishi-cpu-floor", "mushishi-egress"):
        box.write(f"/etc/systemd/system/{unit}.service.d/zz-standin.conf", STANDIN)
    box.install(tomlkit.dumps(document), credentials={"restic-password": "moved dirs pw",
                                                      "ntfy-topic": "moved"})
    for moved in ("watchdog", "router", "backup", "restic-cache"):
        assert box.run(["test", "-d", f"/srv/state/{moved}"], check=False).returncode == 0, \
            f"install did not create /srv/state/{moved}"

    box.systemctl("start", "mushishi-backup.service", timeout=600)
    last = json.loads(box.path("/srv/state/backup/last.json").read_text())
    assert last["outcome"] == "ok", last
    assert any(box.path("/srv/state/restic-cache").iterdir()), "restic wrote no cache"
    # Nothing went to the defaults, which the units could also write.
    assert not box.path("/var/lib/mushishi/backup/last.json").exists()

    box.systemctl("start", "mushishi-watchdog.service", timeout=600)
    result = json.loads(box.path("/srv/state/watchdog/last.json").read_text())
    checks = {c["name"]: c["status"] for c in result["checks"]}
    assert checks["backup-result"] == "ok", result  # read from the moved backup dir
    assert box.path("/srv/state/watchdog/outbox").is_dir()  # ntfy is down: queued there

    # The router writes its cloud share into its moved state dir (at stop at the latest).
    box.systemctl("start", "mushishi-router.service", timeout=120)
    box.systemctl("stop", "mushishi-router.service", timeout=120)
    assert any(box.path("/srv/state/router").iterdir()), \
        box.run(["journalctl", "-u", "mushishi-router", "--no-pager", "-n", "20"]).stdout
