"""A vLLM-like stand-in: OpenAI chat/completions/embeddings/models with SSE streaming and
usage, /health, and /metrics with vllm:num_requests_running and vllm:num_requests_waiting.

Run alone: `python -m tests.standins.vllm --host 127.0.0.1 --port 8000 --model M`.
"""

from __future__ import annotations

import argparse
import asyncio

from tests.standins.openai_server import Fault, OpenAIStandin, serve_forever

__all__ = ["Fault", "VllmStandin", "main"]


class VllmStandin(OpenAIStandin):
    """vLLM's wire behaviour: unknown models get 404; a stopped server refuses connections."""

    def __init__(self, model: str = "vllm-standin-model", **kwargs: object) -> None:
        kwargs.setdefault("name", "vllm")
        super().__init__(model, **kwargs)  # type: ignore[arg-type]


def main() -> None:
    """CLI: serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tests.standins.vllm")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--unix", default=None)
    parser.add_argument("--model", default="vllm-standin-model")
    parser.add_argument("--name", default="vllm")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--record", default=None, help="append each request as JSON lines")
    parser.add_argument("--close", action="store_true", help="no keep-alive connections")
    args = parser.parse_args()
    server = VllmStandin(args.model, name=args.name, host=args.host, port=args.port,
                         unix_path=args.unix, tokens=args.tokens, token_delay=args.token_delay,
                         record_file=args.record, close_connections=args.close)
    asyncio.run(serve_forever(server))


if __name__ == "__main__":
    main()
