"""The markdown of ``bench/gpu_sweeps.py``'s results: its printout and the docs/benchmarks.md section."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

SECTION = "GPU sweeps (concurrency and arrival rate)"
COMMAND = "OTEL_BSP_MAX_QUEUE_SIZE=500000 python3 bench/gpu_sweeps.py --settle --out result.json"


def _ms(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _rate(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}/s"


def _iv(fit: dict[str, Any], name: str, key: str) -> str:
    v = fit.get(key)
    if v is None:
        return "none"
    iv = (fit.get("intervals") or {}).get(name)
    return f"{v:.4g} [{iv[0]:.3g}, {iv[1]:.3g}]" if iv else f"{v:.4g}"


def fit_lines(label: str, fit: dict[str, Any] | None) -> list[str]:
    if fit is None:
        return [f"- {label}: no fit (no request stage)"]
    if fit["status"] != "fitted":
        return [f"- {label}: **refused**: {fit['reason']}"]
    peak = "none (kappa = 0)" if fit.get("peak_n") is None else f"{fit['peak_n']:.3g}"
    if fit.get("peak_interval"):
        lo, hi = fit["peak_interval"]
        peak += f" [{lo:.3g}, {hi:.3g}]"
    lof = fit.get("lack_of_fit") or {}
    lof_s = lof.get("result", "n/a")
    if lof.get("p") is not None:
        lof_s += f" (F = {lof['f']:.3g}, p = {lof['p']:.3g})"
    return [f"- {label}: lambda {_iv(fit, 'lambda', 'lambda')}, sigma {_iv(fit, 'sigma', 'sigma')}, "
            f"kappa {_iv(fit, 'kappa', 'kappa')}, peak N* {peak}, R² {fit['r2']:.3f}, weighting {fit['weighting']}, "
            f"lack of fit: {lof_s}" + (f"; notes: {fit['reason']}" if fit.get("reason") else "")]


_REASON_TAGS = (("fell behind", "lateness"), ("after the window", "sent late"), ("achieved", "throughput"),
                ("in-flight cap", "cap"), ("backlog", "backlog"), ("failed", "failures"))


def _x_medians(sweep: dict[str, Any]) -> dict[int, float]:
    return {int(n): v["x_median"] for n, v in sweep["by_n"].items() if v["x_median"] is not None}


def _fit_short(fit: dict[str, Any] | None) -> str:
    if fit is None or fit["status"] != "fitted":
        return "refused" if fit is None else f"refused ({fit['reason']})"
    return (f"lambda {fit['lambda']:.3g}, sigma {fit['sigma']:.3g}, kappa {fit['kappa']:.3g}, R² {fit['r2']:.2f}, "
            f"lack of fit {(fit.get('lack_of_fit') or {}).get('result', 'n/a')}")


def also_line(other: dict[str, Any]) -> str:
    """One paragraph summarising another run of the script (another call, maybe another host)."""
    m, st = other["machine"], other["settings"]
    parts = [f"Same script {'with' if st.get('settle') else 'without'} `--settle` in an earlier call "
             f"(a fresh {m['card']} machine, {m['date']}, {other.get('elapsed_s', 0):.0f} s):"]
    if other.get("service"):
        parts.append("served callable alone " + ", ".join(
            f"B = {r['batch']}: {_ms(r['median_s'])}" for r in other["service"]) + ";")
    for key, name in (("batching", "batching"), ("no_batching", "no batching")):
        if other.get(key):
            xs = _x_medians(other[key])
            parts.append(f"{name} X(N) " + ", ".join(f"{n}: {x:.3g}" for n, x in sorted(xs.items())) +
                         f" req/s, USL {_fit_short(other[key]['fit'])};")
    op = other.get("open")
    if op and "open_loop" in op:
        ol = op["open_loop"]
        parts.append(f"open loop at {', '.join(f'{r:g}' for r in op['rates'])}/s: highest sustained "
                     f"{_rate(ol['highest_sustained']) or 'none'}, lowest saturated {_rate(ol['lowest_saturated']) or 'none'}.")
    return " ".join(parts)


def reading(result: dict[str, Any]) -> list[str]:
    """Bullets computed from the result (no number typed in by hand)."""
    out: list[str] = []
    b, nb, st = result.get("batching"), result.get("no_batching"), result["settings"]
    svc = {r["batch"]: r for r in result.get("service", [])}
    if b:
        xs = _x_medians(b)
        if xs:
            n_top = max(xs, key=lambda n: xs[n])
            n1 = min(xs)
            top = svc.get(st["max_batch"])
            bt = b["by_n"][str(n_top)]["batch"] or {}
            out.append(
                f"- Dynamic batching: X grows from {xs[n1]:.3g} req/s at N = {n1} to {xs[n_top]:.3g} req/s at N = {n_top} "
                f"({xs[n_top] / (n_top / n1 * xs[n1]):.0%} of linear scaling from N = {n1}). The model is launch-bound "
                f"at this size (the served callable alone: " + ", ".join(
                    f"{_ms(r['median_s'])} for B = {k}" for k, r in sorted(svc.items())) +
                "), so a batch costs little more than one request; "
                + (f"at B = {st['max_batch']} it could serve {top['items_per_s']:.4g} items/s alone, " if top else "")
                + f"while the loop at N = {n_top} reached {xs[n_top]:.3g} req/s with a median batch stage of "
                f"{_ms(bt.get('duration_median_s'))} and a median response of {_ms(b['by_n'][str(n_top)]['response_median_s'])}: "
                "the rest lies outside the served call (the N client threads, the serving loop, the spans and their "
                "export share one interpreter lock with the model's launches). Past N = max batch the batch size is capped and "
                "the queue stage grows.")
    if nb:
        xs = _x_medians(nb)
        stage = [v["batch"]["duration_median_s"] for v in nb["by_n"].values() if v.get("batch")]
        if xs and stage:
            out.append(
                f"- No batching: X stays between {min(xs.values()):.3g} and {max(xs.values()):.3g} req/s for every N "
                f"(1 / the batch stage's median {_ms(statistics.median(stage))} = {1 / statistics.median(stage):.3g}/s) "
                "and the response time grows like N times the service time, in the queue stage. The USL fit "
                "says so with sigma at its upper bound 1 (fully serial) and a low R² (X is flat: nothing to explain "
                "but scatter); its kappa and peak mean nothing here.")
    spread = [(max(v["x_runs"]) / min(v["x_runs"]), int(n), sw["label"]) for sw in (b, nb) if sw
              for n, v in sw["by_n"].items() if len(v["x_runs"]) > 1 and min(v["x_runs"]) > 0]
    if spread:
        worst = max(spread)
        out.append(f"- Runs of one N scatter: the largest max/min ratio of X over the runs of one N is {worst[0]:.2f} "
                   f"({worst[2].replace('_', ' ')}, N = {worst[1]}); the repeats and the lack-of-fit test carry that "
                   "scatter into the fit's intervals, so read those rather than the point estimates.")
    flushes = [f for v in (b, nb) if v for f in v.get("settle_flush_s", [])]
    if flushes:
        out.append(f"- `--settle`: the flush before each run took {min(flushes):.2f} to {max(flushes):.2f} s (median "
                   f"{statistics.median(flushes):.2f} s): the export kept up with the load, no run inherited a "
                   "backlog worth the name.")
    op = result.get("open")
    if op and "open_loop" in op:
        pts = op["open_loop"]["points"]
        late_ok = [p for p in pts if p["late"] and p["achieved"] is not None and
                   p["achieved"] >= 0.95 * min(p["offered_realised"], p["offered_sent"])]
        if late_ok:
            rates = sorted({f"{p['value']:g}/s" for p in late_ok})
            lat = max(p["lateness_s"]["p95"] or 0 for p in late_ok)
            out.append(
                f"- Open loop: {len(late_ok)} run(s) at {', '.join(rates)} achieved within 5 % of the load sent but were "
                f"late (the generator's p95 lateness up to {_ms(lat)}, more than the mean gap between arrivals at "
                "those rates): one Python process cannot keep a Poisson schedule of a few hundred arrivals per second "
                "to the millisecond while it also runs the clients' threads, the loop, the model's launches and the "
                "export. The verdict does not count such a run as sustained (the load offered was not the rate); "
                "`highest_sustained` is therefore a lower bound set by the instrument, and the capacity lies "
                "between it and the achieved plateau at the highest rates. To go further, send from another "
                "process and profile the stored traces (`--profile`).")
    return out


def markdown(result: dict[str, Any], pytest_line: str = "", command: str = COMMAND,
             write_cmd: str = "", also: Sequence[dict[str, Any]] = ()) -> str:
    m, mod, st = result["machine"], result["model"], result["settings"]
    lines = [f"## {SECTION}", "",
             f"Command (on the GPU machine, through the device tool): `{command}`" +
             (f", then here `{write_cmd}`" if write_cmd else "") + ".", "",
             f"Machine: {m['card']}" + (f" ({m['memory_gib']} GiB)" if "memory_gib" in m else "") +
             f", {m['cpu_count']} CPU cores, Python {m['python']}, torch {m['torch']} (CUDA {m['cuda']}), "
             f"transformers {m['transformers']}, {m['date']}; whole run {result.get('elapsed_s', 0):.0f} s.", "",
             f"Model: random-initialised Llama, hidden {mod['hidden']}, {mod['layers']} layers, {mod['dtype']}, "
             f"{mod['parameters'] / 1e6:.0f} M parameters, served by `TorchExecutor.run` (its own tracing on) "
             f"behind a `ServingLoop` with one worker; every client request is a {mod['prompt_tokens']}-token prompt, "
             f"{mod['new_tokens']} new tokens (prefill only when 0). Closed loop: N in {st['values']}, "
             f"{st['repeats']} runs per N (interleaved), {st['window']} s window per run after {st['warmup']} "
             f"warm-up request(s) per client; X is the window count (completions in the clients' common window)" +
             ("; `--settle`: every run starts with `session.force_flush()` while its clients wait at their first "
              "warm-up call, so the previous run's spans are exported with no load on and no run is measured on "
              "another's export backlog." if st.get("settle") else ".")]
    if pytest_line:
        lines += ["", f"CUDA tests on the GPU machine: `python3 -m pytest -q tests/executors/torch -k "
                      f"\"cuda or intervene\" -p no:cacheprovider`: {pytest_line}"]
    if result.get("service"):
        lines += ["", "Served callable alone (one `run` of B identical prompts, CUDA synced around it):", "",
                  "| batch B | median | min | items/s |", "|---|---|---|---|"]
        for r in result["service"]:
            lines.append(f"| {r['batch']} | {_ms(r['median_s'])} | {_ms(r['min_s'])} | {r['items_per_s']:.4g} |")
    b, nb = result.get("batching"), result.get("no_batching")
    if b or nb:
        bl = f"batches up to {st['max_batch']}, wait {st['max_wait_ms']:g} ms"
        lines += ["", "### Closed loop: X(N), median over runs [min, max]", "",
                  f"| N | X, {bl} | response p50 | queue p50 | batch size p50 | X, no batching | response p50 |",
                  "|---|---|---|---|---|---|---|"]

        def cell(v: dict[str, Any] | None) -> tuple[str, str, str, str]:
            if not v:
                return "", "", "", ""
            xs = v["x_runs"]
            x = f"{v['x_median']:.4g} [{min(xs):.4g}, {max(xs):.4g}]" if xs else "unavailable"
            bs = "" if not v.get("batch") or v["batch"]["batch_size_median"] is None else f"{v['batch']['batch_size_median']:g}"
            return x, _ms(v["response_median_s"]), _ms(v["queue_median_s"]), bs
        for n in st["values"]:
            bx = cell(b["by_n"].get(str(n)) if b else None)
            nx = cell(nb["by_n"].get(str(n)) if nb else None)
            lines.append(f"| {n} | {bx[0]} | {bx[1]} | {bx[2]} | {bx[3]} | {nx[0]} | {nx[1]} |")
        lines += ["", "USL fit of the request throughput (estimate [95 % bootstrap interval]):", ""]
        if b:
            lines += fit_lines(f"batching ({b['wall_s']:.0f} s, {b['traces']} traces)", b["fit"])
        if nb:
            lines += fit_lines(f"no batching ({nb['wall_s']:.0f} s, {nb['traces']} traces)", nb["fit"])
        probs = [f"{v['label']}: {p}" for v in (b, nb) if v for p in v["problems"] + v["notes"]]
        if probs:
            lines += ["", "Problems and notes the sweeps reported:", ""] + [f"- {p}" for p in probs[:12]]
            if len(probs) > 12:
                lines.append(f"- ... and {len(probs) - 12} more (in the JSON)")
    op = result.get("open")
    if op and "skipped" in op:
        lines += ["", f"Open loop: not run ({op['skipped']})."]
    elif op:
        ol = op["open_loop"]
        lines += ["", "### Open loop against the batching loop", "",
                  f"Rates: fractions {op['rate_fractions']} of the closed-loop capacity {op['capacity_closed_loop']:.4g}/s "
                  f"(largest median X(N) above); Poisson arrivals (seed 0), {op['window_s']:g} s windows after "
                  f"{op['warmup_s']:g} s of warm-up, {op['repeats']} runs per rate, at most {op['max_in_flight']} in "
                  f"flight, switch interval 0.5 ms; {op['wall_s']:.0f} s, {op['traces']} traces.", "",
                  "| offered | run | realised | achieved | p50 | p95 | p99 | queue p50 | lateness p95 | L | refused "
                  "| verdict |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in ol["points"]:
            verdict = "sustained" if p["sustained"] else ", ".join(
                w for w, on in (("late", p["late"]), ("saturated", p["saturated"]), ("failures", p["failed"] > 0)) if on)
            tags = [tag for key, tag in _REASON_TAGS if any(key in r for r in p["reasons"])]
            if tags and not p["sustained"]:
                verdict += " (" + ", ".join(tags) + ")"
            r, q, lt = p["response_s"], p["queue_wait_s"], p["lateness_s"]
            ll = p["littles_law_n"]["value"] if p["littles_law_n"] else None
            lines.append(
                f"| {p['value']:g}/s | {p['run']} | {_rate(p['offered_realised'])} | {_rate(p['achieved'])} | "
                f"{_ms(r['p50']['median'])} | {_ms(r['p95'])} | {_ms(r['p99'])} | "
                f"{'' if q is None else _ms(q['p50']['median'])} | {_ms(lt['p95'])} | "
                f"{'' if ll is None else f'{ll:.3g}'} | {p['dropped']} | {verdict} |")
        lines += ["", f"Highest rate sustained: {_rate(ol['highest_sustained']) or 'none'}; lowest saturated: "
                      f"{_rate(ol['lowest_saturated']) or 'none'}. USL on this axis: {ol['usl']['status']} (by design)."]
        reasons = [r for p in ol["points"] for r in p["reasons"]]
        if reasons:
            lines += ["", "Verdict reasons:", ""] + [f"- {r}" for r in reasons[:10]]
            if len(reasons) > 10:
                lines.append(f"- ... and {len(reasons) - 10} more (in the JSON)")
    for other in also:
        lines += ["", also_line(other)]
        s1, s2 = {r["batch"]: r for r in result.get("service", [])}, {r["batch"]: r for r in other.get("service", [])}
        if 1 in s1 and 1 in s2:
            lines += ["", f"The served callable alone at B = 1 took {_ms(s2[1]['median_s'])} there and "
                          f"{_ms(s1[1]['median_s'])} here: at this size the model is launch-bound, so its speed is the "
                          "host CPU's, and two machines of the same kind differ; compare X(N) within one call only."]
    bullets = reading(result)
    if bullets:
        lines += ["", "Reading the figures:", ""] + bullets
    return "\n".join(lines) + "\n"


__all__ = ["COMMAND", "SECTION", "also_line", "fit_lines", "markdown", "reading"]
