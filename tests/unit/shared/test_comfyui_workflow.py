"""ComfyUI backends in the config: the keys kind, workflow and workflow_inputs are checked at
load time, and `mushishi config check` reads the workflow and checks every path against it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mushishi.shared.comfyui_workflow import WorkflowError, fill, parse_workflow
from tests.paths import BINDIR, REPO
from tests.unit.shared.config_issues import config_issues

WORKFLOW = REPO / "tests" / "assets" / "comfyui" / "txt2img.json"


def comfy(workflow: Path | str, inputs: str = '{ prompt = "6.inputs.text" }',
          extra: str = "", url: str = "http://127.0.0.1:8188") -> str:
    return f"""
[backends.comfy]
url = "{url}"
kind = "comfyui"
model = "sd15"
workflow = "{workflow}"
workflow_inputs = {inputs}
{extra}

[profiles.creative]
tier = "T1"
chain = ["comfy"]
"""


def test_a_comfyui_backend_serves_images_generations_by_default(tmp_path: Path) -> None:
    assert config_issues(tmp_path, comfy(WORKFLOW)) == []


@pytest.mark.parametrize(("text", "found"), [
    (comfy(WORKFLOW, inputs="{ seed = \"3.inputs.seed\" }"), "needs workflow_inputs.prompt"),
    (comfy(WORKFLOW, inputs="{ prompt = \"6.text\" }"), "not a NODE.inputs.NAME path"),
    (comfy(WORKFLOW, inputs="{ prompt = \"6.inputs.text\", steps = \"3.inputs.steps\" }"),
     "steps"),
    (comfy("relative.json"), "must be an absolute path"),
    (comfy(WORKFLOW, extra='endpoints = ["chat/completions"]'), "images/generations only"),
    (comfy(WORKFLOW, url="unix:/run/comfy.sock"), "over TCP"),
    (comfy(WORKFLOW, url="https://comfy.example.com").replace('tier = "T1"', 'tier = "T3"'),
     "must be local"),
    ("""
[backends.cpu]
url = "http://127.0.0.1:8001/v1"
model = "m"
workflow_inputs = { prompt = "6.inputs.text" }

[profiles.private]
tier = "T1"
chain = ["cpu"]
""", "for kind = \"comfyui\" backends only"),
])
def test_bad_comfyui_keys_are_refused_naming_what_to_fix(tmp_path: Path, text: str,
                                                       found: str) -> None:
    issues = config_issues(tmp_path, text)
    assert any(found in issue and "backends." in issue for issue in issues), issues


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([f"{BINDIR}/mushishi", "config", "check", "-q", str(path)],
                          capture_output=True, text=True, cwd=path.parent)


def test_config_check_reads_the_workflow_and_checks_each_path(tmp_path: Path) -> None:
    config = tmp_path / "mushishi.toml"
    config.write_text(comfy(WORKFLOW, inputs='{ prompt = "6.inputs.text", seed = '
                                             '"3.inputs.seed", width = "5.inputs.wide", '
                                             'n = "12.inputs.batch_size" }'))
    result = check(config)
    assert result.returncode == 1
    assert ("backends.comfy.workflow_inputs.width: '5.inputs.wide': node '5' "
            "(EmptyLatentImage) has no input 'wide'") in result.stderr
    assert "backends.comfy.workflow_inputs.n: '12.inputs.batch_size': the workflow has no " \
           "node '12'" in result.stderr
    assert "workflow_inputs.seed" not in result.stderr
    config.write_text(comfy(WORKFLOW, inputs='{ prompt = "6.inputs.text", seed = '
                                             '"3.inputs.seed" }'))
    assert check(config).returncode == 0


def test_config_check_warns_of_a_workflow_not_there_yet(tmp_path: Path) -> None:
    config = tmp_path / "mushishi.toml"
    config.write_text(comfy(tmp_path / "later.json"))
    result = check(config)
    assert result.returncode == 0, result.stderr
    assert f"warning: backends.comfy.workflow: {tmp_path}/later.json does not exist" \
        in result.stderr


@pytest.mark.parametrize(("content", "found"), [
    ("", "is not JSON"),
    ("not json", "is not JSON"),
    (json.dumps({"nodes": [], "links": [], "version": 0.4}), "UI-format workflow"),
    (json.dumps({"6": {"inputs": {}}}), "needs class_type and inputs"),
])
def test_config_check_refuses_a_workflow_it_cannot_use(tmp_path: Path, content: str,
                                                       found: str) -> None:
    workflow = tmp_path / "flow.json"
    workflow.write_text(content)
    config = tmp_path / "mushishi.toml"
    config.write_text(comfy(workflow))
    result = check(config)
    assert result.returncode == 1
    assert "backends.comfy.workflow:" in result.stderr and found in result.stderr


def test_fill_places_values_in_a_copy_and_refuses_a_missing_input() -> None:
    template = parse_workflow(WORKFLOW.read_bytes(), "t")
    filled = fill(template, {"prompt": "6.inputs.text", "seed": "3.inputs.seed"},
                  {"prompt": "fox", "seed": 5, "n": 3})
    assert filled["6"]["inputs"]["text"] == "fox" and filled["3"]["inputs"]["seed"] == 5
    assert template["6"]["inputs"]["text"] == "a placeholder prompt"
    with pytest.raises(WorkflowError, match=r"workflow_inputs.seed = '3.inputs.sed'"):
        fill(template, {"seed": "3.inputs.sed"}, {"seed": 1})

