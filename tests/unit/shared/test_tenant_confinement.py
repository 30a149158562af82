"""The tenants layer: what the published records of running tenants add up to."""

from __future__ import annotations

import json
from pathlib import Path

from mushishi.shared.tenant_confinement import (
    TenantRecord,
    read_record,
    read_tenants_layer,
    write_record,
)

NOW = 1_800_000_000.0


def running(run_dir: Path, name: str, confined: bool | None = True, *, age_s: float = 1.0,
            detail: str = "from the tenant's unit: refused (EPERM)") -> Path:
    """A running tenant's runtime directory, with a record unless `confined` is "none"."""
    directory = run_dir / name
    directory.mkdir(parents=True)
    write_record(directory, TenantRecord(name, "docker", confined, detail, NOW - age_s, 15.0,
                                         "192.0.2.1:9"))
    return directory


def test_no_tenant_running_is_confined(tmp_path: Path) -> None:
    for run_dir in (tmp_path / "missing", tmp_path):
        layer = read_tenants_layer(run_dir, now=NOW)
        assert (layer.verdict, layer.detail, layer.tenants) == (True, "no tenant is running", {})


def test_every_running_tenant_confined(tmp_path: Path) -> None:
    running(tmp_path, "vllm")
    running(tmp_path, "tts")
    layer = read_tenants_layer(tmp_path, now=NOW)
    assert layer.verdict is True
    assert layer.detail == "every running tenant is confined (tts, vllm)"
    assert layer.tenants == {"tts": True, "vllm": True}


def test_one_unconfined_tenant_decides_and_is_named(tmp_path: Path) -> None:
    running(tmp_path, "a-unknown", None, detail="no running container yet")
    running(tmp_path, "b-leaky", False, detail="from container b: it left the box")
    running(tmp_path, "c-fine")
    layer = read_tenants_layer(tmp_path, now=NOW)
    assert (layer.verdict, layer.detail) == (False,
                                             "tenant b-leaky: from container b: it left the box")
    assert layer.tenants == {"a-unknown": None, "b-leaky": False, "c-fine": True}


def test_not_probed_stale_or_unreadable_is_not_known(tmp_path: Path) -> None:
    (tmp_path / "starting").mkdir()
    layer = read_tenants_layer(tmp_path, now=NOW)
    assert (layer.verdict, layer.detail) == (None, "tenant starting: not probed yet (starting)")
    (tmp_path / "starting").rmdir()
    running(tmp_path, "stuck", age_s=3 * 15 + 31)
    layer = read_tenants_layer(tmp_path, now=NOW)
    assert layer.verdict is None
    assert layer.detail == ("tenant stuck: the last probe is 76 s old (every 15 s expected): "
                            "is its runner stuck?")
    (tmp_path / "stuck" / "confinement.json").write_text('{"confined": "yes"}')
    layer = read_tenants_layer(tmp_path, now=NOW)
    assert layer.verdict is None and layer.detail.startswith("tenant stuck: unreadable ")


def test_records_are_written_whole_and_readable_by_anyone(tmp_path: Path) -> None:
    directory = running(tmp_path, "vllm", False, detail="left")
    path = directory / "confinement.json"
    assert path.stat().st_mode & 0o777 == 0o644
    assert json.loads(path.read_text())["confined"] is False
    assert read_record(path) == TenantRecord("vllm", "docker", False, "left", NOW - 1.0, 15.0,
                                             "192.0.2.1:9")
    assert [p.name for p in directory.iterdir()] == ["confinement.json"]


def test_a_tenant_serves_the_backends_on_its_port_at_its_host_or_loopback() -> None:
    from mushishi.shared.config import MushishiSettings
    from mushishi.shared.tenant_confinement import served_backends

    settings = MushishiSettings.model_validate({
        "backends": {
            "gpu": {"url": "http://127.0.0.1:8000/v1", "model": "m"},
            "gpu-by-name": {"url": "http://localhost:8000/v1", "model": "m"},
            "comfy": {"url": "http://127.0.0.1:8188", "model": "m"},
            "lan": {"url": "http://192.168.1.5:8000/v1", "model": "m"},
            "socket": {"url": "unix:/run/x.sock", "model": "m"},
        },
        "tenants": {
            "vllm": {"command": ["/bin/true"], "health_url": "http://127.0.0.1:8000/health",
                     "vram_mib": 1},
            "comfyui": {"command": ["/bin/true"], "port": 8188, "vram_mib": 1,
                        "health_url": "http://127.0.0.1:8188/system_stats"},
            "audio": {"command": ["/bin/true"], "port": 9000, "vram_mib": 1,
                      "health_url": "http://127.0.0.1:9000/health"},
        }})
    assert served_backends(settings) == {"vllm": frozenset({"gpu", "gpu-by-name"}),
                                         "comfyui": frozenset({"comfy"}),
                                         "audio": frozenset()}


def test_the_backends_of_an_unconfined_tenant_are_refused_naming_it(tmp_path: Path) -> None:
    from mushishi.shared.tenant_confinement import refused_backends

    running(tmp_path, "vllm", False, detail="from container vllm: it left the box")
    running(tmp_path, "tts", None, detail="no running container yet")
    layer = read_tenants_layer(tmp_path, now=NOW)
    assert layer.unconfined() == {"vllm": "tenant vllm: from container vllm: it left the box"}
    assert refused_backends(layer, {"vllm": frozenset({"gpu"}), "tts": frozenset({"tts"})}) == {
        "gpu": "served by tenant vllm, which is not confined (tenant vllm: from container vllm: "
               "it left the box)"}
