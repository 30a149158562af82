"""Builders of `nft -j list ruleset` shaped data for the interpreter and verify tests."""

from __future__ import annotations

from typing import Any


def m(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


IIFNAME = {"meta": {"key": "iifname"}}
OIFNAME = {"meta": {"key": "oifname"}}
TCP_DPORT = {"payload": {"protocol": "tcp", "field": "dport"}}
ACCEPT: dict[str, Any] = {"accept": None}
DROP: dict[str, Any] = {"drop": None}


def ruleset(chains: dict[str, list[list[dict[str, Any]]]], *, sets: dict[str, list[Any]] | None
            = None, hooks: dict[str, tuple[str, str]] | None = None,
            others: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    items: list[dict[str, Any]] = [{"metainfo": {"version": "1.0.6"}},
                                   {"table": {"family": "inet", "name": "mushishi"}}]
    for name, elements in (sets or {}).items():
        items.append({"set": {"family": "inet", "table": "mushishi", "name": name,
                              "type": "inet_service", "elem": elements}})
    hooks = hooks or {"input": ("input", "drop")}
    for name in chains:
        chain: dict[str, Any] = {"family": "inet", "table": "mushishi", "name": name}
        if name in hooks:
            chain |= {"type": "filter", "hook": hooks[name][0], "policy": hooks[name][1]}
        items.append({"chain": chain})
    handle = 1
    for name, rules in chains.items():
        for exprs in rules:
            items.append({"rule": {"family": "inet", "table": "mushishi", "chain": name,
                                   "handle": handle, "expr": exprs}})
            handle += 1
    return {"nftables": items + (others or [])}
