"""The one place that runs `nft` (adapter): check, load, list."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from mushishi.firewall.render_nft import TABLE


class NftError(Exception):
    """nft refused a command; the message carries nft's own explanation."""


@dataclass(frozen=True, slots=True)
class Nft:
    """`nft` at an absolute path, in the caller's network namespace."""

    binary: str
    timeout_s: float = 30.0

    def _run(self, args: list[str], text: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([self.binary, *args], input=text, capture_output=True,
                                  text=True, timeout=self.timeout_s, check=False)
        except FileNotFoundError:
            raise NftError(f"{self.binary} not found (set [firewall].nft to the nft binary; "
                           "Debian/Ubuntu: apt install nftables)") from None

    def _ok(self, args: list[str], text: str | None = None) -> str:
        result = self._run(args, text)
        if result.returncode != 0:
            raise NftError((result.stderr or result.stdout).strip()
                           or f"nft {' '.join(args)} exited {result.returncode}")
        return result.stdout

    def check(self, ruleset: str) -> None:
        """Raise NftError unless the kernel would accept `ruleset` (`nft -c`, changes nothing)."""
        self._ok(["-c", "-f", "-"], ruleset)

    def load(self, ruleset: str) -> None:
        """Load `ruleset` in one atomic transaction (`nft -f`)."""
        self._ok(["-f", "-"], ruleset)

    def list_table(self, *, stateless: bool = False) -> str | None:
        """`nft list table inet mushishi`, or None when the table does not exist."""
        args = ["-s"] if stateless else []
        result = self._run([*args, "list", "table", *TABLE.split()])
        if result.returncode != 0:
            if "No such file or directory" in result.stderr:
                return None
            raise NftError(result.stderr.strip())
        return result.stdout

    def ruleset_json(self) -> dict[str, Any]:
        """`nft -j list ruleset`: every table, chain and rule in the namespace."""
        return json.loads(self._ok(["-j", "list", "ruleset"]) or '{"nftables": []}')
