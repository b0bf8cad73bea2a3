"""Generate the Grafana dashboards of the vauban-trace reference deployment.

The three dashboards under ``grafana/dashboards/`` are written by this script, never by hand::

    python grafana/build_dashboards.py            # (re)write grafana/dashboards/*.json
    python grafana/build_dashboards.py --check    # exit 1 if a checked-in file differs

``tests/deploy`` asserts that the checked-in JSON equals this script's output, and that every
PromQL expression in it uses only the metric names the vauban collector exposes (defined in
``vauban_trace.collector._metrics``; ``tests/deploy/test_deploy_live.py`` checks a live collector
serves every one of them). The output is deterministic: plain dicts, fixed ids and layout, two-space
indented JSON with a trailing newline.

Dashboards:

``vauban-collector.json`` (uid ``vauban-collector``)
    Ingest health of ``vauban-trace collector``: spans received / rejected / duplicated per
    second, requests by transport and status code, traces rebuilt complete vs incomplete,
    queue depth, pending (not yet rebuilt) traces, store write latency p50/p95.

``vauban-stages.json`` (uid ``vauban-stages``)
    Per-stage behaviour seen through the collector's stage histograms: duration p50/p95 by
    stage and model, executions per second, bytes in/out, sync points per execution, and, for
    sweep profiles, one XY chart per selected stage plotting stage duration (p50, p95) against
    ``sweep_value`` for the chosen ``sweep_axis``. The XY chart uses instant queries over the
    dashboard's time range (``increase(...[$__range])``): the x axis is the swept quantity
    (token count, batch size...), not time. Below it, for the chosen ``sweep_id`` (sweeps on the
    chosen axis that the collector profiled, ``vauban_sweep_*`` gauges), a table with one row per
    stage: the USL fit's status, lambda / sigma / kappa with their bootstrap intervals, peak N,
    R², the values and repeats behind it, and the refusal reason or the fit's notes (a refused
    fit has empty parameter cells: the collector exports no number for it); and one XY chart
    per selected stage of the measured throughput (N / median duration) and the USL-predicted
    throughput against ``sweep_value``. All instant queries of the latest profile. These two
    follow the ``sweep_stage`` variable (the stages of the chosen sweep's profile, which include
    ``request``: the root span is not a stage span, so ``stage`` never lists it, while on the
    concurrency axis the request stage is the one fitted).

``vauban-load.json`` (uid ``vauban-load``)
    Load tests (``load_panels.py``). For the chosen ``open_sweep`` (arrival-rate sweeps, those
    with ``vauban_sweep_verdict``): achieved vs offered throughput (XY, x = the offered rate the
    schedule realised, with the y = x line and the rate actually sent), response time p50 / p95 /
    p99 against the offered rate, a table of verdicts per rate (sustained / late / saturated /
    failures, the reason, offered, achieved, p50 with its bootstrap interval, p99, Little's L,
    runs, dropped, failed), the highest rate sustained and the lowest saturated (stats), queue
    wait and generator lateness p95 against the rate. For the chosen ``closed_sweep``
    (concurrency sweeps): the request throughput X(N) measured vs its USL fit, and the median
    response time, mean response time and median queue wait against N. Instant queries of the
    latest profile (``vauban_sweep_load*``, ``vauban_sweep_verdict``, ``vauban_sweep_observed``,
    ``vauban_sweep_usl_predicted``).

Every panel queries the Prometheus data source by its fixed uid ``prometheus``
(``grafana/provisioning/datasources/datasources.yaml``). No grafana-foundation-sdk: the JSON
model used here is the classic dashboard model that Grafana 12 (the pinned image) loads from
file providers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, also when loaded by path

from load_panels import (  # noqa: E402
    achieved_vs_offered,
    closed_loop_response,
    closed_loop_throughput,
    limit_stat,
    response_vs_rate,
    verdicts_table,
    wait_and_lateness,
)
from panels import (  # noqa: E402
    RATE,
    Json,
    dashboard,
    layout,
    query_variable,
    stat,
    target,
    timeseries,
)
from sweep_panels import fit_xy_panel, fits_table, sweep_panel  # noqa: E402

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

# --------------------------------------------------------------------------------------------
# Dashboards


def rate(metric: str, sel: str, by: str = "") -> str:
    head = f"sum by ({by}) " if by else "sum"
    return f"{head}(rate({metric}{sel}[{RATE}]))"


def quantile(q: str, bucket: str, sel: str, by: str = "") -> str:
    return f"histogram_quantile({q}, sum by (le{', ' + by if by else ''}) (rate({bucket}{sel}[{RATE}])))"


def range_sum(metric: str, sel: str) -> str:
    """Increase over the dashboard range, 0 (not "no data") when the series does not exist yet."""
    return f"(sum(increase({metric}{sel}[$__range])) or vector(0))"


def build_collector_dashboard() -> Json:
    """Ingest health of the vauban collector."""
    sel = '{instance=~"$instance"}'
    incomplete = '{instance=~"$instance", state="incomplete"}'
    received, rejected = "vauban_collector_spans_received_total", "vauban_collector_spans_rejected_total"
    rebuilt, write = "vauban_collector_traces_rebuilt_total", "vauban_collector_store_write_seconds_bucket"
    panels = [
        timeseries(
            "Spans received",
            "Spans accepted per second, by transport (http / grpc).",
            "ops",
            (rate(received, sel, "transport"), "{{transport}}"),
            stack=True,
        ),
        timeseries(
            "Spans rejected",
            "Spans refused per second, by reason (partial_success or whole request).",
            "ops",
            (rate(rejected, sel, "reason"), "{{reason}}"),
            stack=True,
        ),
        timeseries(
            "Spans duplicated",
            "Spans received again (client retries); stored once, counted here.",
            "ops",
            (rate("vauban_collector_spans_duplicated_total", sel), "duplicates"),
        ),
        timeseries(
            "Export requests",
            "Export requests per second by transport and status code (HTTP status or gRPC code).",
            "reqps",
            (rate("vauban_collector_requests_total", sel, "transport, code"), "{{transport}} {{code}}"),
            stack=True,
        ),
        timeseries(
            "Traces rebuilt",
            "Traces rebuilt per second: complete (root span ended + quiet period) or incomplete "
            "(no root span before the incomplete timeout).",
            "ops",
            (rate(rebuilt, sel, "state"), "{{state}}"),
            stack=True,
        ),
        stat(
            "Incomplete traces (range)",
            "Share of traces rebuilt incomplete over the dashboard's time range (0 when none was).",
            "percentunit",
            target(
                "A",
                f"{range_sum(rebuilt, incomplete)} / clamp_min({range_sum(rebuilt, sel)}, 1)",
                "incomplete",
            ),
            thresholds=[(None, "green"), (0.01, "orange"), (0.1, "red")],
        ),
        stat(
            "Rejected spans (range)",
            "Rejected spans as a share of received + rejected over the dashboard's time range.",
            "percentunit",
            target(
                "A",
                f"{range_sum(rejected, sel)} / clamp_min({range_sum(received, sel)} + {range_sum(rejected, sel)}, 1)",
                "rejected",
            ),
            thresholds=[(None, "green"), (0.001, "orange"), (0.01, "red")],
        ),
        timeseries(
            "Queue depth",
            "Export requests accepted but not yet durably stored.",
            "short",
            (f"sum by (instance) (vauban_collector_queue_depth{sel})", "{{instance}}"),
        ),
        timeseries(
            "Pending traces",
            "Traces with stored spans that are not rebuilt yet (waiting for the root span or the quiet period).",
            "short",
            (f"sum by (instance) (vauban_collector_pending_traces{sel})", "{{instance}}"),
        ),
        timeseries(
            "Store write latency",
            "Time to make one export request durable in the store (SQLite commit), p50 and p95.",
            "s",
            (quantile("0.5", write, sel), "p50"),
            (quantile("0.95", write, sel), "p95"),
        ),
    ]
    widths = [12, 12, 12, 12, 12, 6, 6, 12, 12, 24]
    instances = "label_values(vauban_collector_requests_total, instance)"
    variables = [query_variable("instance", "Instance", instances, multi=True, include_all=True)]
    return dashboard(
        "vauban-collector",
        "vauban-trace: collector ingest",
        "Ingest health of vauban-trace collector instances (OTLP receive, store, trace rebuild).",
        variables,
        layout(panels, widths),
    )


def _stage_sel(extra: str = "") -> str:
    return '{stage=~"$stage", model=~"$model"' + extra + "}"


def _mean(metric: str, by: str) -> str:
    sel = _stage_sel()
    return (
        f"sum by ({by}) (rate({metric}_sum{sel}[{RATE}])) / sum by ({by}) (rate({metric}_count{sel}[{RATE}]))"
    )


def build_stages_dashboard() -> Json:
    """Per-stage duration, bytes and sync points, and duration against a sweep axis."""
    sel = _stage_sel()
    duration, sync = "vauban_stage_duration_seconds", "vauban_stage_sync_points"
    panels = [
        timeseries(
            "Stage duration p50",
            "Median stage duration by stage and model.",
            "s",
            (quantile("0.5", f"{duration}_bucket", sel, "stage, model"), "{{stage}} {{model}}"),
        ),
        timeseries(
            "Stage duration p95",
            "95th percentile stage duration by stage and model.",
            "s",
            (quantile("0.95", f"{duration}_bucket", sel, "stage, model"), "{{stage}} {{model}}"),
        ),
        timeseries(
            "Stage executions",
            "Stage spans per second, by stage and model.",
            "ops",
            (rate(f"{duration}_count", sel, "stage, model"), "{{stage}} {{model}}"),
            stack=True,
        ),
        timeseries(
            "Stage time share",
            "Seconds spent in each stage per second of wall time (summed over concurrent requests).",
            "s",
            (rate(f"{duration}_sum", sel, "stage"), "{{stage}}"),
            stack=True,
        ),
        timeseries(
            "Bytes in / out per second",
            "Bytes entering and leaving each stage per second (direction in / out).",
            "Bps",
            (rate("vauban_stage_bytes_sum", sel, "stage, direction"), "{{stage}} {{direction}}"),
        ),
        timeseries(
            "Bytes per stage execution",
            "Mean bytes in / out of one stage execution.",
            "bytes",
            (_mean("vauban_stage_bytes", "stage, direction"), "{{stage}} {{direction}}"),
        ),
        timeseries(
            "Sync points per execution (mean)",
            "Mean host/device synchronisation points in one stage execution.",
            "short",
            (_mean(sync, "stage, model"), "{{stage}} {{model}}"),
        ),
        timeseries(
            "Sync points per execution (p95)",
            "95th percentile of synchronisation points in one stage execution.",
            "short",
            (quantile("0.95", f"{sync}_bucket", sel, "stage, model"), "{{stage}} {{model}}"),
        ),
        sweep_panel(),
        fits_table(),
        fit_xy_panel(),
    ]
    widths = [12] * (len(panels) - 2) + [24, 12]
    count = f"{duration}_count"
    variables = [
        query_variable("model", "Model", f"label_values({count}, model)", multi=True, include_all=True),
        query_variable(
            "stage", "Stage", f'label_values({count}{{model=~"$model"}}, stage)', multi=True, include_all=True
        ),
        query_variable(
            "sweep_axis",
            "Sweep axis",
            f'label_values({count}{{model=~"$model", sweep_axis!=""}}, sweep_axis)',
            multi=False,
            include_all=False,
        ),
        query_variable(
            "sweep_id",
            "Sweep",
            'label_values(vauban_sweep_fit_status{axis="$sweep_axis"}, sweep_id)',
            multi=False,
            include_all=False,
        ),
        query_variable(
            "sweep_stage",
            "Sweep stage",
            'label_values(vauban_sweep_fit_status{sweep_id="$sweep_id"}, stage)',
            multi=True,
            include_all=True,
        ),
    ]
    return dashboard(
        "vauban-stages",
        "vauban-trace: inference stages",
        "Per-stage duration, bytes and sync points from vauban stage spans, stage duration "
        "against a sweep axis (token count, batch size...), and the USL fits of profiled sweeps.",
        variables,
        layout(panels, widths),
    )


def build_load_dashboard() -> Json:
    """Open-loop (arrival-rate) and closed-loop (concurrency) load tests from the sweep profiler."""
    panels = [
        achieved_vs_offered(),
        response_vs_rate(),
        verdicts_table(),
        limit_stat(
            "Highest offered rate sustained ($open_sweep)",
            "highest_sustained",
            "The largest offered rate at which every run kept up: not late, not saturated, no failed request.",
            "none sustained",
        ),
        limit_stat(
            "Lowest offered rate saturated ($open_sweep)",
            "lowest_saturated",
            "The smallest offered rate at which a run saturated (achieved below offered, refused arrivals "
            "or a growing backlog).",
            "none saturated",
        ),
        wait_and_lateness(),
        closed_loop_throughput(),
        closed_loop_response(),
    ]
    widths = [12, 12, 24, 6, 6, 12, 12, 12]
    variables = [
        query_variable(
            "open_sweep", "Open-loop sweep", "label_values(vauban_sweep_verdict, sweep_id)",
            multi=False, include_all=False,
        ),
        query_variable(
            "closed_sweep", "Closed-loop sweep", 'label_values(vauban_sweep_load{axis="concurrency"}, sweep_id)',
            multi=False, include_all=False,
        ),
    ]
    return dashboard(
        "vauban-load",
        "vauban-trace: load tests",
        "Open-loop (arrival-rate) sweeps: achieved vs offered throughput, response-time percentiles, "
        "queue wait, generator lateness, verdicts and the highest rate sustained; closed-loop "
        "(concurrency) sweeps: request throughput X(N) against its USL fit, response time and queue "
        "wait per N. From the collector's sweep profiler (vauban_sweep_* gauges).",
        variables,
        layout(panels, widths),
    )


# --------------------------------------------------------------------------------------------
# Output

DASHBOARDS = {
    "vauban-collector.json": build_collector_dashboard,
    "vauban-load.json": build_load_dashboard,
    "vauban-stages.json": build_stages_dashboard,
}


def render(dashboard: Json) -> str:
    """The exact text written to disk for ``dashboard``."""
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def rendered() -> dict[str, str]:
    """File name -> file text for every dashboard."""
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a checked-in dashboard differs")
    parser.add_argument(
        "--out", type=Path, default=DASHBOARD_DIR, help="output folder (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    stale: list[str] = []
    for name, text in rendered().items():
        path: Path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print("out of date (run python grafana/build_dashboards.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
