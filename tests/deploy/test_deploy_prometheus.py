"""prometheus/*.yml: valid for promtool, scraping services and ports that exist in the stack."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from deploy_support import REPO, load_yaml

CONFIGS = {"prometheus/prometheus.yml": "compose", "prometheus/prometheus-loadbalancing.yml": "compose_lb"}


@pytest.mark.parametrize("path", sorted(CONFIGS))
def test_promtool_check_config(promtool: str, path: str) -> None:
    result = subprocess.run(
        [promtool, "check", "config", str(REPO / path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"promtool check config {path}:\n{result.stdout}\n{result.stderr}"
    assert "SUCCESS" in result.stdout + result.stderr


@pytest.mark.parametrize("path", sorted(CONFIGS))
def test_scrape_targets_are_services_of_the_stack(request: pytest.FixtureRequest, path: str) -> None:
    resolved: dict[str, Any] = request.getfixturevalue(CONFIGS[path])
    jobs = {job["job_name"]: job for job in load_yaml(path)["scrape_configs"]}
    assert {"vauban-collector", "otel-collector", "tempo", "jaeger"} <= set(jobs)
    for name, job in jobs.items():
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                assert port.isdigit()
                if name != "prometheus":
                    assert host in resolved["services"], f"{path}: {target} is not a compose service"
    vauban = [t for s in jobs["vauban-collector"]["static_configs"] for t in s["targets"]]
    assert vauban and all(t.endswith(":9464") for t in vauban), "the collector's --metrics port is 9464"
    assert jobs["vauban-collector"].get("metrics_path", "/metrics") == "/metrics"


def test_prometheus_accepts_tempo_remote_write(compose: dict[str, Any]) -> None:
    command = compose["services"]["prometheus"]["command"]
    assert "--web.enable-remote-write-receiver" in command
    tempo = load_yaml("tempo/tempo.yaml")
    (remote,) = tempo["metrics_generator"]["storage"]["remote_write"]
    assert remote["url"] == "http://prometheus:9090/api/v1/write"
    assert "local-blocks" in tempo["overrides"]["defaults"]["metrics_generator"]["processors"]
    otlp = tempo["distributor"]["receivers"]["otlp"]["protocols"]
    assert otlp["grpc"]["endpoint"].endswith(":4317") and otlp["http"]["endpoint"].endswith(":4318")
    assert tempo["server"]["http_listen_port"] == 3200
