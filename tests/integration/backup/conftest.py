"""A scratch box for mushishi-backup with the real restic (Debian package): sources, a
repository, state, and the `mushishi-backup` console script run as a real process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.paths import BINDIR

RESTIC = "/usr/bin/restic"


@dataclass
class BackupBox:
    """Paths and helpers of one test's backup set-up."""

    root: Path
    password: str = "correct horse battery staple 42"
    sets: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)
    restic_binary: str = RESTIC
    copies: list[dict[str, Any]] = field(default_factory=list)
    copy_password: str = "a different password for the off-box copy 7"
    extra_env: dict[str, str] = field(default_factory=dict)  # the unit's other variables

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def config(self) -> Path:
        return self.root / "mushishi.toml"

    @property
    def textfile_dir(self) -> Path:
        return self.root / "textfile"

    def source(self, name: str) -> Path:
        path = self.root / "src" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add_set(self, path: Path, reason: str, exclude: Sequence[str] = ()) -> None:
        self.sets.append({"path": str(path), "reason": reason, "exclude": list(exclude)})

    def write_config(self) -> Path:
        lines = ["[backup]", f'restic = "{self.restic_binary}"', f'repository = "{self.repo}"',
                 f'state_dir = "{self.state}"', f'textfile_dir = "{self.textfile_dir}"',
                 f'cache_dir = "{self.root / "cache"}"', 'check_read_data_subset = "100%"']
        lines += [f"{key} = {value}" for key, value in self.extra.items()]
        for item in self.sets:
            lines += ["[[backup.sets]]", f'path = "{item["path"]}"',
                      f"reason = {json.dumps(item['reason'])}",
                      f"exclude = {json.dumps(item['exclude'])}"]
        for copy in self.copies:
            lines.append("[[backup.copies]]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in copy.items()]
        self.config.write_text("\n".join(lines) + "\n")
        return self.config

    def add_copy(self, name: str = "copy", **keys: Any) -> Path:
        """A local off-box stand-in: a copy repository at <root>/<name>."""
        path = self.root / name
        self.copies.append({"repository": str(path),
                            "password_credential": "restic-copy-password", **keys})
        return path

    def env(self, password: str | None = None) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                "MUSHISHI_CREDENTIAL_RESTIC_PASSWORD": password or self.password,
                "MUSHISHI_CREDENTIAL_RESTIC_COPY_PASSWORD": self.copy_password,
                **self.extra_env}

    def argv(self, action: str) -> list[str]:
        return [f"{BINDIR}/mushishi-backup", "--config", str(self.write_config()), action]

    def run(self, action: str = "run", *, password: str | None = None,
            user: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = self.argv(action)
        if user is not None:
            argv = ["/usr/bin/setpriv", f"--reuid={user}", f"--regid={user}",
                    "--clear-groups", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=self.env(password), cwd=self.root)

    def popen(self, action: str = "run") -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(action), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env(),
                                cwd=self.root)

    def last(self, name: str = "last.json") -> dict[str, Any]:
        return json.loads((self.state / name).read_text())

    def history(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in
                (self.state / "history.jsonl").read_text().splitlines()]

    def restic(self, *args: str, check: bool = True, password: str | None = None,
               repo: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Bare restic, as the test's independent oracle."""
        return subprocess.run(
            [RESTIC, "--repo", str(repo or self.repo), "--no-cache", *args],
            capture_output=True, text=True, check=check, timeout=300,
            env={"RESTIC_PASSWORD": password or self.password, "PATH": "/usr/bin:/bin"})

    def copy_restic(self, repo: Path, *args: str, check: bool = True
                    ) -> subprocess.CompletedProcess[str]:
        """Bare restic on a copy repository (its own password)."""
        return self.restic(*args, check=check, password=self.copy_password, repo=repo)

    def restic_popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [RESTIC, "--repo", str(self.repo), "--no-cache", *args], text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={"RESTIC_PASSWORD": self.password, "PATH": "/usr/bin:/bin"})

    def snapshots(self, copy: Path | None = None) -> list[dict[str, Any]]:
        if copy is not None:
            return json.loads(self.copy_restic(copy, "--no-lock", "--json", "snapshots").stdout)
        return json.loads(self.restic("--no-lock", "--json", "snapshots").stdout)

    def locks(self) -> list[str]:
        return self.restic("--no-lock", "list", "locks").stdout.split()

    def wait_for_lock(self, timeout: float = 60) -> str:
        """The first lock file that appears in the repository.

        restic's local backend writes `<id>-tmp-<n>` and then renames it to `<id>`; the
        temporary name is not a lock (it vanished under a CI run once), so it is skipped.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            names = [p.name for p in (self.repo / "locks").glob("*")
                     if "-tmp-" not in p.name] if (self.repo / "locks").is_dir() else []
            if names:
                return names[0]
            time.sleep(0.05)
        raise AssertionError(f"no restic lock appeared in {self.repo} within {timeout}s")


@pytest.fixture
def box() -> Iterator[BackupBox]:
    """A world-traversable scratch root (some tests run the runner as `nobody`)."""
    root = Path(tempfile.mkdtemp(prefix="mushishi-backup-test-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        yield BackupBox(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def random_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def restic_shim(box: BackupBox, name: str, body: str) -> None:
    """Put a shell script in front of the real restic (`$RESTIC` in `body`) for the runner."""
    shim = box.root / name
    shim.write_text(f"#!/bin/sh\nRESTIC={box.restic_binary}\n{body}")
    shim.chmod(0o755)
    box.restic_binary = str(shim)


REFUSED = "refused by the test"


def refusing_restic(box: BackupBox, repository: Path, command: str) -> None:
    """A restic that refuses `command` on `repository` (exit 1, "Fatal: refused by the
    test"), and runs everything else."""
    restic_shim(box, f"restic-no-{command}", f"""case " $* " in
*" {repository} "*" {command} "*) echo "Fatal: {REFUSED}" >&2; exit 1;;
esac
exec "$RESTIC" "$@"
""")


def timed_restic(box: BackupBox) -> Path:
    """A restic that notes when each invocation started and ended, and what it was."""
    log = box.root / "restic-times.log"
    restic_shim(box, "restic-timed", f"""start=$(date +%s.%N)
"$RESTIC" "$@"
status=$?
echo "$start $(date +%s.%N) $*" >> {log}
exit $status
""")
    return log


def restic_spans(log: Path, copy: Path | None = None) -> list[tuple[float, float, str, str]]:
    """(start, end, "copy" or "primary", command) of each restic invocation in `log`
    (`timed_restic`), in the order they started."""
    spans = []
    for line in log.read_text().splitlines():
        start, end, args = line.split(" ", 2)
        words = args.split()
        repository = words[words.index("--repo") + 1]
        command = next(w for w in words if w in (
            "backup", "copy", "forget", "snapshots", "ls", "restore", "list", "init", "cat"))
        spans.append((float(start), float(end), "copy" if repository == str(copy)
                      else "primary", command))
    return sorted(spans)
