"""Publishing to ntfy (ntfy.sh or self-hosted) with its JSON API.

JSON publishing goes to the server's ROOT URL with the topic in the body; a JSON body
POSTed to `/<topic>` would arrive on the phone as raw JSON text. A 429 (ntfy's rate limit,
code 42901/42908) means "later", never "drop".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp

from mushishi.services.watchdog.messages import Message


class Delivery(StrEnum):
    """What happened to one publish attempt."""

    DELIVERED = "delivered"
    RATE_LIMITED = "rate-limited"  # 429: retry later
    REJECTED = "rejected"          # another 4xx: kept, and the error names what to fix
    UNREACHABLE = "unreachable"    # connection error, timeout, 5xx: the server is down


@dataclass(frozen=True, slots=True)
class Attempt:
    """The result of one publish, with a detail for logs and last.json."""

    delivery: Delivery
    detail: str = ""


def publish_url(server: str) -> str:
    """The root URL that JSON publishing goes to."""
    return server.rstrip("/") + "/"


def payload(message: Message, topic: str) -> dict[str, Any]:
    """The JSON body of a publish request."""
    return {
        "topic": topic,
        "title": message.title,
        "message": message.body,
        "priority": message.priority,
        "tags": list(message.tags),
        "markdown": True,
    }


def headers(token: str | None) -> dict[str, str]:
    """Request headers; the access token, when there is one, as a Bearer token."""
    result = {"Content-Type": "application/json"}
    if token:
        result["Authorization"] = f"Bearer {token}"
    return result


def classify_response(status: int, body: str) -> Attempt:
    """Map an HTTP answer to a Delivery."""
    if 200 <= status < 300:
        return Attempt(Delivery.DELIVERED)
    error = body.strip()
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and parsed.get("error"):
            error = f"{parsed.get('code', status)} {parsed['error']}"
    except ValueError:
        pass
    if status == 429:
        return Attempt(Delivery.RATE_LIMITED, f"429 {error}")
    if status in (401, 403):
        return Attempt(Delivery.REJECTED, f"{status} {error}: check the access token "
                       f"(ntfy.token_credential) and the topic's permissions")
    if 400 <= status < 500:
        return Attempt(Delivery.REJECTED, f"{status} {error}")
    return Attempt(Delivery.UNREACHABLE, f"{status} {error}")


class Publisher:
    """POSTs messages to one ntfy server and topic."""

    def __init__(self, session: aiohttp.ClientSession, server: str, topic: str,
                 token: str | None, timeout_s: float) -> None:
        self.session = session
        self.url = publish_url(server)
        self.topic = topic
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def publish(self, message: Message) -> Attempt:
        """One attempt; never raises for network trouble."""
        try:
            async with self.session.post(
                self.url, data=json.dumps(payload(message, self.topic)).encode(),
                headers=headers(self.token), timeout=self.timeout, allow_redirects=False,
            ) as response:
                body = await response.text(errors="replace")
                return classify_response(response.status, body[:500])
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            return Attempt(Delivery.UNREACHABLE, f"{type(error).__name__}: {error}"[:300])
