"""ComfyUI API-format workflow templates: read, checked against `workflow_inputs`, filled in.

A template is what ComfyUI's "Export (API)" writes: `{"6": {"class_type": "CLIPTextEncode",
"inputs": {"text": "…", "clip": ["4", 1]}}, …}`. `backends.<name>.workflow_inputs` names
where each request value goes (`prompt = "6.inputs.text"`). Used by `mushishi config check`
(every path must name an input the template has) and by the router (which fills a copy per
run). Pure but for `read_workflow`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mushishi.shared.config._base import Issue


class WorkflowError(ValueError):
    """A workflow template that cannot be used; the message names what to fix."""


def parse_workflow(raw: bytes, where: str) -> dict[str, Any]:
    """An API-format workflow from its bytes (`where` names the file in errors)."""
    try:
        workflow = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise WorkflowError(f"{where} is not JSON ({error})") from None
    if not isinstance(workflow, dict) or not workflow:
        raise WorkflowError(f"{where} must be a JSON object of nodes")
    if "nodes" in workflow and "links" in workflow:
        raise WorkflowError(f"{where} is a UI-format workflow: save it with ComfyUI's "
                            "\"Export (API)\" instead")
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) \
                or not isinstance(node.get("inputs"), dict):
            raise WorkflowError(f"{where}: node {node_id!r} needs class_type and inputs (an "
                                "API-format workflow, from \"Export (API)\")")
    return workflow


def read_workflow(path: str) -> dict[str, Any]:
    """The API-format workflow at `path`, or WorkflowError."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise WorkflowError(f"cannot read {path}: {error.strerror or error}") from None
    return parse_workflow(raw, path)


def path_problem(workflow: Mapping[str, Any], path: str) -> str | None:
    """Why `path` (NODE.inputs.NAME) names no input of `workflow`, or None."""
    node_id, _, rest = path.partition(".")
    name = rest.removeprefix("inputs.")
    node = workflow.get(node_id)
    if not isinstance(node, dict):
        return f"the workflow has no node {node_id!r}"
    if name not in node.get("inputs", {}):
        inputs = ", ".join(sorted(node.get("inputs", {}))) or "none"
        return f"node {node_id!r} ({node.get('class_type')}) has no input {name!r} ({inputs})"
    return None


def fill(workflow: Mapping[str, Any], inputs: Mapping[str, str],
         values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `workflow` with each of `values` placed at its `inputs` path (values without
    a path are left out); WorkflowError when a path names no input."""
    filled = copy.deepcopy(dict(workflow))
    for key, value in values.items():
        path = inputs.get(key)
        if path is None:
            continue
        problem = path_problem(filled, path)
        if problem is not None:
            raise WorkflowError(f"workflow_inputs.{key} = {path!r}: {problem}")
        node_id, _, rest = path.partition(".")
        filled[node_id]["inputs"][rest.removeprefix("inputs.")] = value
    return filled


def workflow_issues(backends: Mapping[str, Any]) -> tuple[list[Issue], list[str]]:
    """For `mushishi config check`: (problems, warnings). Every comfyui backend's workflow
    must be in API format with every workflow_inputs path naming one of its inputs; a
    workflow file that is not there (yet) is a warning, since the router reads it at each
    request and fails that backend's hop, naming the file, until it is."""
    issues: list[Issue] = []
    warnings: list[str] = []
    for name, backend in backends.items():
        if backend.kind != "comfyui" or backend.workflow is None:
            continue
        if not Path(backend.workflow).exists():
            warnings.append(f"backends.{name}.workflow: {backend.workflow} does not exist (yet): "
                            "the router fails this backend's requests until it does")
            continue
        try:
            workflow = read_workflow(backend.workflow)
        except WorkflowError as error:
            issues.append(Issue(f"backends.{name}.workflow", str(error)))
            continue
        for key, path in backend.workflow_inputs.items():
            problem = path_problem(workflow, path)
            if problem is not None:
                issues.append(Issue(f"backends.{name}.workflow_inputs.{key}",
                                    f"{path!r}: {problem} in {backend.workflow}"))
    return issues, warnings
