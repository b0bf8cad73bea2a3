"""Fixtures for the deployment checks; the helpers live in ``deploy_support``."""

from __future__ import annotations

from typing import Any

import pytest
from deploy_support import compose_config, require_tool


@pytest.fixture(scope="session")
def docker_compose() -> str:
    return require_tool("docker-compose", "docker-compose")


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool", "prometheus")


@pytest.fixture(scope="session")
def prometheus_server() -> str:
    return require_tool("prometheus", "prometheus")


@pytest.fixture(scope="session")
def compose(docker_compose: str) -> dict[str, Any]:
    return compose_config(docker_compose, "docker-compose.yml")


@pytest.fixture(scope="session")
def compose_lb(docker_compose: str) -> dict[str, Any]:
    return compose_config(docker_compose, "docker-compose.yml", "collector/docker-compose.loadbalancing.yml")
