"""Config loading: the example validates, every bad key is named, precedence is visible."""

from __future__ import annotations

from pathlib import Path

import pytest

from mushishi.shared.config import ConfigError, load_config, resolve_config_path
from tests.paths import EXAMPLE_CONFIG
from tests.unit.shared.config_issues import MINIMAL


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mushishi.toml"
    path.write_text(text)
    return path


def issues_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(issue) for issue in caught.value.issues]


def test_example_config_validates_with_the_seed_layout() -> None:
    settings = load_config(EXAMPLE_CONFIG).settings
    assert set(settings.profiles) == {"personal", "private", "client", "voice",
                                      "private-voice", "creative"}
    assert settings.backends["comfy"].kind == "comfyui"
    assert settings.backends["comfy"].endpoints == ["images/generations"]
    assert settings.profiles["personal"].chain == ["gpu", "cpu", "embed", "rerank", "kimi",
                                                   "groq", "openrouter"]
    assert settings.profiles["client"].require_mode == "forensic"
    assert set(settings.modes) == {"forensic", "agent", "creative", "audio", "off"}
    assert settings.backends["gpu"].url.endswith(":8000/v1")
    assert settings.cpu_floor.port == 8001
    assert settings.tenants["comfyui"].port == 8188


def test_typo_in_key_is_an_error_naming_the_path_and_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("tier =", "teir ="))
    assert any(i.startswith("profiles.private.teir: unknown key; did you mean 'tier'?")
               for i in issues_of(path))


def test_misplaced_key_says_where_it_belongs(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[router]\nqueue_timeout_s = 5\n')
    assert issues_of(path) == [
        "router.queue_timeout_s: unknown key; 'queue_timeout_s' belongs in "
        "profiles.<name>.queue_timeout_s"
    ]


def test_nested_fallback_key_is_rejected_not_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + 'fallback = ["kimi"]\n')
    assert issues_of(path) == ["profiles.private.fallback: unknown key (not a mushishi setting)"]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = MINIMAL.replace('tier = "T1"', 'tier = "T9"') + '\n[gpu]\nprobe = "cuda"\n'
    found = issues_of(write(tmp_path, text))
    assert any(i.startswith("profiles.private.tier:") for i in found)
    assert any(i.startswith("gpu.probe:") for i in found)


def test_chain_naming_unknown_backend_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('chain = ["cpu"]', 'chain = ["cpu", "gpuu"]'))
    assert issues_of(path) == [
        "profiles.private.chain[1]: unknown backend 'gpuu' (backends: cpu)"
    ]


def test_mode_naming_unknown_tenant_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[modes.forensic]\ntenants = ["vllm"]\n')
    assert issues_of(path) == [
        "modes.forensic.tenants[0]: unknown tenant 'vllm' (tenants: none defined)"
    ]


def test_api_key_must_be_stored_as_sha256_hex(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[keys]\n"sk-plaintext" = ["private"]\n')
    [issue] = issues_of(path)
    assert issue.startswith("keys.sk-plaintext: must be the lowercase sha256 hex digest")


def test_relative_binary_path_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[cpu_floor]\nllama_server = "llama-server"\n')
    [issue] = issues_of(path)
    assert issue.startswith("cpu_floor.llama_server: Value error, must be an absolute path")


def test_toml_syntax_error_is_reported_with_position(tmp_path: Path) -> None:
    [issue] = issues_of(write(tmp_path, "[router\n"))
    assert "TOML syntax error" in issue and "line 1" in issue


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    [issue] = issues_of(tmp_path / "absent.toml")
    assert issue.startswith("no such file")


def test_default_modes_always_exist(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, MINIMAL)).settings
    assert set(settings.modes) == {"forensic", "agent", "creative", "audio", "off"}


def test_environment_overrides_file_and_is_reported_as_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUSHISHI_CPU_FLOOR__PORT", "9001")
    monkeypatch.setenv("MUSHISHI_PROFILES__PRIVATE__QUEUE_TIMEOUT_S", "7")
    loaded = load_config(write(tmp_path, MINIMAL + "\n[cpu_floor]\nport = 8001\n"))
    assert loaded.settings.cpu_floor.port == 9001
    assert loaded.settings.profiles["private"].queue_timeout_s == 7
    assert loaded.sources["cpu_floor.port"] == "env MUSHISHI_CPU_FLOOR__PORT"
    assert loaded.sources["profiles.private.tier"] == "file"
    assert loaded.sources["cpu_floor.ctx_size"] == "default"


def test_dotenv_sits_between_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("MUSHISHI_CPU_FLOOR__PORT=9002\nMUSHISHI_CPU_FLOOR__THREADS=3\n"
                        "MUSHISHI_CREDENTIAL_NGC_API_KEY=secret\n")
    monkeypatch.setenv("MUSHISHI_CPU_FLOOR__THREADS", "5")
    loaded = load_config(write(tmp_path, MINIMAL), env_file=env_file)
    assert loaded.settings.cpu_floor.port == 9002
    assert loaded.sources["cpu_floor.port"] == ".env MUSHISHI_CPU_FLOOR__PORT"
    assert loaded.settings.cpu_floor.threads == 5
    assert loaded.sources["cpu_floor.threads"] == "env MUSHISHI_CPU_FLOOR__THREADS"


def test_unknown_environment_section_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUSHISHI_ROUTR__LISTEN", '["127.0.0.1:1"]')
    assert issues_of(write(tmp_path, MINIMAL)) == [
        "environment MUSHISHI_ROUTR__LISTEN: unknown config section 'routr'; "
        "did you mean MUSHISHI_ROUTER__…?"
    ]


def test_unknown_environment_key_is_an_error_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUSHISHI_ROUTER__LISTNE", '["127.0.0.1:1"]')
    [issue] = issues_of(write(tmp_path, MINIMAL))
    assert issue == ("router.listne: unknown key; did you mean 'listen'? "
                     "(from environment MUSHISHI_ROUTER__LISTNE)")


def test_bad_listen_address_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[router]\nlisten = ["localhost"]\n')
    [issue] = issues_of(path)
    assert issue.startswith("router.listen: Value error, 'localhost' is not HOST:PORT")


@pytest.mark.parametrize(
    ("cli", "env", "expected"),
    [
        ("/a.toml", "/b.toml", "/a.toml"),
        (None, "/b.toml", "/b.toml"),
        (None, None, "/etc/mushishi/mushishi.toml"),
    ],
)
def test_config_path_precedence(cli: str | None, env: str | None, expected: str) -> None:
    environ = {"MUSHISHI_CONFIG": env} if env else {}
    assert str(resolve_config_path(cli, environ)) == expected
