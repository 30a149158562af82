"""`[cpu_floor]`: the always-on llama.cpp server that keeps private work answerable."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from mushishi.shared.config._base import AbsolutePath, Section
from mushishi.shared.config.router import parse_tcp_listen

# llama-server flags the supervisor sets from their own keys; repeating one in extra_args
# would be ignored or fight the key (llama-server keeps the FIRST --alias it is given).
MANAGED_FLAGS = {
    "-m": "model", "--model": "model",
    "-a": "alias", "--alias": "alias",
    "--host": "host", "--port": "port",
    "-c": "ctx_size", "--ctx-size": "ctx_size",
    "-t": "threads", "--threads": "threads",
    "--mlock": "mlock", "--no-mlock": "mlock", "-lm": "mlock", "--load-mode": "mlock",
    "--metrics": "(always on: the supervisor reads llama-server's /metrics)",
}


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
        default="nemotron-cpu-prism", min_length=1,
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
        default=[], description="Further llama-server arguments, appended verbatim (not the "
        "flags set by the keys above)."
    )
    ram_headroom_mib: int = Field(
        default=1024, ge=0,
        description="RAM needed beyond the model file's size before llama-server is started "
        "(KV cache for ctx_size, compute buffers); the start is refused when MemAvailable is "
        "below model size + this.",
    )
    load_timeout_s: float = Field(
        default=600.0, gt=0,
        description="Seconds llama-server may take to load the model and serve the alias; "
        "the supervisor extends systemd's start timeout while it loads.",
    )
    check_interval_s: float = Field(
        default=5.0, gt=0,
        description="Seconds between health checks (GET /health); the systemd watchdog is "
        "pinged after each passing one.",
    )
    check_timeout_s: float = Field(
        default=5.0, gt=0, description="Seconds a health check (or /v1/models) may take.",
    )
    smoke_interval_s: float = Field(
        default=30.0, gt=0,
        description="Seconds between smoke completions (a real chat completion of "
        "smoke_max_tokens tokens); the watchdog is pinged only while the latest one passed.",
    )
    smoke_timeout_s: float = Field(
        default=15.0, gt=0,
        description="Seconds a smoke completion may take; when it times out while "
        "llama-server is still producing tokens for other requests, it counts as busy, "
        "not wedged.",
    )
    smoke_max_tokens: int = Field(
        default=4, ge=1, le=64,
        description="Tokens each smoke completion generates: 1 proves the model answers; a "
        "few more also measure decode speed (mushishi_cpu_floor_smoke_tokens_per_second).",
    )
    restart_backoff_base_s: float = Field(
        default=5.0, ge=0,
        description="Delay before the second of consecutive restarts; it doubles with each "
        "further one (the first restart waits only the unit's RestartSec=).",
    )
    restart_backoff_max_s: float = Field(
        default=300.0, ge=0, description="Longest delay between consecutive restarts.",
    )
    stable_after_s: float = Field(
        default=300.0, ge=0,
        description="A floor that stayed ready this long before it stopped ends the streak "
        "of consecutive restarts (the next restart waits no extra delay).",
    )

    @field_validator("extra_args")
    @classmethod
    def _no_managed_flags(cls, value: list[str]) -> list[str]:
        for argument in value:
            flag = argument.split("=", 1)[0]
            if flag in MANAGED_FLAGS:
                key = MANAGED_FLAGS[flag]
                where = key if key.startswith("(") else f"cpu_floor.{key}"
                raise ValueError(f"{flag} is set by the supervisor; use {where} instead")
        return value

    @field_validator("metrics_listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_tcp_listen(value)
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> CpuFloorSettings:
        if self.restart_backoff_max_s < self.restart_backoff_base_s:
            raise ValueError(
                "restart_backoff_max_s must be at least restart_backoff_base_s "
                f"({self.restart_backoff_max_s} < {self.restart_backoff_base_s})")
        return self
