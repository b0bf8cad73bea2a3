"""Shared helpers for the deployment checks (docker-compose.yml, collector/, grafana/, prometheus/).

Nothing here needs a Docker engine. External tools come from Debian packages: ``docker-compose``
(``docker-compose config`` resolves and validates a compose file offline) and ``prometheus``
(``promtool`` and the ``prometheus`` server). When a tool is missing and the tests run as root
with apt-get available, it is installed; otherwise the test FAILS with the command to run,
never skips: these checks are the only validation the deployment files get.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from system_tools import require_tool as require_tool  # re-exported to the deploy tests

REPO = Path(__file__).resolve().parents[2]

#: Metric names the vauban collector exposes (the contract the dashboards are written against).
FIXED_METRICS = frozenset(
    {
        "vauban_collector_spans_received_total",
        "vauban_collector_spans_rejected_total",
        "vauban_collector_spans_duplicated_total",
        "vauban_collector_requests_total",
        "vauban_collector_traces_rebuilt_total",
        "vauban_collector_queue_depth",
        "vauban_collector_pending_traces",
        "vauban_collector_store_write_seconds",
        "vauban_stage_duration_seconds",
        "vauban_stage_bytes",
        "vauban_stage_sync_points",
        "vauban_sweep_fit_status",
        "vauban_sweep_usl_parameter",
        "vauban_sweep_usl_peak",
        "vauban_sweep_usl_r_squared",
        "vauban_sweep_usl_peak_interval",
        "vauban_sweep_usl_weighting",
        "vauban_sweep_usl_lack_of_fit",
        "vauban_sweep_usl_predicted",
        "vauban_sweep_observed",
        "vauban_sweep_points",
        "vauban_sweep_load",
        "vauban_sweep_load_interval",
        "vauban_sweep_verdict",
        "vauban_sweep_load_limit",
    }
)
_SWEEP = frozenset({"sweep_id", "axis", "stage", "model"})
#: Labels of each metric (besides the ones Prometheus adds: instance, job; and le on _bucket).
METRIC_LABELS: dict[str, frozenset[str]] = {
    "vauban_collector_spans_received_total": frozenset({"transport"}),
    "vauban_collector_spans_rejected_total": frozenset({"reason"}),
    "vauban_collector_spans_duplicated_total": frozenset(),
    "vauban_collector_requests_total": frozenset({"transport", "code"}),
    "vauban_collector_traces_rebuilt_total": frozenset({"state"}),
    "vauban_collector_queue_depth": frozenset(),
    "vauban_collector_pending_traces": frozenset(),
    "vauban_collector_store_write_seconds": frozenset(),
    "vauban_stage_duration_seconds": frozenset({"stage", "model", "sweep_axis", "sweep_value"}),
    "vauban_stage_bytes": frozenset({"stage", "model", "direction", "sweep_axis", "sweep_value"}),
    "vauban_stage_sync_points": frozenset({"stage", "model", "sweep_axis", "sweep_value"}),
    "vauban_sweep_fit_status": _SWEEP | {"status", "reason", "caveat"},
    "vauban_sweep_usl_parameter": _SWEEP | {"parameter", "bound"},
    "vauban_sweep_usl_peak": _SWEEP,
    "vauban_sweep_usl_r_squared": _SWEEP,
    "vauban_sweep_usl_peak_interval": _SWEEP | {"bound"},
    "vauban_sweep_usl_weighting": _SWEEP | {"weighting"},
    "vauban_sweep_usl_lack_of_fit": _SWEEP | {"quantity"},
    "vauban_sweep_usl_predicted": _SWEEP | {"sweep_value"},
    "vauban_sweep_observed": _SWEEP | {"sweep_value", "quantity"},
    "vauban_sweep_points": _SWEEP | {"quantity"},
    "vauban_sweep_load": _SWEEP | {"sweep_value", "quantity"},
    "vauban_sweep_load_interval": _SWEEP | {"sweep_value", "quantity", "bound"},
    "vauban_sweep_verdict": _SWEEP | {"sweep_value", "verdict", "reason"},
    "vauban_sweep_load_limit": _SWEEP | {"quantity"},
}
HISTOGRAMS = frozenset(
    {
        "vauban_collector_store_write_seconds",
        "vauban_stage_duration_seconds",
        "vauban_stage_bytes",
        "vauban_stage_sync_points",
    }
)


def compose_config(docker_compose: str, *files: str) -> dict[str, Any]:
    """``docker-compose -f ... config`` output, parsed; fails the test with its stderr on error."""
    cmd = [docker_compose]
    for f in files:
        cmd += ["-f", f]
    cmd.append("config")
    env = {
        k: v for k, v in os.environ.items() if k not in ("VAUBAN_COLLECTOR_TOKEN", "GRAFANA_ADMIN_PASSWORD")
    }
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr}"
    loaded = yaml.safe_load(result.stdout)
    assert isinstance(loaded, dict) and "services" in loaded, result.stdout[:500]
    return loaded


def load_yaml(relative: str) -> Any:
    with open(REPO / relative, encoding="utf-8") as fh:
        return yaml.safe_load(fh)
