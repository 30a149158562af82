"""The soak's verdict: counts, latencies, faults, RSS, and the invariants of issue 14 item 5,
as a dict (written as JSON) and as a markdown table."""

from __future__ import annotations

from collections import Counter
from typing import Any

from benchmarks.soak.clients import Outcome
from benchmarks.soak.faults import Injected

RSS_GROWTH_MAX = 0.10
MAX_LISTED_FAILURES = 40


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def faults_around(faults: list[Injected], began: float, ended: float) -> list[str]:
    """The faults that were running while a request ran (2 s of slack either side)."""
    return [f"{f.kind}@{f.began:.0f}s" for f in faults
            if f.began - 2 <= ended and f.ended + 2 >= began]


def is_lost(outcome: Outcome, bound_s: float) -> bool:
    """What the verdict fails a request for: a `fail:` outcome, or any end past its bound."""
    return outcome.outcome.startswith("fail:") or outcome.seconds > bound_s


def progress(outcomes: list[Outcome], faults: list[Injected], elapsed_s: float,
             total_s: float, bound_s: float) -> str:
    """One line for a run in progress: how far, how many requests and how they ended so far
    (`ok`, a stable code, lost), how many faults."""
    lost = [o for o in outcomes if is_lost(o, bound_s)]
    ok = sum(o.outcome == "ok" for o in outcomes) - sum(o.outcome == "ok" for o in lost)
    coded = len(outcomes) - ok - len(lost)
    return (f"soak: {elapsed_s / 60:.0f} of {total_s / 60:.0f} min, {len(outcomes):,} requests "
            f"({ok:,} ok, {coded:,} stable codes, {len(lost):,} lost), {len(faults)} faults")


