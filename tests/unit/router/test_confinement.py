"""The kernel self-check counts only cgroup BPF's EPERM as confinement (real sockets; this
test process is not confined)."""

from __future__ import annotations

from mushishi.services.router.confinement import check_kernel_confinement


def test_eacces_from_a_broadcast_address_is_not_mistaken_for_confinement() -> None:
    # Without SO_BROADCAST the kernel answers EACCES whatever the cgroup says.
    result = check_kernel_confinement("255.255.255.255:9")
    assert result.kernel is False, result
    assert "EACCES, not EPERM" in result.detail
