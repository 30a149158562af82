"""Two routers' cProfile stats side by side, per request: which functions one calls that the
other does not, and where their own time differs.

    .venv/bin/python benchmarks/router/compare_profiles.py NEW.prof OLD.prof [--top 30]

Make the two files with `profile_router.py --sampler cprofile --raw FILE`, the older router
run from its own checkout's virtualenv (`/path/to/old/.venv/bin/python
benchmarks/router/profile_router.py …`). Requests are counted as calls of the router's
`Accounting.finish` (a plain function, once per routed request); cProfile counts each
resumption of a coroutine as a call of it, and its per-call overhead inflates Python-heavy
paths: read the differences, not the absolute times.
"""

from __future__ import annotations

import argparse
import pstats
import re

_CHECKOUT = re.compile(r"^.*/site-packages/|^/srv/[^/]+/|^/work/[^/]+/")


def per_request(path: str) -> tuple[dict[tuple[str, str], tuple[float, float]], int]:
    """{(file, function): (calls, own µs) per request}, and the requests counted."""
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    totals: dict[tuple[str, str], list[float]] = {}
    requests = 0
    for (filename, _, function), (_, calls, own, _, _) in stats.items():
        if function == "finish" and filename.endswith("router/accounting.py"):
            requests += calls
        entry = totals.setdefault((_CHECKOUT.sub("", filename), function), [0.0, 0.0])
        entry[0] += calls
        entry[1] += own
    if not requests:
        raise SystemExit(f"{path}: no Accounting.finish calls: not a router profile")
    return {key: (calls / requests, own / requests * 1e6)
            for key, (calls, own) in totals.items()}, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("new")
    parser.add_argument("old")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    new, new_requests = per_request(args.new)
    old, old_requests = per_request(args.old)
    calls = (sum(v[0] for v in new.values()), sum(v[0] for v in old.values()))
    print(f"requests profiled: {new_requests} (new), {old_requests} (old); calls per request "
          f"{calls[0]:.1f} against {calls[1]:.1f} ({calls[0] / calls[1] - 1:+.1%})")
    rows = []
    for key in new.keys() | old.keys():
        (new_calls, new_own), (old_calls, old_own) = new.get(key, (0, 0)), old.get(key, (0, 0))
        rows.append((new_calls - old_calls, new_own - old_own, key, new_calls, old_calls))
    print("\nfunctions by calls per request added (new - old):")
    for added, own, (filename, function), new_calls, old_calls in sorted(
            rows, key=lambda row: -abs(row[0]))[:args.top]:
        print(f"  {added:+6.2f} ({new_calls:6.2f} vs {old_calls:6.2f})  own {own:+6.1f} µs  "
              f"{filename}:{function}")


if __name__ == "__main__":
    main()
