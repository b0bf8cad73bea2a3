"""The OpenTelemetry Collector configs: pipelines, exporter names for the pinned version, routing."""

from __future__ import annotations

import re
from typing import Any

import pytest
from deploy_support import REPO, load_yaml

CONFIGS = ("collector/otelcol-config.yaml", "collector/otelcol-loadbalancing.yaml")
# Exporter types valid without a deprecation warning on the pinned contrib release.
CURRENT_EXPORTERS = {"otlp_grpc", "otlp_http", "loadbalancing", "debug", "file"}
DEPRECATED_EXPORTERS = {"otlp": "otlp_grpc", "otlphttp": "otlp_http"}


def _type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def _pinned_collector_version() -> tuple[int, ...]:
    text = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    m = re.search(r"otel/opentelemetry-collector-contrib:(\d+)\.(\d+)\.(\d+)", text)
    assert m, "docker-compose.yml does not pin otel/opentelemetry-collector-contrib"
    return tuple(int(g) for g in m.groups())


@pytest.fixture(params=CONFIGS)
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    loaded = load_yaml(request.param)
    assert isinstance(loaded, dict)
    return loaded


def test_pipelines_start_with_memory_limiter_then_batch(config: dict[str, Any]) -> None:
    pipelines = config["service"]["pipelines"]
    traces = [p for name, p in pipelines.items() if _type(name) == "traces"]
    assert traces, "no traces pipeline"
    for pipeline in pipelines.values():
        processors = pipeline["processors"]
        assert _type(processors[0]) == "memory_limiter", f"memory_limiter must be first: {processors}"
        assert any(_type(p) == "batch" for p in processors[1:]), f"no batch processor: {processors}"


def test_every_referenced_component_is_defined_and_every_exporter_used(config: dict[str, Any]) -> None:
    service = config["service"]
    used_exporters: set[str] = set()
    for pipeline in service["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in (config.get(kind) or {}), f"{kind[:-1]} {component!r} is not defined"
        used_exporters.update(pipeline["exporters"])
    assert set(config["exporters"]) == used_exporters, "defined but unused exporters"
    for extension in service.get("extensions", []):
        assert extension in config["extensions"]


def test_exporter_names_match_the_pinned_collector(config: dict[str, Any]) -> None:
    version = _pinned_collector_version()
    assert version >= (0, 144, 0), "the configs use otlp_grpc/otlp_http, which need Collector 0.144+"
    for exporter in config["exporters"]:
        kind = _type(exporter)
        assert kind not in DEPRECATED_EXPORTERS, (
            f"{exporter}: deprecated name, use {DEPRECATED_EXPORTERS[kind]}"
        )
        assert kind in CURRENT_EXPORTERS, f"unexpected exporter type {kind!r}"
        if kind == "loadbalancing":
            # contrib PR #48533 (May 2026, after 0.149.0) renamed it load_balancing, keeping
            # `loadbalancing` as a deprecated alias: a newer pin needs a look at the release notes.
            assert version <= (0, 149, 0), (
                "collector image bumped past 0.149.0: check whether that release has renamed "
                "loadbalancing -> load_balancing, rename it in the config, then update this test"
            )


def test_receivers_listen_on_the_standard_otlp_ports(config: dict[str, Any]) -> None:
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"


def test_fan_out_to_tempo_and_jaeger_over_otlp_grpc(config: dict[str, Any]) -> None:
    exporters = config["exporters"]
    assert exporters["otlp_grpc/tempo"]["endpoint"] == "tempo:4317"
    assert exporters["otlp_grpc/jaeger"]["endpoint"] == "jaeger:4317"
    for name in ("otlp_grpc/tempo", "otlp_grpc/jaeger"):
        assert exporters[name]["tls"]["insecure"] is True


def test_single_instance_config_feeds_vauban_over_otlp_http() -> None:
    exporter = load_yaml(CONFIGS[0])["exporters"]["otlp_http/vauban"]
    assert exporter["endpoint"] == "http://vauban-collector:4318"
    assert exporter["compression"] == "gzip"
    assert exporter["retry_on_failure"]["enabled"] is True
    assert exporter["sending_queue"]["enabled"] is True
    assert exporter["headers"]["authorization"] == "Bearer ${env:VAUBAN_COLLECTOR_TOKEN}"


def test_loadbalancing_routes_by_trace_id_to_static_backends(compose_lb: dict[str, Any]) -> None:
    config = load_yaml(CONFIGS[1])
    exporter = config["exporters"]["loadbalancing/vauban"]
    assert exporter["routing_key"] == "traceID"
    resolver = exporter["resolver"]
    assert len(resolver) == 1 and set(resolver) <= {"static", "dns"}, "configure exactly one resolver"
    otlp = exporter["protocol"]["otlp"]
    assert "endpoint" not in otlp, "the resolver sets each backend's endpoint"
    assert otlp["tls"]["insecure"] is True
    hostnames = resolver["static"]["hostnames"]
    assert len(hostnames) >= 2
    for entry in hostnames:
        host, _, port = entry.rpartition(":")
        assert port == "4317", f"{entry}: the vauban collectors take OTLP/gRPC on 4317"
        assert host in compose_lb["services"], f"{host} is not a service of the load-balancing compose"
    text = (REPO / CONFIGS[1]).read_text(encoding="utf-8")
    assert "same instance" in text, "the config must say why routing by trace id is needed"


def test_collector_telemetry_port_is_the_one_prometheus_scrapes(config: dict[str, Any]) -> None:
    reader = config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert reader["host"] == "0.0.0.0"
    scrape = load_yaml("prometheus/prometheus.yml")["scrape_configs"]
    targets = {t for job in scrape for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert f"otel-collector:{reader['port']}" in targets
