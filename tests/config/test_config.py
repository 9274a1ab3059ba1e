from pathlib import Path

import pytest

from dicom_ai.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_loads_and_is_closed_by_default():
    s = load_settings(REPO / "config" / "dicom-ai.toml")
    assert s.node.ae_title == "DICOM_AI" and s.node.port == 11112
    assert s.completion.stable_seconds == 10
    assert s.destinations[0].name == "pacs" and s.destinations[0].port == 104
    assert s.peer_for("CT_SCANNER", "10.0.0.5") is not None
    assert s.peer_for("CT_SCANNER", "127.0.0.1") is None
    assert s.peer_for("OTHER", "10.0.0.5") is None


def test_env_overrides_file(monkeypatch, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[node]\nport = 104\n[completion]\nstable_seconds = 10\n')
    monkeypatch.setenv("DICOM_AI_NODE__PORT", "11113")
    monkeypatch.setenv("DICOM_AI_PEERS", '[{"ae_title": "CT1", "host": "10.1.0.0/16"}]')
    s = load_settings(cfg)
    assert s.node.port == 11113
    assert s.completion.stable_seconds == 10
    assert s.peer_for("CT1", "10.1.2.3") is not None and s.peer_for("CT1", "10.2.0.1") is None


@pytest.mark.parametrize(
    "text, key",
    [
        ("[node]\nport = 70000\n", "node.port"),
        ("[node]\nae_title = \"THIS_AE_TITLE_IS_TOO_LONG\"\n", "node.ae_title"),
        ("[completion]\nstable_secs = 3\n", "completion.stable_secs"),
        ("[[peers]]\nae_title = \"X\"\nhost = \"not-an-ip\"\n", "peers.0.host"),
        ("[node\nport = 1\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, key):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert key in str(info.value)
    assert "Traceback" not in str(info.value)


@pytest.mark.integration
def test_cli_reports_bad_config_in_one_line(tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "bad.toml"
    cfg.write_text("[node]\nport = -1\n")
    out = subprocess.run([sys.executable, "-m", "dicom_ai.cli", "serve", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "node.port" in out.stderr and "Traceback" not in out.stderr


def test_a_lost_worker_is_not_declared_before_three_missed_heartbeats():
    assert load_settings(None, worker={"heartbeat_seconds": 20, "lost_after_seconds": 60}).worker.lost_after_seconds == 60
    with pytest.raises(ConfigError, match="lost_after_seconds must be at least 3 x heartbeat_seconds"):
        load_settings(None, worker={"heartbeat_seconds": 30, "lost_after_seconds": 60})
