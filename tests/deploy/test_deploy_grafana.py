"""Grafana provisioning and dashboards: parse, reference the fixed metrics only, valid PromQL."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from deploy_support import FIXED_METRICS, HISTOGRAMS, METRIC_LABELS, REPO, load_yaml

DASHBOARDS = ("vauban-collector.json", "vauban-load.json", "vauban-stages.json")
METRIC_TOKEN = re.compile(r"\bvauban_[a-z_]+")
BY_CLAUSE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHERS = re.compile(r"\{([^{}]*)\}")
MATCHER_NAME = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "vauban_build_dashboards", REPO / "grafana/build_dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dashboard(name: str) -> dict[str, Any]:
    loaded = json.loads((REPO / "grafana/dashboards" / name).read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _datasources() -> list[dict[str, Any]]:
    loaded = load_yaml("grafana/provisioning/datasources/datasources.yaml")
    assert loaded["apiVersion"] == 1
    return list(loaded["datasources"])


def _promql() -> Iterator[tuple[str, str, bool]]:
    """(where, expression, is_promql) for every query in the dashboards and data sources."""
    for name in DASHBOARDS:
        dash = _dashboard(name)
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                yield f"{name}: {panel['title']} [{target['refId']}]", target["expr"], True
        for var in dash["templating"]["list"]:
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            yield f"{name}: variable {var['name']}", query, False  # label_values(), not PromQL
    for ds in _datasources():
        for query in ds.get("jsonData", {}).get("tracesToMetrics", {}).get("queries", []):
            yield f"datasource {ds['name']}: {query['name']}", query["query"], True


def _base(token: str) -> str | None:
    if token in FIXED_METRICS:
        return token
    for suffix in ("_bucket", "_sum", "_count"):
        if token.endswith(suffix) and token[: -len(suffix)] in HISTOGRAMS:
            return token[: -len(suffix)]
    return None


# -- provisioning ---------------------------------------------------------------------------------


def test_datasources_have_fixed_uids_and_links_resolve() -> None:
    datasources = _datasources()
    by_type = {ds["type"]: ds for ds in datasources}
    assert set(by_type) == {"prometheus", "tempo", "jaeger"}
    uids = [ds["uid"] for ds in datasources]
    assert len(set(uids)) == len(uids) and all(uids)
    prometheus_uid = by_type["prometheus"]["uid"]
    tempo = by_type["tempo"]["jsonData"]
    assert tempo["tracesToMetrics"]["datasourceUid"] == prometheus_uid
    assert tempo["serviceMap"]["datasourceUid"] == prometheus_uid

    def references(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasourceUid":
                    yield value
                else:
                    yield from references(value)
        elif isinstance(node, list):
            for item in node:
                yield from references(item)

    for ds in datasources:
        for ref in references(ds.get("jsonData", {})):
            assert ref in uids, f"{ds['name']}: datasourceUid {ref!r} is not provisioned"
        host = re.match(r"http://([^:/]+):\d+$", ds["url"])
        assert host, ds["url"]


def test_datasource_urls_point_at_compose_services(compose: dict[str, Any]) -> None:
    for ds in _datasources():
        host = re.match(r"http://([^:/]+):", ds["url"])
        assert host and host.group(1) in compose["services"], f"{ds['url']} is not a compose service"


def test_provisioning_escapes_grafana_macros() -> None:
    # Grafana expands $VAR / ${VAR} from the environment in provisioning files; a query macro
    # must be written $$__tags or it silently becomes empty.
    text = (REPO / "grafana/provisioning/datasources/datasources.yaml").read_text(encoding="utf-8")
    assert "$$__tags" in text
    assert not re.search(r"(?<!\$)\$__", text), "unescaped $__ macro in provisioning YAML"


def test_dashboard_provider_is_a_file_provider() -> None:
    loaded = load_yaml("grafana/provisioning/dashboards/dashboards.yaml")
    assert loaded["apiVersion"] == 1
    (provider,) = loaded["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


# -- dashboards ----------------------------------------------------------------------------------


def test_checked_in_dashboards_equal_the_generator_output() -> None:
    rendered = _generator().rendered()
    assert sorted(rendered) == sorted(DASHBOARDS)
    for name, text in rendered.items():
        on_disk = (REPO / "grafana/dashboards" / name).read_text(encoding="utf-8")
        assert on_disk == text, f"{name} is stale: run python grafana/build_dashboards.py"


def test_generator_check_mode_detects_a_stale_file(tmp_path: Path) -> None:
    gen = _generator()
    assert gen.main(["--out", str(tmp_path)]) == 0
    assert gen.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / DASHBOARDS[0]).write_text("{}\n", encoding="utf-8")
    assert gen.main(["--check", "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_structure(name: str) -> None:
    dash = _dashboard(name)
    assert dash["uid"] == Path(name).stem
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids)
    uids = {ds["uid"] for ds in _datasources()}
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] in uids
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, f"{panel['title']}: off the grid"
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not (area & cells), f"{panel['title']} overlaps another panel"
        cells |= area
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] in uids


def test_dashboards_titles_and_uids_are_unique() -> None:
    dashes = [_dashboard(n) for n in DASHBOARDS]
    assert len({d["uid"] for d in dashes}) == len(dashes)
    assert len({d["title"] for d in dashes}) == len(dashes)


def test_queries_use_only_the_fixed_metric_names_and_their_labels() -> None:
    used: set[str] = set()
    for where, expr, _ in _promql():
        tokens = METRIC_TOKEN.findall(expr)
        assert tokens, f"{where}: no vauban metric in {expr!r}"
        bases = set()
        for token in tokens:
            base = _base(token)
            assert base is not None, f"{where}: {token!r} is not one of the collector's metrics"
            bases.add(base)
        used |= bases
        allowed = {"instance", "job"}.union(*(METRIC_LABELS[b] for b in bases))
        if any(t.endswith("_bucket") for t in tokens):
            allowed.add("le")
        labels = {lbl.strip() for group in BY_CLAUSE.findall(expr) for lbl in group.split(",") if lbl.strip()}
        labels |= {n for group in MATCHERS.findall(expr) for n in MATCHER_NAME.findall(group)}
        # label_values(metric, label)
        labels |= set(re.findall(r"label_values\([^)]*,\s*([a-z_]+)\)", expr))
        assert labels <= allowed, f"{where}: labels {sorted(labels - allowed)} are not on {sorted(bases)}"
    assert used == FIXED_METRICS, f"metrics never charted: {sorted(FIXED_METRICS - used)}"


def test_promql_parses_with_promtool(promtool: str, tmp_path: Path) -> None:
    rules = []
    where_of: dict[str, str] = {}
    for i, (where, expr, is_promql) in enumerate(_promql()):
        if not is_promql:
            continue
        concrete = re.sub(r"\$\$?__tags", 'stage="prefill"', expr)
        concrete = concrete.replace("$__rate_interval", "1m").replace("$__range", "1h")
        concrete = re.sub(r"\$[a-z_]+", "x", concrete)
        assert "$" not in concrete, f"{where}: unresolved macro in {expr!r}"
        record = f"dashboard_query_{i}"
        where_of[record] = where
        rules.append({"record": record, "expr": concrete})
    path = tmp_path / "dashboard-queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"promtool rejected a query:\n{result.stdout}\n{result.stderr}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout + result.stderr


def test_stages_dashboard_has_the_sweep_xy_chart() -> None:
    dash = _dashboard("vauban-stages.json")
    (panel,) = [p for p in dash["panels"] if p["title"] == "$stage duration vs $sweep_axis"]
    assert panel["repeat"] == "stage", "one XY chart per selected stage"
    for target in panel["targets"]:
        assert target["instant"] is True and target["range"] is False and target["format"] == "table"
        assert "vauban_stage_duration_seconds_bucket" in target["expr"]
        assert "sweep_value" in target["expr"] and 'sweep_axis="$sweep_axis"' in target["expr"]
    options = panel["options"]
    assert options["mapping"] == "manual"
    assert {s["x"]["matcher"]["options"] for s in options["series"]} == {"sweep_value"}
    assert {s["y"]["matcher"]["options"] for s in options["series"]} == {"p50", "p95"}
    conversions = [t for t in panel["transformations"] if t["id"] == "convertFieldType"]
    assert conversions[0]["options"]["conversions"][0] == {
        "targetField": "sweep_value",
        "destinationType": "number",
    }
    names = {v["name"]: v for v in dash["templating"]["list"]}
    assert names["sweep_axis"]["multi"] is False and names["stage"]["multi"] is True


def test_stages_dashboard_has_the_usl_fit_table_and_curve() -> None:
    dash = _dashboard("vauban-stages.json")
    (table,) = [p for p in dash["panels"] if p["type"] == "table"]
    exprs = [t["expr"] for t in table["targets"]]
    assert all('sweep_id="$sweep_id"' in e for e in exprs)
    assert "vauban_sweep_fit_status" in exprs[0] and "reason" in exprs[0]
    renamed = table["transformations"][1]["options"]["renameByName"].values()
    assert {"lambda", "lambda low", "lambda high", "sigma", "kappa", "kappa high", "peak N"} <= set(renamed)
    (curve,) = [p for p in dash["panels"] if p["type"] == "xychart" and "USL" in p["title"]]
    # the sweep's own stages (they include "request", which the histograms' stage variable lacks)
    assert curve["repeat"] == "sweep_stage" and all('stage="$sweep_stage"' in t["expr"] for t in curve["targets"])
    assert all('stage=~"$sweep_stage"' in e for e in exprs)
    assert {s["y"]["matcher"]["options"] for s in curve["options"]["series"]} == {"measured", "USL fit"}
    assert ["vauban_sweep_observed" in t["expr"] for t in curve["targets"]] == [True, False]
    names = {v["name"]: v for v in dash["templating"]["list"]}
    assert names["sweep_id"]["multi"] is False and "vauban_sweep_fit_status" in names["sweep_id"]["query"]["query"]
    assert names["sweep_stage"]["query"]["query"] == 'label_values(vauban_sweep_fit_status{sweep_id="$sweep_id"}, stage)'


def test_load_dashboard_panels() -> None:
    dash = _dashboard("vauban-load.json")
    panels = {p["title"]: p for p in dash["panels"]}
    names = {v["name"]: v for v in dash["templating"]["list"]}
    assert names["open_sweep"]["query"]["query"] == "label_values(vauban_sweep_verdict, sweep_id)"
    assert 'axis="concurrency"' in names["closed_sweep"]["query"]["query"]
    for panel in dash["panels"]:
        for t in panel["targets"]:
            assert t["instant"] is True and t["format"] == "table", panel["title"]
            assert 'sweep_id="$open_sweep"' in t["expr"] or 'sweep_id="$closed_sweep"' in t["expr"]
    # achieved vs offered: x is the realised offered rate, with the y = x reference and the rate sent
    xy = panels["Achieved vs offered throughput ($open_sweep)"]
    series = {s["y"]["matcher"]["options"]: s["x"]["matcher"]["options"] for s in xy["options"]["series"]}
    assert series == {"achieved": "offered", "y = x": "offered", "sent": "offered"}
    exprs = [t["expr"] for t in xy["targets"]]
    assert exprs[0] == exprs[2] and 'quantity="offered_realised"' in exprs[0]
    assert 'quantity="achieved"' in exprs[1] and 'quantity="offered_sent"' in exprs[3]
    rename = xy["transformations"][1]["options"]["renameByName"]
    assert list(rename.values()) == ["offered", "achieved", "y = x", "sent"]
    response = panels["Response time vs offered rate ($open_sweep)"]
    assert [s["y"]["matcher"]["options"] for s in response["options"]["series"]] == ["p50", "p95", "p99"]
    assert {s["x"]["matcher"]["options"] for s in response["options"]["series"]} == {"sweep_value"}
    table = panels["Verdicts per offered rate ($open_sweep)"]
    assert "vauban_sweep_verdict" in table["targets"][0]["expr"]
    assert "verdict, reason" in table["targets"][0]["expr"]
    organize = table["transformations"][1]["options"]
    assert {"sweep_value", "verdict", "reason", "offered", "achieved", "p50 low", "Little's L"} <= set(
        organize["indexByName"]
    )
    stat = panels["Highest offered rate sustained ($open_sweep)"]
    assert 'quantity="highest_sustained"' in stat["targets"][0]["expr"]
    assert stat["fieldConfig"]["defaults"]["noValue"] == "none sustained"
    closed = panels["Request throughput X(N): measured vs USL ($closed_sweep)"]
    assert all('stage="request"' in t["expr"] for t in closed["targets"])
    assert ["vauban_sweep_observed" in t["expr"] for t in closed["targets"]] == [True, False]
