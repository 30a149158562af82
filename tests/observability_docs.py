"""What docs/observability.md prints for an operator to copy, read back for the tests that run
it: the node_exporter `ARGS` line and the Netdata go.d job file."""

from __future__ import annotations

import re
import shlex

from tests.paths import REPO

OBSERVABILITY = REPO / "docs" / "observability.md"
RULES = REPO / "docs" / "examples" / "mushishi-rules.yml"
PROMETHEUS_CONFIG = REPO / "docs" / "examples" / "prometheus.yml"


def code_blocks(language: str) -> list[str]:
    """The fenced blocks of docs/observability.md in `language`, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", OBSERVABILITY.read_text(),
                      re.MULTILINE | re.DOTALL)


def node_exporter_defaults() -> str:
    """The /etc/default/prometheus-node-exporter the docs print (the one `ARGS=` block)."""
    [block] = [b for b in code_blocks("sh") if b.startswith("ARGS=")]
    return block


def node_exporter_flags() -> dict[str, str]:
    """`--flag=value` of that ARGS line, as a dict."""
    [line] = node_exporter_defaults().splitlines()
    [value] = shlex.split(line.removeprefix("ARGS="))  # the quoted value, as sh reads it
    flags = {}
    for word in value.split():
        name, _, flag_value = word.removeprefix("--").partition("=")
        flags[name] = flag_value
    return flags


def go_d_job_file() -> str:
    """The go.d/prometheus.conf the docs print (the one YAML block that starts `jobs:`)."""
    [block] = [b for b in code_blocks("yaml") if b.startswith("jobs:")]
    return block
