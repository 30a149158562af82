"""The cloud providers as the egress reaches them: one HTTP session each, its API key and
its cooldown state.

Sessions follow no redirect, ignore proxy variables (`trust_env=False`), verify TLS, and
bound the connection time per provider. API keys come from systemd credentials
(`LoadCredential=`, rendered by `mushishi install`); a missing key disables that provider
only, with a log line naming the credential.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver

from mushishi.services.egress.core import Breaker, CloudBackend
from mushishi.shared.credentials import read_credential
from mushishi.shared.metrics import package_version

log = logging.getLogger("mushishi.egress.providers")

USER_AGENT = f"mushishi-egress/{package_version()}"


@dataclass
class Provider:
    """One cloud backend: its settings, session, key and breaker."""

    backend: CloudBackend
    session: aiohttp.ClientSession
    breaker: Breaker
    key: str | None
    key_problem: str

    def headers(self) -> dict[str, str]:
        """The headers every request to this provider carries (never the router's)."""
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity",
                   "User-Agent": USER_AGENT, **self.backend.extra_headers}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        return headers


def read_key(backend: CloudBackend,
             reader: Callable[[str], str] = read_credential) -> tuple[str | None, str]:
    """The backend's API key and '' , or None and why not."""
    if backend.credential is None:
        return None, (f"backends.{backend.name}.api_key_credential is not set: the provider "
                      "would refuse an unauthenticated request")
    try:
        return reader(backend.credential), ""
    except (LookupError, OSError) as error:
        return None, str(error)


def new_session(backend: CloudBackend, resolver: AbstractResolver | None = None
                ) -> aiohttp.ClientSession:
    """An HTTP session to one provider."""
    connector = aiohttp.TCPConnector(limit=0, resolver=resolver, ttl_dns_cache=60,
                                     enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,  # proxy variables are ignored: what leaves, leaves from here
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, connect=backend.connect_timeout_s),
        skip_auto_headers=("User-Agent",),
    )


def build_providers(cloud: Mapping[str, CloudBackend],
                    resolver: AbstractResolver | None = None,
                    reader: Callable[[str], str] = read_credential) -> dict[str, Provider]:
    """A provider per cloud backend; keys read now (a missing one is logged)."""
    providers = {}
    for name, backend in cloud.items():
        key, problem = read_key(backend, reader)
        if key is None:
            log.error("cloud backend %s is disabled: %s", name, problem,
                      extra={"MUSHISHI_BACKEND": name})
        providers[name] = Provider(backend, new_session(backend, resolver),
                                   Breaker(backend.cooldown_after_failures, backend.cooldown_s),
                                   key, problem)
    return providers


async def close_providers(providers: Mapping[str, Provider]) -> None:
    """Close every session."""
    for provider in providers.values():
        await provider.session.close()
