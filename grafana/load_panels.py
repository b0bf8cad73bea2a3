"""The panels of the generated load-test dashboard (``vauban-load.json``): open-loop (arrival-rate)
and closed-loop (concurrency) sweeps as the collector's sweep profiler exports them
(``vauban_sweep_load``, ``vauban_sweep_load_interval``, ``vauban_sweep_verdict``,
``vauban_sweep_load_limit``, and for the closed loop ``vauban_sweep_observed`` /
``vauban_sweep_usl_predicted`` of the ``request`` stage). See ``build_dashboards.py``'s docstring
for what each panel shows. All instant queries of the latest profile: table frames merged by
``sweep_value``, XY charts whose x axis is the offered rate, the measured offered load or N.
"""

from __future__ import annotations

from collections.abc import Sequence

from panels import DATASOURCE, Json, merged_table, target

OPEN = '{sweep_id="$open_sweep"'  # open-loop (arrival_rate) sweep selector, left open for more matchers
CLOSED = '{sweep_id="$closed_sweep"'  # closed-loop (concurrency) sweep selector


def load_query(sel: str, quantity: str) -> str:
    """One ``vauban_sweep_load`` quantity per ``sweep_value`` (one model per sweep id in practice)."""
    return f'avg by (sweep_value) (vauban_sweep_load{sel}, quantity="{quantity}"}})'


def _frames(series: Sequence[tuple[str, str]]) -> tuple[list[Json], dict[str, str]]:
    """Instant table targets A, B, ... and the rename map Value #X -> series name."""
    targets = [target(chr(ord("A") + i), expr, instant=True) for i, (_, expr) in enumerate(series)]
    rename = {f"Value #{chr(ord('A') + i)}": name for i, (name, _) in enumerate(series)}
    return targets, rename


def xy_chart(
    title: str,
    description: str,
    unit: str,
    x: str,
    series: Sequence[tuple[str, str, str]],
    *,
    x_unit: str = "short",
) -> Json:
    """An XY chart of instant queries merged by ``sweep_value``.

    ``series``: (name, PromQL, show) where show is points, lines or points+lines. ``x`` is
    ``sweep_value`` (the label, converted to a number) or the name of one of the series (e.g. the
    measured offered rate), which is then the x of every other series.
    """
    targets, rename = _frames([(name, expr) for name, expr, _ in series])
    names = [name for name, _, _ in series]
    plotted = [n for n in names if n != x]
    overrides: list[Json] = [
        {"matcher": {"id": "byName", "options": x}, "properties": [{"id": "unit", "value": x_unit}]}
    ]
    overrides += [
        {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "custom.show", "value": show}]}
        for name, _, show in series
        if name != x
    ]
    conversions = [{"targetField": "sweep_value", "destinationType": "number"}]
    return {
        "type": "xychart",
        "title": title,
        "description": description,
        "datasource": dict(DATASOURCE),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {"show": "points+lines", "pointSize": {"fixed": 6}, "lineWidth": 1},
            },
            "overrides": overrides,
        },
        "options": {
            "mapping": "manual",
            "series": [
                {
                    "name": {"fixed": name},
                    "frame": {"matcher": {"id": "byIndex", "options": 0}},
                    "x": {"matcher": {"id": "byName", "options": x}},
                    "y": {"matcher": {"id": "byName", "options": name}},
                }
                for name in plotted
            ],
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
            "tooltip": {"mode": "multi", "sort": "none"},
        },
        "targets": targets,
        # frames (sweep_value, Value #X) merged into one keyed by sweep_value, renamed, the text label
        # converted to a number, sorted along x
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "indexByName": {name: i for i, name in enumerate(["sweep_value", *names])},
                    "renameByName": rename,
                },
            },
            {"id": "convertFieldType", "options": {"conversions": conversions, "fields": {}}},
            {"id": "sortBy", "options": {"fields": {}, "sort": [{"field": x, "desc": False}]}},
        ],
    }


def achieved_vs_offered() -> Json:
    return xy_chart(
        "Achieved vs offered throughput ($open_sweep)",
        "Open loop, per offered rate (median over its runs): the achieved throughput (completions in the "
        "measured window) against the offered load actually realised by the schedule (x); the line y = x "
        "is what a service that keeps up achieves; 'sent' is the load the generator managed to send "
        "(below y = x when it fell behind). A plateau below the line is the service's capacity.",
        "reqps",
        "offered",
        [
            ("offered", load_query(OPEN, "offered_realised"), "lines"),
            ("achieved", load_query(OPEN, "achieved"), "points+lines"),
            ("y = x", load_query(OPEN, "offered_realised"), "lines"),
            ("sent", load_query(OPEN, "offered_sent"), "points"),
        ],
        x_unit="reqps",
    )


def response_vs_rate() -> Json:
    return xy_chart(
        "Response time vs offered rate ($open_sweep)",
        "Open loop: p50, p95 and p99 of the response time (root span duration of the requests that "
        "succeeded), per offered rate (median over runs). Past saturation the queue grows for the whole "
        "window, so the tail grows with the window's length, not only with the rate.",
        "s",
        "sweep_value",
        [(f"p{q}", load_query(OPEN, f"response_p{q}_s"), "points+lines") for q in (50, 95, 99)],
    )


