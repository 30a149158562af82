"""`scripts/gpu-check`: what gpud reads through NVML, next to what `nvidia-smi` says.

For the day a GPU is lent: on a machine with an NVIDIA GPU and only the project's
virtualenv, it reads everything gpud reads (memory, utilisation, temperature, power, power
limit and its constraints, clock-event reasons, per-process memory) through the project's
own probe (`mushishi.shared.gpu.NvmlProbe`), asks `nvidia-smi --query-gpu=… --format=csv`
for the same facts, prints both side by side and says where they disagree. It changes
nothing: no power limit is set, no process is touched.

    scripts/gpu-check [--device-index N] [--nvidia-smi PATH] [--json]

Exit status: 0 when both agree, 1 when a reading disagrees beyond its tolerance, 2 when
either side cannot be read (the message names what to fix).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass

from mushishi.shared.gpu import GpuProbeError, NvmlProbe

# nvidia-smi --query-gpu fields, in this order; `power.draw.instant` needs driver 535+,
# `power.draw` is the one every driver has.
QUERY_GPU = ("name", "memory.total", "memory.used", "utilization.gpu", "temperature.gpu",
             "power.draw", "power.limit", "power.min_limit", "power.max_limit")
QUERY_APPS = ("pid", "process_name", "used_memory")


@dataclass(frozen=True)
class Row:
    """One fact from both sides; `tolerance` is how far apart they may be (the two reads
    are a few milliseconds apart, and utilisation and power move)."""

    what: str
    ours: str | float | None
    theirs: str | float | None
    tolerance: float = 0.0

    @property
    def agrees(self) -> bool:
        """True when both sides read the same fact (within the tolerance)."""
        if isinstance(self.ours, float) and isinstance(self.theirs, float):
            return abs(self.ours - self.theirs) <= self.tolerance
        return self.ours == self.theirs


def number(text: str) -> float | None:
    """An nvidia-smi CSV value with --format=csv,nounits: '[N/A]' and the like are None."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return None


def parse_csv(text: str, fields: tuple[str, ...]) -> list[dict[str, str]]:
    """`nvidia-smi --query-…=FIELDS --format=csv,noheader,nounits` output as dicts."""
    rows = []
    for record in csv.reader(io.StringIO(text), skipinitialspace=True):
        if not record:
            continue
        if len(record) != len(fields):
            raise ValueError(f"nvidia-smi printed {len(record)} columns, expected "
                             f"{len(fields)} ({', '.join(fields)}): {record!r}")
        rows.append(dict(zip(fields, (value.strip() for value in record), strict=True)))
    return rows


def nvidia_smi(binary: str, query: str, fields: tuple[str, ...], index: int
               ) -> list[dict[str, str]]:
    """Run one nvidia-smi query (read-only) and parse it."""
    result = subprocess.run(
        [binary, f"--id={index}", f"--query-{query}={','.join(fields)}",
         "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30,
        check=False)
    if result.returncode != 0:
        raise GpuProbeError(f"{binary} --query-{query} failed (exit {result.returncode}): "
                            f"{(result.stderr or result.stdout).strip()}")
    return parse_csv(result.stdout, fields)


def compare(probe: NvmlProbe, gpu: dict[str, str], apps: list[dict[str, str]]) -> list[Row]:
    """Our probe's readings next to nvidia-smi's, one row per fact."""
    snapshot = probe.read()
    low, high = probe.power_limit_range()
    rows = [
        Row("name", probe.name(), gpu["name"]),
        Row("memory total MiB", float(snapshot.total_mib), number(gpu["memory.total"]), 1.0),
        # Memory in use and utilisation move between the two reads.
        Row("memory used MiB", float(snapshot.used_mib), number(gpu["memory.used"]), 64.0),
        Row("utilisation %", float(snapshot.util_percent), number(gpu["utilization.gpu"]),
            25.0),
        Row("temperature °C", float(snapshot.temperature_c), number(gpu["temperature.gpu"]),
            3.0),
        Row("power W", snapshot.power_w, number(gpu["power.draw"]), 30.0),
        Row("power limit W", snapshot.power_limit_w, number(gpu["power.limit"]), 1.0),
        Row("power limit min W", low, number(gpu["power.min_limit"]), 1.0),
        Row("power limit max W", high, number(gpu["power.max_limit"]), 1.0),
        Row("clock-event reasons", ", ".join(snapshot.throttle_reasons) or "none",
            "(not in --query-gpu)"),
    ]
    theirs = {int(app["pid"]): number(app["used_memory"]) for app in apps
              if app["pid"].isdigit()}
    ours = {process.pid: float(process.used_mib) for process in snapshot.processes}
    for pid in sorted(ours.keys() | theirs.keys()):
        rows.append(Row(f"process {pid} MiB", ours.get(pid), theirs.get(pid), 2.0))
    return rows


def render(rows: list[Row]) -> str:
    """The side-by-side table, disagreements marked."""
    width = max(len(row.what) for row in rows)
    lines = [f"{'':{width}}  {'mushishi (NVML)':>22}  {'nvidia-smi':>22}"]
    for row in rows:
        mark = "" if row.agrees else "   <- differs"
        lines.append(f"{row.what:{width}}  {_show(row.ours):>22}  {_show(row.theirs):>22}"
                     f"{mark}")
    return "\n".join(lines)


def _show(value: str | float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if isinstance(value, float) else value


def main(argv: list[str] | None = None) -> int:
    """Read both sides once, print them, exit 0 (agree), 1 (differ) or 2 (unreadable)."""
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--device-index", type=int, default=0)
    parser.add_argument("--nvidia-smi", default=shutil.which("nvidia-smi") or "nvidia-smi")
    parser.add_argument("--json", action="store_true", help="one JSON object instead")
    args = parser.parse_args(argv)
    try:
        probe = NvmlProbe(args.device_index)
    except GpuProbeError as error:
        print(f"gpu-check: {error}", file=sys.stderr)
        return 2
    try:
        gpu = nvidia_smi(args.nvidia_smi, "gpu", QUERY_GPU, args.device_index)
        apps = nvidia_smi(args.nvidia_smi, "compute-apps", QUERY_APPS, args.device_index)
        if len(gpu) != 1:
            raise GpuProbeError(f"nvidia-smi listed {len(gpu)} GPUs for --id="
                                f"{args.device_index}")
        rows = compare(probe, gpu[0], apps)
    except (GpuProbeError, OSError, ValueError, subprocess.TimeoutExpired) as error:
        print(f"gpu-check: {error}", file=sys.stderr)
        return 2
    finally:
        probe.close()
    if args.json:
        print(json.dumps([{"what": row.what, "mushishi": row.ours, "nvidia_smi": row.theirs,
                           "agrees": row.agrees} for row in rows], ensure_ascii=False))
    else:
        print(render(rows))
    return 0 if all(row.agrees for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
