"""docker-compose.yml (and the load-balancing override) resolve, pin images, bind to loopback."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from deploy_support import REPO, load_yaml

EXACT_TAG = re.compile(r"^v?\d+\.\d+\.\d+$")
SERVICES = {"otel-collector", "tempo", "tempo-init", "jaeger", "prometheus", "grafana", "vauban-collector"}


def _split_image(image: str) -> tuple[str, str]:
    assert "@" not in image or ":" in image.split("@")[0], f"{image}: digest without a readable tag"
    name, _, tag = image.split("@")[0].rpartition(":")
    if "/" in tag or not name:  # "registry:5000/repo" has no tag
        return image, ""
    return name, tag


def _published(port: Any) -> tuple[str, str]:
    """(host_ip, published) of one entry of a resolved `ports` list (short or long syntax)."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), str(port.get("published", ""))
    text = str(port).split("/")[0]
    parts = text.rsplit(":", 2)
    if len(parts) == 3:
        return parts[0], parts[1]
    return "", parts[0] if len(parts) == 2 else ""


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source of every volume entry of a resolved service."""
    out: dict[str, str] = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            out[str(entry["target"])] = str(entry.get("source", ""))
        else:
            parts = str(entry).split(":")
            out[parts[1]] = parts[0]
    return out


@pytest.fixture(scope="module", params=["base", "loadbalancing"])
def resolved(request: pytest.FixtureRequest) -> dict[str, Any]:
    name = "compose" if request.param == "base" else "compose_lb"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


def test_compose_config_resolves_with_all_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_loadbalancing_override_adds_two_instances(compose_lb: dict[str, Any]) -> None:
    services = compose_lb["services"]
    assert {"vauban-collector-1", "vauban-collector-2"} <= set(services)
    mounts = _mounts(services["otel-collector"])
    assert mounts["/etc/otelcol-contrib/config.yaml"] == str(REPO / "collector/otelcol-loadbalancing.yaml")
    stores = {_mounts(services[s])["/data"] for s in ("vauban-collector-1", "vauban-collector-2")}
    assert len(stores) == 2, "each vauban collector instance needs its own store volume"
    prom = _mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"]
    assert prom == str(REPO / "prometheus/prometheus-loadbalancing.yml")


def test_every_image_is_pinned_to_an_exact_version(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        assert "image" in service, f"{name}: no image (a built service must still name its tag)"
        image_name, tag = _split_image(service["image"])
        assert tag, f"{name}: image {service['image']!r} has no tag"
        assert tag != "latest", f"{name}: image {service['image']!r} uses latest"
        assert EXACT_TAG.match(tag), f"{name}: tag {tag!r} of {image_name} is not an exact version (x.y.z)"


def test_every_published_port_is_bound_to_loopback(resolved: dict[str, Any]) -> None:
    seen: set[str] = set()
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            host_ip, published = _published(port)
            assert host_ip == "127.0.0.1", f"{name}: port {port!r} is not bound to 127.0.0.1"
            assert published and published not in seen, f"{name}: host port {published} published twice"
            seen.add(published)


def test_pinned_versions_match_the_documented_ones(compose: dict[str, Any]) -> None:
    images = {name: s["image"] for name, s in compose["services"].items()}
    assert images["jaeger"].startswith("jaegertracing/jaeger:2."), "Jaeger v2 (OTLP-native) is expected"
    collector_tag = _split_image(images["otel-collector"])[1]
    docs = (REPO / "docs/deployment.md").read_text(encoding="utf-8")
    for image in images.values():
        if not image.startswith("vauban-trace-collector:"):
            assert image in docs, f"docs/deployment.md does not list the pinned image {image}"
    for config in ("collector/otelcol-config.yaml", "collector/otelcol-loadbalancing.yaml"):
        text = (REPO / config).read_text(encoding="utf-8")
        assert f"otel/opentelemetry-collector-contrib:{collector_tag}" in text, (
            f"{config} names another version"
        )


def test_wiring_of_config_files_and_stores(compose: dict[str, Any]) -> None:
    s = compose["services"]
    expected = {
        "otel-collector": {"/etc/otelcol-contrib/config.yaml": "collector/otelcol-config.yaml"},
        "tempo": {"/etc/tempo/tempo.yaml": "tempo/tempo.yaml"},
        "prometheus": {"/etc/prometheus/prometheus.yml": "prometheus/prometheus.yml"},
        "grafana": {
            "/etc/grafana/provisioning": "grafana/provisioning",
            "/etc/grafana/dashboards": "grafana/dashboards",
        },
    }
    for name, mounts in expected.items():
        got = _mounts(s[name])
        for target, source in mounts.items():
            assert got.get(target) == str(REPO / source), f"{name}: {target} should mount ./{source}"
    # Stores live in named volumes.
    named = set(compose.get("volumes", {}))
    for name, target in (
        ("vauban-collector", "/data"),
        ("tempo", "/var/tempo"),
        ("prometheus", "/prometheus"),
        ("grafana", "/var/lib/grafana"),
    ):
        assert _mounts(s[name]).get(target) in named, f"{name}: {target} is not a named volume"
    build = s["vauban-collector"]["build"]
    assert Path(build["context"]) == REPO
    assert build["dockerfile"] == "collector/Dockerfile"
    assert "VAUBAN_COLLECTOR_TOKEN" in s["vauban-collector"]["environment"]
    assert "VAUBAN_COLLECTOR_TOKEN" in s["otel-collector"]["environment"]


def test_bind_mount_sources_exist(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        for target, source in _mounts(service).items():
            if source.startswith("/"):
                assert Path(source).exists(), f"{name}: bind mount source {source} (for {target}) is missing"


def test_grafana_provisioning_paths_match_the_mounts(compose: dict[str, Any]) -> None:
    provider = load_yaml("grafana/provisioning/dashboards/dashboards.yaml")["providers"][0]
    assert provider["options"]["path"] in _mounts(compose["services"]["grafana"])
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (REPO / "grafana/dashboards" / Path(home).name).is_file()
