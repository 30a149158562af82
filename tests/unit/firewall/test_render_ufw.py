"""The UFW rendering: rules per exposure, tags, and the idempotent after.rules block."""

from __future__ import annotations

import pytest

from mushishi.firewall.render_ufw import (
    BEGIN_MARKER,
    END_MARKER,
    BlockError,
    docker_user_block,
    merge_block,
    render_ufw,
    ufw_rules,
)
from mushishi.firewall.table import Service, Table

TABLE = Table("tailscale0", ("docker0", "br-+"), (
    Service("ssh", 22, "tcp", "tailnet"),
    Service("comfyui", 8188, "tcp", "tailnet"),
    Service("db", 5432, "tcp", "local"),
    Service("wg", 41641, "udp", "lan"),
    Service("push", 9091, "tcp", "local", from_containers=True),
), "tailnet", True)

AFTER_RULES = "# after.rules\n*filter\n:ufw-after-input - [0:0]\nCOMMIT\n"


def test_rules_follow_exposure_in_ufw_normal_form() -> None:
    assert ufw_rules(TABLE) == [
        ("mushishi:ssh:tcp/22:tailscale0", ["allow", "in", "on", "tailscale0", "to", "any",
                                            "port", "22", "proto", "tcp", "comment",
                                            "mushishi:ssh:tcp/22:tailscale0"]),
        ("mushishi:comfyui:tcp/8188:tailscale0", ["allow", "in", "on", "tailscale0", "to",
                                                  "any", "port", "8188", "proto", "tcp",
                                                  "comment",
                                                  "mushishi:comfyui:tcp/8188:tailscale0"]),
        ("mushishi:wg:udp/41641:any", ["allow", "41641/udp", "comment",
                                       "mushishi:wg:udp/41641:any"]),
        ("mushishi:push:tcp/9091:docker0", ["allow", "in", "on", "docker0", "to", "any",
                                            "port", "9091", "proto", "tcp", "comment",
                                            "mushishi:push:tcp/9091:docker0"]),
        ("mushishi:push:tcp/9091:br-+", ["allow", "in", "on", "br-+", "to", "any", "port",
                                         "9091", "proto", "tcp", "comment",
                                         "mushishi:push:tcp/9091:br-+"]),
    ]


def test_docker_user_block_trusts_interfaces_not_private_ranges() -> None:
    block = docker_user_block(TABLE, "ipv4")
    lines = block.splitlines()
    assert lines[0] == BEGIN_MARKER and lines[-1] == END_MARKER
    assert "-A DOCKER-USER -o docker0 -j mushishi-docker" in lines
    assert "-A DOCKER-USER -o br-+ -j mushishi-docker" in lines
    assert ("-A mushishi-docker -i tailscale0 -p tcp -m conntrack --ctstate DNAT "
            "--ctorigdstport 8188 -j RETURN") in lines
    assert ("-A mushishi-docker -p udp -m conntrack --ctstate DNAT --ctorigdstport 41641 "
            "-j RETURN") in lines
    assert not any("5432" in line or "9091" in line for line in lines)  # local: closed
    assert lines[-3:] == ["-A mushishi-docker -j DROP", "COMMIT", END_MARKER]
    assert "10.0.0.0/8" not in block and "192.168.0.0/16" not in block


def test_ipv6_block_is_the_same_rules_for_ip6tables() -> None:
    v4 = [line for line in docker_user_block(TABLE, "ipv4").splitlines()
          if line.startswith("-A")]
    v6 = [line for line in docker_user_block(TABLE, "ipv6").splitlines()
          if line.startswith("-A")]
    assert v4 == v6


def test_merge_block_appends_once_and_replaces_after() -> None:
    block = docker_user_block(TABLE, "ipv4")
    once = merge_block(AFTER_RULES, block)
    assert once == AFTER_RULES + block
    assert merge_block(once, block) == once
    other = docker_user_block(Table("tailscale0", ("docker0",), (), "tailnet", False), "ipv4")
    replaced = merge_block(once, other)
    assert replaced == AFTER_RULES + other and replaced.count(BEGIN_MARKER) == 1


def test_merge_block_keeps_what_follows_an_old_block() -> None:
    block = docker_user_block(TABLE, "ipv4")
    text = AFTER_RULES + block + "# operator's own lines\n"
    assert merge_block(text, block) == AFTER_RULES + "# operator's own lines\n" + block


def test_merge_block_adds_a_missing_final_newline() -> None:
    block = docker_user_block(TABLE, "ipv4")
    assert merge_block("COMMIT", block) == "COMMIT\n" + block


@pytest.mark.parametrize("damaged", [
    AFTER_RULES + BEGIN_MARKER + "\n",
    AFTER_RULES + END_MARKER + "\n" + BEGIN_MARKER + "\n",
])
def test_merge_block_refuses_damaged_markers(damaged: str) -> None:
    with pytest.raises(BlockError, match="unbalanced"):
        merge_block(damaged, docker_user_block(TABLE, "ipv4"))


def test_script_runs_one_command_per_line_and_never_enables_ufw() -> None:
    script = render_ufw(TABLE, ufw="/usr/sbin/ufw", after_rules="/etc/ufw/after.rules",
                        after6_rules="/etc/ufw/after6.rules")
    assert script.startswith("#!/bin/sh\n")
    assert "set -eu" in script
    commands = [line for line in script.splitlines() if line.startswith('"$UFW" ')]
    assert len(commands) == 3 + 5
    assert all(line.count('"$UFW"') == 1 for line in commands)
    assert "enable" not in "\n".join(commands)
    assert script.index("check_markers /etc/ufw/after6.rules") < script.index(commands[0])
    assert "install_block /etc/ufw/after.rules <<'MUSHISHI_BLOCK'" in script
    assert "--netfilter-mode=off" in script  # the tailscaled limit, stated
