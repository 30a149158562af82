"""What the GPU says: NVML through pynvml on a real box, a JSON file on a machine without one.

Both probes return the same `GpuSnapshot`. Calls are blocking (NVML answers in
milliseconds); daemons run them with `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mushishi.shared.config.gpu import GpuSettings
from mushishi.shared.files import JsonFileError, load_json_object, write_json
from mushishi.shared.processes import pid_alive

MIB = 1024 * 1024

# NVML clock-event ("throttle") reason bits, from nvml.h. Idle and an application clock
# setting are not throttling; everything else slows the GPU down against its will.
THROTTLE_REASONS: dict[int, str] = {
    0x0000000000000001: "gpu-idle",
    0x0000000000000002: "applications-clocks-setting",
    0x0000000000000004: "sw-power-cap",
    0x0000000000000008: "hw-slowdown",
    0x0000000000000010: "sync-boost",
    0x0000000000000020: "sw-thermal-slowdown",
    0x0000000000000040: "hw-thermal-slowdown",
    0x0000000000000080: "hw-power-brake-slowdown",
    0x0000000000000100: "display-clock-setting",
}
NOT_THROTTLING = frozenset({"gpu-idle", "applications-clocks-setting", "display-clock-setting"})


class GpuProbeError(RuntimeError):
    """The GPU cannot be read (or changed); the message is one line naming what to fix."""


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """A process holding GPU memory."""

    pid: int
    name: str
    used_mib: int


@dataclass(frozen=True, slots=True)
class GpuSnapshot:
    """One reading of the managed GPU."""

    total_mib: int
    used_mib: int
    util_percent: int = 0
    temperature_c: int = 0
    power_w: float = 0.0
    power_limit_w: float | None = None
    throttle_reasons: tuple[str, ...] = ()
    processes: tuple[GpuProcess, ...] = field(default=())

    @property
    def free_mib(self) -> int:
        """Memory a new tenant can use."""
        return max(0, self.total_mib - self.used_mib)

    @property
    def throttled(self) -> bool:
        """True when a reason other than idling or a clock setting slows the GPU down."""
        return any(reason not in NOT_THROTTLING for reason in self.throttle_reasons)


class GpuProbe(Protocol):
    """Reads the GPU and sets its power limit."""

    def read(self) -> GpuSnapshot:
        """A fresh reading."""
        ...

    def set_power_limit(self, watts: int) -> None:
        """Set the board power limit."""
        ...

    def close(self) -> None:
        """Release the driver handle."""
        ...


def throttle_names(mask: int) -> tuple[str, ...]:
    """Names of the reason bits set in an NVML clock-event mask."""
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    unknown = mask & ~sum(THROTTLE_REASONS)
    if unknown:
        names.append(f"unknown-0x{unknown:x}")
    return tuple(names)


class SimulatedProbe:
    """Reads a JSON file shaped like DESIGN.md §4's example; for CI and the demo.

    `used_mib` includes the listed processes. As on a real GPU, the memory of a listed
    process that no longer runs is free again, so stopping a stray frees its VRAM.
    `set_power_limit` writes `power_limit_w` back into the file.
    """

    def __init__(self, path: str | os.PathLike[str],
                 alive: Callable[[int], bool] = pid_alive) -> None:
        self.path = Path(path)
        self._alive = alive

    def _load(self) -> dict[str, Any]:
        try:
            data = load_json_object(self.path)
        except JsonFileError as error:
            if error.cause is None:
                raise GpuProbeError(f"simulated GPU state {self.path} is not a JSON object"
                                    ) from None
            raise GpuProbeError(f"simulated GPU state {self.path} is unreadable: "
                                f"{error.cause}") from None
        if data is None:
            raise GpuProbeError(
                f"simulated GPU state {self.path} does not exist: write it (see [gpu] "
                "simulated_state) or set [gpu] probe = \"nvml\" on a box with a GPU")
        return data

    def read(self) -> GpuSnapshot:
        data = self._load()
        try:
            processes = tuple(
                GpuProcess(int(p["pid"]), str(p["name"]), int(p["used_mib"]))
                for p in data.get("processes", [])
            )
            gone = sum(p.used_mib for p in processes if not self._alive(p.pid))
            limit = data.get("power_limit_w")
            return GpuSnapshot(
                total_mib=int(data["total_mib"]),
                used_mib=max(0, int(data["used_mib"]) - gone),
                util_percent=int(data.get("util_percent", 0)),
                temperature_c=int(data.get("temperature_c", 0)),
                power_w=float(data.get("power_w", 0.0)),
                power_limit_w=None if limit is None else float(limit),
                throttle_reasons=tuple(str(r) for r in data.get("throttle_reasons", [])),
                processes=tuple(p for p in processes if self._alive(p.pid)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise GpuProbeError(f"simulated GPU state {self.path} is malformed: {error!r} "
                                "(needs total_mib, used_mib)") from None

    def set_power_limit(self, watts: int) -> None:
        data = self._load()
        data["power_limit_w"] = watts
        write_json(self.path, data, 0o644)

    def close(self) -> None:
        return None


class NvmlProbe:
    """The real GPU through NVIDIA's NVML (`pynvml`, from nvidia-ml-py)."""

    def __init__(self, device_index: int = 0) -> None:
        import pynvml  # imported here: a simulated box never loads the driver bindings

        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            raise GpuProbeError(
                f"NVML unavailable ({error}): no NVIDIA driver or GPU on this machine; install "
                "the driver, or set [gpu] probe = \"simulated\" on a machine without a GPU"
            ) from None
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except pynvml.NVMLError as error:
            pynvml.nvmlShutdown()
            raise GpuProbeError(
                f"NVML has no GPU at index {device_index} ({error}): check [gpu] device_index"
            ) from None

    def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except self._nvml.NVMLError as error:
            raise GpuProbeError(f"NVML {function.__name__} failed: {error}") from None

    def _optional(self, function: Callable[..., Any], *args: Any) -> Any:
        """Readings some boards do not support (power on some laptops, throttle reasons)."""
        try:
            return function(*args)
        except self._nvml.NVMLError:
            return None

    def _processes(self) -> tuple[GpuProcess, ...]:
        nvml = self._nvml
        found = self._call(nvml.nvmlDeviceGetComputeRunningProcesses, self._handle)
        return tuple(processes_from_nvml(
            found, lambda pid: self._optional(nvml.nvmlSystemGetProcessName, pid)))

    def read(self) -> GpuSnapshot:
        nvml = self._nvml
        memory = self._call(nvml.nvmlDeviceGetMemoryInfo, self._handle)
        util = self._optional(nvml.nvmlDeviceGetUtilizationRates, self._handle)
        temperature = self._optional(nvml.nvmlDeviceGetTemperature, self._handle,
                                     nvml.NVML_TEMPERATURE_GPU)
        power_mw = self._optional(nvml.nvmlDeviceGetPowerUsage, self._handle)
        limit_mw = self._optional(nvml.nvmlDeviceGetPowerManagementLimit, self._handle)
        mask = self._optional(nvml.nvmlDeviceGetCurrentClocksEventReasons, self._handle)
        if mask is None:  # drivers before 535 only know the older name
            mask = self._optional(nvml.nvmlDeviceGetCurrentClocksThrottleReasons, self._handle)
        return GpuSnapshot(
            total_mib=memory.total // MIB,
            used_mib=memory.used // MIB,
            util_percent=int(util.gpu) if util is not None else 0,
            temperature_c=int(temperature or 0),
            power_w=(power_mw or 0) / 1000.0,
            power_limit_w=None if limit_mw is None else limit_mw / 1000.0,
            throttle_reasons=throttle_names(int(mask or 0)),
            processes=self._processes(),
        )

    def power_limit_range(self) -> tuple[float, float]:
        """The power limits the board accepts, in watts (low, high)."""
        low, high = self._call(self._nvml.nvmlDeviceGetPowerManagementLimitConstraints,
                               self._handle)
        return low / 1000.0, high / 1000.0

    def name(self) -> str:
        """The board's name, e.g. "NVIDIA H200"."""
        raw = self._call(self._nvml.nvmlDeviceGetName, self._handle)
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def set_power_limit(self, watts: int) -> None:
        check_power_limit(watts, *self.power_limit_range())
        self._call(self._nvml.nvmlDeviceSetPowerManagementLimit, self._handle, watts * 1000)

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def processes_from_nvml(found: Iterable[Any], name_of: Callable[[int], Any]
                        ) -> list[GpuProcess]:
    """NVML process records (pid, usedGpuMemory in bytes or None) as GpuProcess."""
    processes = []
    for record in found:
        raw_name = name_of(record.pid)
        if isinstance(raw_name, bytes):
            raw_name = raw_name.decode("utf-8", "replace")
        name = Path(raw_name).name if raw_name else f"pid {record.pid}"
        used = record.usedGpuMemory or 0  # None when the driver cannot attribute memory
        processes.append(GpuProcess(int(record.pid), name, int(used) // MIB))
    return processes


def check_power_limit(watts: int, low_w: float, high_w: float) -> None:
    """Refuse a limit outside what the board accepts, naming the range."""
    if not low_w <= watts <= high_w:
        raise GpuProbeError(
            f"power_limit_w {watts} is outside what this GPU accepts ({low_w:.0f}–{high_w:.0f} W)")


def open_probe(settings: GpuSettings) -> GpuProbe:
    """The probe [gpu] configures; GpuProbeError with a one-line reason if it cannot open."""
    if settings.probe == "simulated":
        return SimulatedProbe(settings.simulated_state)
    return NvmlProbe(settings.device_index)
