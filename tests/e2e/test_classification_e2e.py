"""A classification model through the running node, switched in by the registry CLI.

The admin disables the lung model and adds a version of the shipped body-region classifier
whose ``chest`` class asks for attention, while the node runs; DCMTK sends the LIDC chest CT; the
node must take the change up without a restart, classify the series as chest, write a TID 1500
SR that names the model and passes dciodvfy, and flag the study in the worklist API.
"""

from __future__ import annotations

import base64
import json
import shutil
import urllib.request

import highdicom as hd
import peers
import pytest
from nodeproc import NodeProcess

from dicom_ai.cache.db import Job, Result
from dicom_ai.config import repo_root

pytestmark = pytest.mark.integration

BODY_REGION = repo_root() / "models" / "body-region"


def _get(port: int, path: str, user: str, password: str):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_classifier_added_while_running_flags_the_study(tmp_path, dcmtk, shared_data):
    variant = tmp_path / "body-region-attention"
    shutil.copytree(BODY_REGION, variant)
    manifest = json.loads((variant / "manifest.json").read_text())
    manifest["version"] = "1.0.0-attention"
    for c in manifest["classes"]:
        c["attention"] = c["name"] == "chest"
    (variant / "manifest.json").write_text(json.dumps(manifest))

    with NodeProcess(tmp_path / "node", stable_seconds=60) as node:
        assert node.cli("users", "add", "rad", "--role", "reader", input="read-pass\n").returncode == 0
        listed = node.cli("models", "list").stdout
        assert "dicom-ai-body-region" in listed and "dicom-ai-lung" in listed
        assert node.cli("models", "disable", "dicom-ai-lung", "--user", "admin").returncode == 0
        added = node.cli("models", "add", str(variant), "--enable", "--user", "admin", timeout=180)
        assert added.returncode == 0 and "active" in added.stdout, added.stdout + added.stderr
        assert node.wait_for_log("models now: dicom-ai-body-region 1.0.0-attention", 30), node.log_tail()

        sent = peers.storescu("127.0.0.1", node.port, shared_data / "ct_chest_LIDC-IDRI-0314" / "image",
                              aec=node.ae_title)
        assert sent.returncode == 0, sent.stderr
        done = peers.wait_for(lambda: [j for j in node.rows(Job) if j.state in ("done", "failed")], 120,
                              "the classification job", node.log_tail)
        (job,) = done
        assert job.state == "done", job.reason
        assert (job.model_name, job.model_version) == ("dicom-ai-body-region", "1.0.0-attention")
        finding = job.findings["Target Region"]
        assert finding["class"] == "chest" and finding["attention"] is True, finding
        assert finding["probability"] == max(finding["probabilities"].values())

        (result,) = node.rows(Result)
        assert result.kind == "SR"
        path = node.workdir / "var" / result.path
        sr = hd.sr.srread(path)
        (group,) = sr.content.get_image_measurement_groups()
        (evaluation,) = group.get_qualitative_evaluations()
        assert (evaluation.name.value, evaluation.value.value) == ("123014", "51185008")  # Target Region: thorax
        assert "dicom-ai-body-region 1.0.0-attention" in sr.SeriesDescription
        from tests.report.test_dciodvfy import assert_no_errors_of_ours

        first = sorted((shared_data / "ct_chest_LIDC-IDRI-0314" / "image").glob("*.dcm"))[0]
        assert_no_errors_of_ours(path, first)

        (row,) = _get(node.web_port, "/api/studies", "rad", "read-pass")
        assert row["attention"] is True, row
        (ai,) = row["ai"]
        assert ai["findings_text"].startswith("Target Region: chest (") and ai["findings_text"].endswith("(attention)")
        shown = node.cli("jobs", "show", str(job.id)).stdout
        assert "Target Region: chest" in shown and "needs attention" in shown