def wait_and_lateness() -> Json:
    return xy_chart(
        "Queue wait and generator lateness p95 ($open_sweep)",
        "Open loop, per offered rate: p95 of the time requests waited in the serving queue (the queue "
        "stage, when a ServingLoop traced it) and p95 of the generator's lateness (request start minus "
        "its scheduled time: large values mean the load was not offered as scheduled, verdict 'late').",
        "s",
        "sweep_value",
        [
            ("queue wait p95", load_query(OPEN, "queue_wait_p95_s"), "points+lines"),
            ("lateness p95", load_query(OPEN, "lateness_p95_s"), "points+lines"),
        ],
    )


def verdicts_table() -> Json:
    """One row per offered rate: verdict and reason, with the numbers behind them."""
    columns = [
        ("offered", load_query(OPEN, "offered_realised")),
        ("achieved", load_query(OPEN, "achieved")),
        ("p50", load_query(OPEN, "response_p50_s")),
        ("p50 low", f'avg by (sweep_value) (vauban_sweep_load_interval{OPEN}, quantity="response_p50_s", '
                    'bound="low"})'),
        ("p50 high", f'avg by (sweep_value) (vauban_sweep_load_interval{OPEN}, quantity="response_p50_s", '
                     'bound="high"})'),
        ("p99", load_query(OPEN, "response_p99_s")),
        ("Little's L", load_query(OPEN, "littles_law_n")),
        ("runs", load_query(OPEN, "runs")),
        ("dropped", load_query(OPEN, "dropped")),
        ("failed", load_query(OPEN, "failed")),
    ]
    status = f"max by (sweep_value, verdict, reason) (vauban_sweep_verdict{OPEN}}})"
    targets, rename = _frames([("status", status), *columns])
    order = ["sweep_value", "verdict", *[name for name, _ in columns], "reason"]
    seconds = ("p50", "p50 low", "p50 high", "p99")
    return {
        "type": "table",
        "title": "Verdicts per offered rate ($open_sweep)",
        "description": "Per offered rate (req/s): sustained when no run was late, saturated or had a "
        "failed request; otherwise the words that hold (late: the generator fell behind its schedule; "
        "saturated: achieved below offered, arrivals refused by the in-flight cap, or a backlog growing "
        "over the window; failures) with the reasons. p50 low / high: the median's bootstrap interval "
        "(rates measured in one run). Little's L = X R (derived): the mean number of requests in the "
        "system, the closed-loop N with the same throughput.",
        "datasource": dict(DATASOURCE),
        "fieldConfig": {
            "defaults": {"custom": {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": True}},
            "overrides": [
                {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": "s"}]}
                for name in seconds
            ]
            + [
                {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": "reqps"}]}
                for name in ("sweep_value", "offered", "achieved")
            ],
        },
        "options": {"showHeader": True, "cellHeight": "sm", "frameIndex": 0},
        "targets": targets,
        "transformations": merged_table(order, rename) + [
            {
                "id": "convertFieldType",
                "options": {
                    "conversions": [{"targetField": "sweep_value", "destinationType": "number"}],
                    "fields": {},
                },
            },
            {"id": "sortBy", "options": {"fields": {}, "sort": [{"field": "sweep_value", "desc": False}]}},
        ],
    }


def limit_stat(title: str, quantity: str, description: str, none: str) -> Json:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": dict(DATASOURCE),
        "fieldConfig": {
            "defaults": {
                "unit": "reqps",
                "noValue": none,
                "thresholds": {"mode": "absolute", "steps": [{"color": "blue", "value": None}]},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "value",
        },
        "targets": [
            target("A", f'max(vauban_sweep_load_limit{OPEN}, quantity="{quantity}"}})', instant=True),
        ],
    }


def closed_loop_throughput() -> Json:
    sel = CLOSED + ', stage="request"'
    return xy_chart(
        "Request throughput X(N): measured vs USL ($closed_sweep)",
        "Closed loop, N clients with zero think time: the request throughput per N (median over runs of "
        "the estimate the USL was fitted to: completions in the clients' common window, or Little's law "
        "N / mean response when the window was unavailable) as points, and the request stage's USL fit "
        "X(N) at the same N as a line (none when the fit was refused: see the stages dashboard's fits table).",
        "reqps",
        "sweep_value",
        [
            ("measured", f'avg by (sweep_value) (vauban_sweep_observed{sel}, quantity="throughput"}})', "points"),
            ("USL fit", f"avg by (sweep_value) (vauban_sweep_usl_predicted{sel}}})", "lines"),
        ],
    )


def closed_loop_response() -> Json:
    return xy_chart(
        "Response time and queue wait vs N ($closed_sweep)",
        "Closed loop, per N: the median response time (request stage) and the median queue wait (queue "
        "stage, when traced) over all requests at N, and the mean response time (median over runs) that "
        "Little's law uses (X = N / R).",
        "s",
        "sweep_value",
        [
            ("response p50", load_query(CLOSED, "response_p50_s"), "points+lines"),
            ("mean response", load_query(CLOSED, "mean_response_s"), "points+lines"),
            ("queue wait p50", load_query(CLOSED, "queue_wait_p50_s"), "points+lines"),
        ],
    )