def build(*, outcomes: list[Outcome], faults: list[Injected], rss: dict[str, Any],
          ledger: dict[str, Any], provider: dict[str, Any], dropped: int,
          relay_refused: dict[str, int] | None = None,
          restarts: dict[str, int] | None = None, bound_s: float, settle_s: float = 0.0,
          elapsed_s: float, settings: dict[str, Any]) -> dict[str, Any]:
    by_outcome = Counter(o.outcome for o in outcomes)
    failures = [o for o in outcomes if is_lost(o, bound_s)]
    connection_errors = [o for o in outcomes if o.outcome.startswith("fail:connection_error")]
    seconds = [o.seconds for o in outcomes]
    ok_seconds = [o.seconds for o in outcomes if o.outcome == "ok"]
    rss_rows = {}
    rss_flat = True
    for unit in sorted(rss.get("start", {})):
        start_pid, start = rss["start"][unit]
        end_pid, end = rss.get("end", {}).get(unit, (0, 0))
        growth = (end - start) / start if start else None
        flat = bool(start and end) and growth is not None and growth <= RSS_GROWTH_MAX
        rss_flat = rss_flat and flat
        rss_rows[unit] = {"start_kib": start, "end_kib": end, "start_pid": start_pid,
                          "end_pid": end_pid, "growth": growth, "flat": flat}
    ledger_requests = ledger.get("requests_used")
    ledger_tokens = ledger.get("tokens_used")
    budgets_equal = (ledger_requests == provider["answered"]
                     and ledger.get("requests_in_flight") == 0
                     and (ledger.get("estimated_requests") or ledger_tokens ==
                          provider["tokens"]))
    invariants = {
        "every request ended within its bound in success or a stable error code":
            not failures,
        "no client-side connection error": not connection_errors,
        "no T1 request at the cloud canary": not provider["t1_seen"],
        "the ledger's budget equals what the stand-in provider counted": budgets_equal,
        f"router and egress RSS within {RSS_GROWTH_MAX:.0%} start -> end": rss_flat,
        "faults were injected": bool(faults),
    }
    by_tier: dict[str, Counter[str]] = {}
    for o in outcomes:
        by_tier.setdefault(o.profile, Counter())[o.outcome] += 1
    by_client: dict[str, Counter[str]] = {}
    for o in outcomes:
        by_client.setdefault(o.client, Counter())[
            "ok" if o.outcome == "ok" else "code" if o.outcome.startswith("code:")
            else "fail"] += 1
    timeline: dict[int, Counter[str]] = {}
    for o in outcomes:
        kind = "ok" if o.outcome == "ok" else "code" if o.outcome.startswith("code:") else "fail"
        timeline.setdefault(int(o.started // 10) * 10, Counter())[f"{o.profile}:{kind}"] += 1
    return {
        "settings": settings,
        "elapsed_s": round(elapsed_s, 1),
        "requests": len(outcomes),
        "bound_s": bound_s,
        "outcomes": dict(by_outcome.most_common()),
        "by_profile": {p: dict(c.most_common()) for p, c in sorted(by_tier.items())},
        "by_client": {k: dict(c) for k, c in sorted(by_client.items())},
        "latency_s": {"p50": round(percentile(seconds, 0.50), 3),
                      "p99": round(percentile(seconds, 0.99), 3),
                      "max": round(max(seconds, default=0.0), 3),
                      "ok_p50": round(percentile(ok_seconds, 0.50), 3),
                      "ok_p99": round(percentile(ok_seconds, 0.99), 3)},
        "faults": dict(Counter(f.kind for f in faults).most_common()),
        "faults_not_injected": dict(Counter(f.kind for f in faults if not f.ok)),
        "fault_log": [f.to_json() for f in faults],
        "connections_dropped_by_relay": dropped,
        "relay_could_not_reach_floor": relay_refused or {},
        "unit_restarts_by_systemd": restarts or {},
        "rss": rss_rows,
        "budget": {"ledger_requests": ledger_requests, "ledger_tokens": ledger_tokens,
                   "ledger_in_flight": ledger.get("requests_in_flight"),
                   "ledger_estimated": ledger.get("estimated_requests"),
                   "settle_wait_s": round(settle_s, 1),
                   "provider_answered": provider["answered"],
                   "provider_tokens": provider["tokens"],
                   "provider_refused": provider["refused"]},
        "t1_at_cloud": provider["t1_seen"],
        "timeline_10s": {t: dict(c) for t, c in sorted(timeline.items())},
        "failures": len(failures),
        "failure_list": [{**o.to_json(), "faults": faults_around(faults, o.started,
                                                                 o.started + o.seconds)}
                         for o in failures[:MAX_LISTED_FAILURES]],
        "invariants": invariants,
        "passed": all(invariants.values()),
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lat = result["latency_s"]
    lines = [
        f"# Chaos soak: {result['requests']} requests in {result['elapsed_s']} s, "
        f"{sum(result['faults'].values())} faults, seed {s['seed']}",
        "",
        f"{s['concurrency']} workers; clients {', '.join(s['clients'])}; profiles "
        + ", ".join(f"{p} ({t})" for p, t in s["profiles"].items())
        + f"; a fault every {s['fault_interval_s'][0]:g}-{s['fault_interval_s'][1]:g} s; "
        f"bound per request {result['bound_s']:g} s.",
        "",
        "| | |",
        "|---|---|",
        f"| requests | {result['requests']} |",
    ]
    lines += [f"| outcome `{name}` | {count} |" for name, count in result["outcomes"].items()]
    lines += [
        f"| latency p50 / p99 / max (all) | {lat['p50']} / {lat['p99']} / {lat['max']} s |",
        f"| latency p50 / p99 (ok) | {lat['ok_p50']} / {lat['ok_p99']} s |",
    ]
    lines += [f"| fault `{kind}` | {count}"
              + (f" ({result['faults_not_injected'][kind]} whose command failed: fault_log)"
                 if kind in result["faults_not_injected"] else "") + " |"
              for kind, count in result["faults"].items()]
    lines.append(f"| connections reset by the relay | {result['connections_dropped_by_relay']} |")
    if result["relay_could_not_reach_floor"]:
        lines.append("| relay: llama-server not reachable | " + ", ".join(
            f"{k} {v}" for k, v in result["relay_could_not_reach_floor"].items()) + " |")
    lines += [f"| systemd restarts of {unit} (NRestarts) | {count} |"
              for unit, count in result["unit_restarts_by_systemd"].items()]
    for unit, row in result["rss"].items():
        growth = f"{row['growth']:+.1%}" if row["growth"] is not None else "?"
        lines.append(f"| RSS {unit} start / end | {row['start_kib']} / {row['end_kib']} KiB "
                     f"({growth}; pid {row['start_pid']} / {row['end_pid']}) |")
    b = result["budget"]
    lines.append(f"| budget: ledger / provider requests | {b['ledger_requests']} / "
                 f"{b['provider_answered']} (in flight {b['ledger_in_flight']} after "
                 f"{b['settle_wait_s']} s, estimated {b['ledger_estimated']}) |")
    lines.append(f"| budget: ledger / provider tokens | {b['ledger_tokens']} / "
                 f"{b['provider_tokens']} |")
    lines.append(f"| T1 requests at the cloud canary | {len(result['t1_at_cloud'])} |")
    lines += ["", "| profile | outcomes |", "|---|---|"]
    lines += [f"| {p} | " + ", ".join(f"{k} {v}" for k, v in c.items()) + " |"
              for p, c in result["by_profile"].items()]
    lines += ["", "| client | ok / code / fail |", "|---|---|"]
    lines += [f"| {k} | {c.get('ok', 0)} / {c.get('code', 0)} / {c.get('fail', 0)} |"
              for k, c in result["by_client"].items()]
    lines += ["", "| invariant | holds |", "|---|---|"]
    lines += [f"| {name} | {'yes' if holds else '**NO**'} |"
              for name, holds in result["invariants"].items()]
    if result["failure_list"]:
        lines += ["", f"Failures ({result['failures']}, first {len(result['failure_list'])}):",
                  "", "| t (s) | client | profile | outcome | s | faults around it |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {f['started']:.1f} | {f['client']} | {f['profile']} | {f['outcome']} | "
                  f"{f['seconds']:.2f} | {', '.join(f['faults']) or 'none'} |"
                  for f in result["failure_list"]]
    return "\n".join(lines) + "\n"
