"""Contract tests: stable top-level fields, validation errors naming the offender, exact JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

import vauban_trace.contract as c
from vauban_trace.contract._schema import schema_text

TID = "0123456789abcdef0123456789abcdef"
DIGEST = "sha256:" + "ab" * 32


def _trace(**overrides: object) -> c.Trace:
    root = c.TraceSpan(id="1111111111111111", name="text_completion tiny", status="ok")
    fwd = c.TraceSpan(
        id="2222222222222222",
        name="forward",
        stage="forward",
        parent_id=root.id,
        start_unix_nano=10,
        end_unix_nano=2_000_010,
        profile=c.StageProfile(
            name="forward",
            duration_s=0.002,
            device=c.Device("cpu", "cpu"),
            token_count=5,
            input_bytes=40,
            h2d_copies=None,
            provenance={"duration_s": "measured", "token_count": "derived", "input_bytes": "derived", "h2d_copies": "unavailable"},
        ),
        output_artifact_ids=("logits-1",),
    )
    art = c.TraceArtifact(
        id="logits-1",
        kind="logits",
        producer_span_id=fwd.id,
        shape=(1, 5, 32),
        dtype="float32",
        digest=DIGEST,
        uri="file:///tmp/x",
        media_type="application/vnd.safetensors",
        byte_size=700,
        summary={"mean": 0.1, "topk_ids": [3, 1]},
    )
    fields: dict[str, object] = dict(
        id=TID,
        request=c.TraceRequest(input_text="hi", requested_artifacts=("logits", "weight_snapshot"), collect_layers=(1,)),
        device=c.Device("cpu", "cpu"),
        capabilities=c.Capabilities(executor="torch", device_kinds=("cpu",), levels={"can_emit_logits": "full"}),
        spans=(root, fwd),
        artifacts=(art,),
        missing=(c.MissingArtifact(kind="weight_snapshot", reason="unsupported", detail="demo", span_id=root.id),),
        resource={"service.name": "svc"},
    )
    fields.update(overrides)
    return c.Trace(**fields)  # type: ignore[arg-type]


def test_top_level_fields_are_stable() -> None:
    assert list(_trace().to_dict()) == [
        "id", "schema_version", "request", "device", "capabilities", "spans", "artifacts",
        "missing", "complete", "problems", "resource", "metadata",
    ]


def test_json_round_trip_is_exact() -> None:
    t = _trace()
    assert c.validate_trace(t) is t
    again = c.Trace.from_json(t.to_json())
    assert again == t
    assert again.to_dict() == json.loads(t.to_json())
    assert c.Trace.from_json(again.to_json(indent=2)).to_json() == t.to_json()


def test_schema_accepts_valid_trace_and_rejects_unknown_kind() -> None:
    schema = c.trace_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    doc = _trace().to_dict()
    jsonschema.validate(doc, schema)
    doc["artifacts"][0]["kind"] = "banana"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_checked_in_schema_matches_generated() -> None:
    path = Path(c.__file__).with_name("trace.schema.json")
    assert path.read_text() == schema_text()


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (lambda: c.TraceArtifact(id="a", kind="banana", producer_span_id="s"), "'banana'"),
        (lambda: c.TraceRequest(), "input_text"),
        (lambda: c.TraceRequest(input_text="x", requested_artifacts=("logits", "logits")), "repeats 'logits'"),
        (lambda: c.TraceRequest(input_text="x", return_logprobs=True), "requires return_logits"),
        (lambda: c.TraceRequest(input_text="x", collect_layers=(-1,)), "collect_layers"),
        (lambda: c.StageProfile(name="decode", sync_points=-1), "'decode' sync_points"),
        (lambda: c.StageProfile(name="decode", token_count=3, provenance={"token_count": "unavailable"}), "token_count"),
        (lambda: c.StageProfile(name="decode", provenance={"bogus": "measured"}), "'bogus'"),
        (lambda: c.Capabilities(executor="x", levels={"can_fly": "full"}), "'can_fly'"),
        (lambda: c.Capabilities(executor="x", levels={"can_emit_logits": "mostly"}), "'mostly'"),
        (lambda: c.MissingArtifact(kind="logits", reason="lazy"), "'lazy'"),
        (lambda: c.TraceArtifact(id="a", kind="logits", producer_span_id="s", digest="md5:00"), "md5"),
        (lambda: c.Trace(id=TID, schema_version="2.0"), "2.0"),
    ],
)
def test_invalid_records_name_the_problem(build: object, needle: str) -> None:
    with pytest.raises(c.ContractError) as info:
        build()  # type: ignore[operator]
    assert needle in str(info.value)


def test_graph_rules_name_offending_ids() -> None:
    t = _trace()
    bad_producer = c.TraceArtifact(id="x1", kind="metric", producer_span_id="nope")
    problems = c.trace_problems(_trace(artifacts=(*t.artifacts, bad_producer)))
    assert any("'x1'" in p and "'nope'" in p for p in problems)

    dup = _trace(spans=(*t.spans, t.spans[1]))
    assert any("'2222222222222222' is used by 2" in p for p in c.trace_problems(dup))

    ghost_output = c.TraceSpan(id="3333333333333333", name="x", output_artifact_ids=("ghost",))
    problems = c.trace_problems(_trace(spans=(*t.spans, ghost_output)))
    assert any("'ghost'" in p for p in problems)

    no_outputs = c.TraceSpan(id=t.spans[1].id, name="forward", parent_id=t.spans[0].id)
    problems = c.trace_problems(_trace(spans=(t.spans[0], no_outputs)))
    assert any("not among its outputs" in p for p in problems)

    orphan = c.TraceSpan(id="4444444444444444", name="x", parent_id="9999999999999999")
    assert any("parent" in p for p in c.trace_problems(_trace(spans=(*t.spans, orphan))))
    assert c.trace_problems(_trace(spans=(*t.spans, orphan), complete=False)) == []

    with pytest.raises(c.ContractError, match="'x1'"):
        c.validate_trace(_trace(artifacts=(*t.artifacts, bad_producer)))


def test_capabilities_map_to_artifact_kinds() -> None:
    caps = c.Capabilities(executor="torch", levels={"can_emit_logits": "full", "can_emit_activations": "partial"})
    assert caps.support_for("logits") is c.SupportLevel.FULL
    assert caps.support_for(c.ArtifactKind.ACTIVATION) is c.SupportLevel.PARTIAL
    assert caps.support_for("weight_snapshot") is c.SupportLevel.UNSUPPORTED
    assert caps.support_for("metric") is c.SupportLevel.FULL
    assert set(caps.to_dict()["levels"]) == set(c.CAPABILITY_NAMES)


def test_counter_provenance_is_explicit() -> None:
    p = c.StageProfile(name="x", token_count=3, sync_points=None, provenance={"sync_points": "unavailable"})
    assert p.provenance_of("sync_points") is c.Provenance.UNAVAILABLE
    assert p.provenance_of("token_count") is c.Provenance.DECLARED
    assert p.provenance_of("h2d_bytes") is c.Provenance.UNAVAILABLE
