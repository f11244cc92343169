"""The CI example workflow's own commands, run verbatim against a temporary repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import TritonHandle

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "docs" / "examples" / "publish-model.yml"


def step_scripts() -> dict[str, str]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    steps = doc["jobs"]["publish"]["steps"]
    return {s["id"]: s["run"] for s in steps if "id" in s}


def run_step(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=600,
    )


def test_example_workflow_publishes_with_labels_and_refuses_a_broken_model(
    tmp_path: Path, triton: TritonHandle
) -> None:
    scripts = step_scripts()
    assert list(scripts) == ["export", "publish", "validate", "prune"]
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert doc[True]["push"]["tags"] == ["ranker-v*"]  # yaml reads the key `on` as True
    env = {
        **os.environ,
        **doc["jobs"]["publish"]["env"],
        "TRITONCTL_REPO": str(tmp_path / "repository"),
        "GITHUB_SHA": "0123456789abcdef",
        "GITHUB_REF_NAME": "ranker-v1",
        "GITHUB_RUN_ID": "42",
        "TRITON_URL": triton.grpc_url,  # prune asks a real server what it has loaded
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("TRITONCTL_URL", None)
    build = ROOT / "build"
    try:
        for step in ("export", "publish", "validate", "prune"):
            proc = run_step(scripts[step], env)
            assert proc.returncode == 0, f"step {step}: {proc.stdout}\n{proc.stderr}"
        published = json.loads((build / "published.json").read_text())
        assert published["name"] == "ranker" and published["version"] == 1
        assert published["labels"] == {
            "git_commit": "0123456789abcdef",
            "git_tag": "ranker-v1",
            "ci_run": "42",
        }

        # a broken export (wrong golden outputs) fails the publish step and adds no version
        import numpy as np

        case = build / "golden" / "case0.npz"
        with np.load(case) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["outputs/logits"] = arrays["outputs/logits"] + 1.0
        np.savez(case, **arrays)
        proc = run_step(scripts["publish"], {**env, "GITHUB_REF_NAME": "ranker-v2"})
        assert proc.returncode == 3, proc.stderr
        assert "output 'logits' does not match" in proc.stderr
        versions = json.loads(
            subprocess.run(
                ["tritonctl", "versions", "ranker", "--json"],
                env=env,
                text=True,
                capture_output=True,
                check=True,
            ).stdout
        )
        assert [v["version"] for v in versions] == [1]
        assert versions[0]["labels"]["git_tag"] == "ranker-v1"
    finally:
        import shutil

        shutil.rmtree(build, ignore_errors=True)
