"""`mushishi install [--root DIR]`: units, D-Bus policy, config skeleton, user, directories."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mushishi.ctl.install import (
    CONFIG_FILE,
    activate,
    apply_plan,
    default_bindir,
    find_restic,
    plan_install,
    record_restic_path,
    skeleton_config,
)
from mushishi.shared.config import ConfigError, load_settings


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of install."""
    parser.add_argument("--root", default="/", help="install into this root (packaging, tests)")
    parser.add_argument("--config", help="config to render units from (default: ROOT/"
                        f"{CONFIG_FILE}; a skeleton is written there when missing)")
    parser.add_argument("--bindir", default=None,
                        help="directory of the mushishi-* console scripts (default: this "
                        "installation's)")
    parser.add_argument("--enable", action="store_true",
                        help="enable mushishi.target so the always-on units start at boot")


def run(args: argparse.Namespace) -> int:
    """Install; print what changed; exit 1 on an invalid config, naming the key."""
    root = Path(args.root).resolve()
    config_path = Path(args.config) if args.config else root / CONFIG_FILE
    config_text = None
    if not config_path.exists():
        if args.config:
            print(f"mushishi install: --config {config_path}: no such file", file=sys.stderr)
            return 1
        config_text = skeleton_config()
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(config_text, encoding="utf-8")
        print(f"wrote config skeleton {config_path}")
    try:
        settings = load_settings(config_path)
    except ConfigError as error:
        print(error.report(), file=sys.stderr)
        return 1
    if not (root / settings.backup.restic.lstrip("/")).is_file():
        found = find_restic(root)
        if found is not None:
            config_path.write_text(
                record_restic_path(config_path.read_text(encoding="utf-8"), found),
                encoding="utf-8")
            print(f"backup.restic: {settings.backup.restic} does not exist; found restic at "
                  f"{found} and wrote it into {config_path}")
            settings = load_settings(config_path)
    bindir = args.bindir or default_bindir()
    plan = plan_install(settings, bindir, root=root, config_text=None)
    if root != Path("/") and os.geteuid() != 0:
        print("note: not root; ownership is left to the packaging step", file=sys.stderr)
    changed = apply_plan(plan, root)
    for line in changed:
        print(line)
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for line in activate(root, enable=args.enable):
        print(line)
    if not changed:
        print("already installed; nothing changed")
    return 0
