"""docker-compose.yml, checked without a docker engine: services, env names, ports, health."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lookalike.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# Read by gunicorn.conf.py or by libraries, not by Settings.
NON_SETTINGS_ENV = {"BIND", "WEB_CONCURRENCY", "HF_HOME"}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_their_wiring():
    services = compose()["services"]
    assert set(services) >= {"qdrant", "api", "ingest"}
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:v")  # pinned tag, not latest
    assert services["qdrant"]["ports"] == ["127.0.0.1:6333:6333"]  # never on every interface by default
    assert services["qdrant"]["healthcheck"]["test"]
    assert services["api"]["depends_on"]["qdrant"]["condition"] == "service_healthy"
    assert "ports" not in services["api"]  # only through the buffering proxy
    assert services["proxy"]["image"].startswith("nginx:1.") and "8000:8080" in services["proxy"]["ports"]
    assert services["api"]["environment"]["QDRANT_URL"] == "http://qdrant:6333"
    assert services["ingest"]["profiles"] == ["ingest"]
    assert services["ingest"]["entrypoint"][:3] == ["python", "-m", "ingest"]  # `run ingest --reindex` appends
    assert services["ingest"]["healthcheck"] == {"disable": True}
    assert services["api"]["environment"]["MODEL_PRETRAINED"].endswith("-laion2b_s34b_b79k}")  # real weights
    assert (
        services["api"]["environment"]["HF_HOME"] == "/data/hf-cache" and "app-data:/data" in services["api"]["volumes"]
    )
    assert "${MODELS_HOST_DIR:-./models}:/app/models:ro" in services["api"]["volumes"]  # models/<dir> as on the host
    api_env = services["api"]["environment"]
    assert api_env["ENCODER_RUNTIME"] == "${ENCODER_RUNTIME:-onnx}" and api_env["ONNX_DIR"].startswith("/data/")
    assert "ENCODER_RUNTIME" not in services["ingest"]["environment"]  # ingest keeps torch: the same fp32 vectors
    assert "FROM python:3.11.13-slim-bookworm" in (ROOT / "Dockerfile").read_text()  # a pinned base image


def test_the_proxy_buffers_slow_clients_with_timeouts():
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    for directive in ("client_header_timeout 10s", "client_body_timeout 10s", "proxy_request_buffering on"):
        assert directive in config
    assert "server api:8000" in config


def test_environment_names_are_settings():
    fields = {name.upper() for name in Settings.model_fields}
    for name in ("api", "ingest", "api-cluster", "ingest-cluster"):
        env = set(compose()["services"][name]["environment"])
        assert env - NON_SETTINGS_ENV <= fields, env - NON_SETTINGS_ENV - fields


def test_dockerfile_uses_cpu_torch_and_a_non_root_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in dockerfile
    assert "torch==2.14.1" in dockerfile
    assert "\nUSER " in dockerfile


def test_cluster_profile_runs_qdrant_in_distributed_mode():
    services = compose()["services"]
    nodes = [services[f"qdrant-node{i}"] for i in (1, 2, 3)]
    for node in nodes:
        assert node["profiles"] == ["cluster"]
        assert node["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
        assert node["image"] == services["qdrant"]["image"]
    assert "--bootstrap" not in nodes[0]["command"]
    for node in nodes[1:]:
        assert node["command"][node["command"].index("--bootstrap") + 1] == "http://qdrant-node1:6335"
    env = services["api-cluster"]["environment"]
    assert {"QDRANT_SHARD_NUMBER", "QDRANT_REPLICATION_FACTOR", "QDRANT_WRITE_CONSISTENCY_FACTOR"} <= set(env)
    assert services["ingest-cluster"]["entrypoint"][:3] == ["python", "-m", "ingest"]
    fields = {name.upper() for name in Settings.model_fields}
    assert set(env) - NON_SETTINGS_ENV <= fields


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose not installed: `make test` installs Debian's docker-compose (validates without a daemon)",
)
@pytest.mark.parametrize(
    "profile", [[], ["--profile", "ingest"], ["--profile", "cluster"]], ids=["default", "ingest", "cluster"]
)
def test_docker_compose_validates_the_file(profile):
    result = subprocess.run(
        ["docker-compose", *profile, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
