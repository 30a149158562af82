"""`[cpu_floor]`: the always-on llama.cpp server that keeps private work answerable."""

from __future__ import annotations

from pydantic import Field

from mushishi.shared.config._base import AbsolutePath, Section


class CpuFloorSettings(Section):
    """mushishi-cpu-floor supervises one llama-server with these settings."""

    llama_server: AbsolutePath = Field(
        default="/usr/local/bin/llama-server",
        description="Absolute path of the llama-server binary (never looked up in $PATH).",
    )
    model: AbsolutePath = Field(
        default="/var/lib/mushishi/models/cpu-floor.gguf", description="GGUF model file."
    )
    alias: str = Field(
        default="nemotron-cpu-prism",
        description="Name the model is served under (`-a`); readiness requires /v1/models to "
        "list exactly this name, because backend chains refer to it.",
    )
    host: str = Field(default="127.0.0.1", description="Address llama-server listens on.")
    port: int = Field(default=8001, gt=0, lt=65536, description="Port llama-server listens on.")
    ctx_size: int = Field(default=32768, gt=0, description="Context window (`-c`).")
    threads: int | None = Field(
        default=None, gt=0, description="CPU threads (`-t`); unset lets llama.cpp decide."
    )
    mlock: bool = Field(default=True, description="Lock the model in RAM (`--mlock`).")
    metrics_listen: str = Field(
        default="127.0.0.1:9643", description="HOST:PORT of the floor supervisor's /metrics."
    )
    extra_args: list[str] = Field(
        default=[], description="Further llama-server arguments, appended verbatim."
    )
