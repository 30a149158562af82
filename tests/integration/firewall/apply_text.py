"""Apply a ruleset given on stdin through the library, as `mushishi firewall apply` does.

    ip netns exec BOX python apply_text.py STATE_DIR NFT < ruleset.nft

The CLI only applies what it renders from a validated config; this entry lets a test hand
`Firewall.apply` a ruleset nft rejects. Exit 0: applied (pending); 1: refused (message).
"""

from __future__ import annotations

import sys

from mushishi.firewall.apply import Firewall, FirewallError
from mushishi.firewall.nft import Nft
from mushishi.firewall.state import StateDir


def main(argv: list[str]) -> int:
    state_dir, nft = argv
    try:
        pending = Firewall(Nft(nft), StateDir(state_dir)).apply(sys.stdin.read(), 60)
    except FirewallError as error:
        print(error, file=sys.stderr)
        return 1
    print(pending.token)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
