"""What counts as confined: the classification of the probe's send error and answer."""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import ip_network

import pytest

from mushishi.shared.confinement_probe import (
    SO_EE_ORIGIN_ICMP,
    SO_EE_ORIGIN_ICMP6,
    SO_EE_ORIGIN_LOCAL,
    IcmpAnswer,
    classify_answer,
    classify_send_error,
    format_target,
    parse_extended_error,
)

BOX = [ip_network("172.30.240.0/24")]


@pytest.mark.parametrize(("number", "confined"), [
    (errno.EPERM, True), (errno.ENETUNREACH, None), (errno.EHOSTUNREACH, None),
    (errno.EADDRNOTAVAIL, None), (errno.EACCES, False), (errno.EINVAL, False),
])
def test_send_errors(number: int, confined: bool | None) -> None:
    assert classify_send_error(number, "192.0.2.1:9").confined is confined


@pytest.mark.parametrize(("answer", "confined"), [
    (None, False),
    ("replied", False),
    (IcmpAnswer(SO_EE_ORIGIN_ICMP, 3, 13, errno.EHOSTUNREACH, "172.30.240.1"), True),
    (IcmpAnswer(SO_EE_ORIGIN_ICMP, 3, 10, errno.EHOSTUNREACH, "172.30.240.1"), True),
    (IcmpAnswer(SO_EE_ORIGIN_ICMP, 3, 9, errno.ENETUNREACH, "172.30.240.1"), True),
    # The same refusal from a firewall out in the world: the datagram left the box.
    (IcmpAnswer(SO_EE_ORIGIN_ICMP, 3, 13, errno.EHOSTUNREACH, "198.51.100.1"), False),
    (IcmpAnswer(SO_EE_ORIGIN_ICMP, 3, 3, errno.ECONNREFUSED, "172.30.240.1"), False),
    (IcmpAnswer(SO_EE_ORIGIN_ICMP, 3, 3, errno.ECONNREFUSED, "203.0.113.1"), False),
    (IcmpAnswer(SO_EE_ORIGIN_ICMP, 3, 0, errno.ENETUNREACH, "172.30.240.1"), None),
    (IcmpAnswer(SO_EE_ORIGIN_ICMP, 3, 1, errno.EHOSTUNREACH, "172.30.240.1"), None),
    (IcmpAnswer(SO_EE_ORIGIN_ICMP, 3, 1, errno.EHOSTUNREACH, "10.0.0.1"), False),
    (IcmpAnswer(SO_EE_ORIGIN_ICMP, 11, 0, errno.EHOSTUNREACH, "10.0.0.1"), False),
    (IcmpAnswer(SO_EE_ORIGIN_ICMP6, 1, 1, errno.EACCES, "fd00::1"), False),
    (IcmpAnswer(SO_EE_ORIGIN_LOCAL, 0, 0, errno.EMSGSIZE, None), None),
    (IcmpAnswer(SO_EE_ORIGIN_ICMP, 3, 13, errno.EHOSTUNREACH, None), False),
])
def test_answers(answer: IcmpAnswer | str | None, confined: bool | None) -> None:
    assert classify_answer(answer, "192.0.2.1:9", BOX, 1.0).confined is confined  # type: ignore[arg-type]


def test_an_ipv6_admin_prohibited_answer_from_the_box_is_confinement() -> None:
    answer = IcmpAnswer(SO_EE_ORIGIN_ICMP6, 1, 1, errno.EACCES, "fd30::1")
    result = classify_answer(answer, "[2001:db8::1]:9", [ip_network("fd30::/64")], 1.0)
    assert result.confined is True
    assert result.detail == ("the box's tenant firewall refused a datagram to [2001:db8::1]:9 "
                             "(ICMPv6 administratively prohibited from fd30::1)")


def test_the_kernel_error_record_is_parsed_with_its_sender() -> None:
    v4 = struct.pack("=IBBBBII", errno.EHOSTUNREACH, SO_EE_ORIGIN_ICMP, 3, 13, 0, 0, 0) + \
        struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_aton("172.30.240.1"))
    assert parse_extended_error(v4) == IcmpAnswer(SO_EE_ORIGIN_ICMP, 3, 13, errno.EHOSTUNREACH,
                                                  "172.30.240.1")
    v6 = struct.pack("=IBBBBII", errno.EACCES, SO_EE_ORIGIN_ICMP6, 1, 1, 0, 0, 0) + \
        struct.pack("=HHI16sI", socket.AF_INET6, 0, 0,
                    socket.inet_pton(socket.AF_INET6, "fd30::1"), 0)
    assert parse_extended_error(v6).offender == "fd30::1"
    local = struct.pack("=IBBBBII", errno.EMSGSIZE, SO_EE_ORIGIN_LOCAL, 0, 0, 0, 0, 0)
    assert parse_extended_error(local).offender is None


def test_targets_are_written_like_listen_addresses() -> None:
    assert format_target("192.0.2.1", 9) == "192.0.2.1:9"
    assert format_target("2001:db8::1", 9) == "[2001:db8::1]:9"
