"""The root settings model: every section of /etc/mushishi/mushishi.toml."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from mushishi.shared.config import backup as backup_section
from mushishi.shared.config import firewall as firewall_section
from mushishi.shared.config import gpu as gpu_section
from mushishi.shared.config import observability as observability_section
from mushishi.shared.config import router as router_section
from mushishi.shared.config._base import Issue
from mushishi.shared.config.alerts import NtfySettings, WatchdogSettings
from mushishi.shared.config.backup import BackupSettings
from mushishi.shared.config.cpu_floor import CpuFloorSettings
from mushishi.shared.config.firewall import FirewallSettings
from mushishi.shared.config.gpu import (
    MODE_SWITCHING_KEYS,
    GpuSettings,
    ModeSettings,
    ModeSwitchingSettings,
    TenantSettings,
)
from mushishi.shared.config.observability import BenchSettings, TracesSettings
from mushishi.shared.config.router import (
    BackendSettings,
    EgressSettings,
    ProfileSettings,
    RouterSettings,
)

ENV_PREFIX = "MUSHISHI_"
ENV_NESTED_DELIMITER = "__"

# The parsed TOML document of the load in progress; the lowest-priority source.
_file_data: ContextVar[dict[str, Any] | None] = ContextVar("mushishi_config_file", default=None)


class MushishiSettings(BaseSettings):
    """Everything mushishi reads from its config file and MUSHISHI_<SECTION>__<KEY> variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
        extra="forbid",
        dotenv_filtering="only_existing",
        validate_default=True,
    )

    router: RouterSettings = Field(
        default_factory=RouterSettings, description="The OpenAI-compatible router."
    )
    backends: dict[str, BackendSettings] = Field(
        default={}, description="Model servers, local or cloud, by name."
    )
    profiles: dict[str, ProfileSettings] = Field(
        default={}, description="Named routes with a sovereignty tier, by name."
    )
    egress: EgressSettings = Field(
        default_factory=EgressSettings, description="The cloud egress daemon."
    )
    keys: dict[str, list[str]] = Field(
        default={}, description="API keys, as sha256 hex digests, mapped to the profiles they "
        "may use."
    )
    modes: dict[str, ModeSettings] = Field(
        default={}, description="GPU modes, by name; the five defaults always exist."
    )
    mode_switching: ModeSwitchingSettings = Field(
        default_factory=ModeSwitchingSettings,
        description="Written as keys of [modes] (idle_mode, idle_after_s, min_mode_dwell_s).",
    )
    tenants: dict[str, TenantSettings] = Field(
        default={}, description="GPU workloads, by name."
    )
    gpu: GpuSettings = Field(default_factory=GpuSettings, description="GPU probe.")
    cpu_floor: CpuFloorSettings = Field(
        default_factory=CpuFloorSettings, description="The CPU floor."
    )
    ntfy: NtfySettings = Field(
        default_factory=NtfySettings, description="Alert delivery."
    )
    watchdog: WatchdogSettings = Field(
        default_factory=WatchdogSettings, description="Outcome checks."
    )
    backup: BackupSettings = Field(
        default_factory=BackupSettings, description="restic backups."
    )
    firewall: FirewallSettings = Field(
        default_factory=FirewallSettings, description="Exposed services."
    )
    bench: BenchSettings = Field(
        default_factory=BenchSettings, description="Inference speed benchmarks."
    )
    traces: TracesSettings = Field(
        default_factory=TracesSettings, description="OTLP traces of routed requests."
    )

    @model_validator(mode="before")
    @classmethod
    def _mode_switching_keys(cls, data: Any) -> Any:
        """`[modes] idle_mode = …` and its siblings are settings, not modes: move them."""
        if isinstance(data, dict) and isinstance(data.get("modes"), dict):
            modes = dict(data["modes"])
            moved = {key: modes.pop(key) for key in MODE_SWITCHING_KEYS if key in modes}
            if moved:
                switching = data.get("mode_switching")
                data = {**data, "modes": modes, "mode_switching": {
                    **(switching if isinstance(switching, dict) else {}), **moved}}
        return data

    @model_validator(mode="after")
    def _default_modes_exist(self) -> MushishiSettings:
        for name in gpu_section.DEFAULT_MODES:
            self.modes.setdefault(name, ModeSettings())
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence, highest first: init arguments, environment, .env, the TOML file."""
        file_source = InitSettingsSource(settings_cls, init_kwargs=_file_data.get() or {})
        return (init_settings, env_settings, dotenv_settings, file_source)


# Fields of the model written elsewhere in the TOML file (and its environment variables).
TOML_HOME = {"mode_switching": "modes"}


def toml_parts(parts: tuple[Any, ...]) -> tuple[Any, ...]:
    """A key path of the model as the TOML file writes it: mode_switching.x -> modes.x."""
    if parts and parts[0] in TOML_HOME:
        return (TOML_HOME[parts[0]], *parts[1:])
    return parts


# Cross-section checks, run after the models validate; each returns the issues it finds.
CHECKS: tuple[Callable[[MushishiSettings], list[Issue]], ...] = (
    router_section.check,
    gpu_section.check,
    firewall_section.check,
    observability_section.check,
    backup_section.check,
)
