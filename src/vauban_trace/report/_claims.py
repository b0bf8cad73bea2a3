"""Claims files, slot references, and the accepted/rejected verdict on each claim.

A claims file is JSON (schema in docs/report.md)::

    {"claims": [
      {"statement": "steering at layer 1 moves the next-token distribution",
       "strength": "distributional_diff", "cites": ["logits", "logprobs"]},
      {"statement": "the residual stream moves at layer 1", "strength": "activation_diagnostic",
       "cites": ["activation[1]", "intervention_result[1]"]}
    ]}

A bare list of claim objects is accepted too. Each claim object has the keys
``statement`` (non-empty text), ``strength`` (a :class:`ClaimStrength` word) and ``cites`` (a list
of non-empty strings; it may be empty, and the claim is then rejected as citing nothing), and
optionally ``test``: ``{"measure": REF, "outcome": "differs" | "does_not_differ"[, "margin": X > 0]}``
or ``{"measure": REF, "outcome": "equivalent", "margin": X > 0}`` (margin required: a TOST)
(a :class:`~vauban_trace.report.ClaimTest`, checked over a set of pairs against the report's
adjusted paired tests; see ``_family``).
:func:`load_claims` raises :class:`~vauban_trace._exceptions.ClaimsFileError` naming the file, the
entry (``claims[2]``, with its statement when it has one) and the key at fault for anything else:
not JSON, another top level, an entry that is not an object, a missing or unknown key, a value of
the wrong type, an unknown strength word, a ``test`` that is not such an object.

What a claim cites:

- an evidence item's ``ref`` (:func:`vauban_trace.report.evidence_of`): one artifact of one trace;
- a *slot reference*: an artifact kind, optionally with a layer in brackets (``logits``,
  ``activation[1]``, ``intervention_result[1]``). Against a pair's evidence it stands for every
  item of that kind (and layer) in the pair (:func:`expand_cites`). Over a set of pairs only slot
  references can be cited, and one is citable when every pair holds it
  (:func:`vauban_trace.report.aggregate_report`).

:func:`check_claim_list` gives a :class:`ClaimCheck` per claim: accepted, or rejected with the
problems :func:`vauban_trace.report.claim_problems` finds (slot references expanded first).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vauban_trace._exceptions import ClaimsFileError
from vauban_trace.contract import ArtifactKind
from vauban_trace.report._access import ClaimStrength
from vauban_trace.report._evidence import TEST_OUTCOMES, Claim, ClaimTest, Evidence, claim_problems

_SLOT_RE = re.compile(r"^([a-z_]+)(?:\[(\d+)\])?$")
_KEYS = ("statement", "strength", "cites")
_OPTIONAL = ("test",)
_TEST_KEYS = ("measure", "outcome", "margin")


@dataclass(frozen=True)
class ClaimCheck:
    """The verdict on one claim: accepted, or rejected with every problem found."""

    index: int
    claim: Claim
    problems: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, **self.claim.to_dict(), "accepted": self.accepted,
                "problems": list(self.problems)}


def slot_ref(kind: str, layer: int | None) -> str:
    """``kind`` or ``kind[layer]``."""
    return kind if layer is None else f"{kind}[{layer}]"


def parse_slot_ref(ref: str) -> tuple[str, int | None] | None:
    """(kind, layer) of a slot reference; None when ``ref`` is not one (layer None = any layer)."""
    m = _SLOT_RE.match(ref)
    if m is None or m.group(1) not in {str(k) for k in ArtifactKind}:
        return None
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def expand_cites(claim: Claim, evidence: Evidence) -> Claim:
    """``claim`` with every slot reference replaced by the matching item refs of ``evidence``;
    refs that are items already, and slot references that match nothing, are kept as they are."""
    known = {it.ref for it in evidence.items}
    out: list[str] = []
    for ref in claim.cites:
        slot = None if ref in known else parse_slot_ref(str(ref))
        matches = [] if slot is None else [
            it.ref for it in evidence.items if it.kind == slot[0] and (slot[1] is None or it.layer == slot[1])]
        out += matches or [ref]
    return Claim(claim.statement, claim.strength, tuple(dict.fromkeys(out)), claim.test)


def check_claim_list(claims: Iterable[Claim], evidence: Evidence) -> tuple[ClaimCheck, ...]:
    """A verdict per claim against one trace's or one pair's evidence (slot refs expanded)."""
    return tuple(ClaimCheck(n, c, tuple(claim_problems(expand_cites(c, evidence), evidence)))
                 for n, c in enumerate(claims))


# -- claims files -----------------------------------------------------------------------------------
def _entry(n: int, raw: Any) -> str:
    statement = raw.get("statement") if isinstance(raw, dict) else None
    return f"claims[{n}]" + (f" ({statement[:60]!r})" if isinstance(statement, str) and statement.strip() else "")


def _claim_of(n: int, raw: Any, where: str) -> Claim:
    name = f"{where}: {_entry(n, raw)}"
    if not isinstance(raw, dict):
        raise ClaimsFileError(f"{name}: must be an object with keys statement, strength, cites; "
                              f"got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_KEYS) - set(_OPTIONAL))
    if unknown:
        raise ClaimsFileError(f"{name}: unknown key {unknown[0]!r} (allowed: {', '.join(_KEYS + _OPTIONAL)})")
    for key in _KEYS:
        if key not in raw:
            raise ClaimsFileError(f"{name}: missing key {key!r}")
    statement, strength, cites = raw["statement"], raw["strength"], raw["cites"]
    if not isinstance(statement, str) or not statement.strip():
        raise ClaimsFileError(f"{name}: key 'statement' must be non-empty text, got {statement!r}")
    words = [str(s) for s in ClaimStrength]
    if not isinstance(strength, str) or strength not in words:
        raise ClaimsFileError(f"{name}: key 'strength': {strength!r} is not a claim strength "
                              f"({', '.join(words)})")
    if not isinstance(cites, list):
        raise ClaimsFileError(f"{name}: key 'cites' must be a list of evidence references, "
                              f"got {type(cites).__name__}")
    for i, ref in enumerate(cites):
        if not isinstance(ref, str) or not ref.strip():
            raise ClaimsFileError(f"{name}: key 'cites'[{i}] must be a non-empty string, got {ref!r}")
    return Claim(statement, strength, tuple(cites), None if "test" not in raw else _test_of(raw["test"], name))


def _test_of(raw: Any, name: str) -> ClaimTest:
    if not isinstance(raw, dict):
        raise ClaimsFileError(f"{name}: key 'test' must be an object with keys measure, outcome[, margin]; "
                              f"got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_TEST_KEYS))
    if unknown:
        raise ClaimsFileError(f"{name}: key 'test': unknown key {unknown[0]!r} (allowed: {', '.join(_TEST_KEYS)})")
    for key in _TEST_KEYS[:2]:
        if key not in raw:
            raise ClaimsFileError(f"{name}: key 'test': missing key {key!r}")
    measure, outcome, margin = raw["measure"], raw["outcome"], raw.get("margin")
    if not isinstance(measure, str) or not measure.strip():
        raise ClaimsFileError(f"{name}: key 'test': 'measure' must be a non-empty measure ref, got {measure!r}")
    if outcome not in TEST_OUTCOMES:
        raise ClaimsFileError(f"{name}: key 'test': 'outcome' must be one of {', '.join(TEST_OUTCOMES)}, "
                              f"got {outcome!r}")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)
                               or not 0 < margin < float("inf")):
        raise ClaimsFileError(f"{name}: key 'test': 'margin' must be a finite number > 0, got {margin!r}")
    if margin is not None and outcome == "differs":
        raise ClaimsFileError(f"{name}: key 'test': 'margin' applies to the outcomes does_not_differ and "
                              "equivalent only")
    if margin is None and outcome == "equivalent":
        raise ClaimsFileError(f"{name}: key 'test': the outcome equivalent needs a 'margin' (a finite number > 0)")
    return ClaimTest(measure, outcome, None if margin is None else float(margin))


def claims_from_json(doc: Any, where: str = "claims") -> tuple[Claim, ...]:
    """Claims from a parsed claims document (see the module docstring)."""
    if isinstance(doc, dict):
        extra = sorted(set(doc) - {"claims"})
        if extra:
            raise ClaimsFileError(f"{where}: unknown top-level key {extra[0]!r} (expected only 'claims')")
        if "claims" not in doc:
            raise ClaimsFileError(f"{where}: missing top-level key 'claims'")
        doc = doc["claims"]
        if not isinstance(doc, list):
            raise ClaimsFileError(f"{where}: key 'claims' must be a list of claim objects, got {type(doc).__name__}")
    elif not isinstance(doc, list):
        raise ClaimsFileError(f"{where}: expected an object {{\"claims\": [...]}} or a list of claims, "
                              f"got {type(doc).__name__}")
    return tuple(_claim_of(n, raw, where) for n, raw in enumerate(doc))


def load_claims(path: str | os.PathLike[str]) -> tuple[Claim, ...]:
    """Claims from a JSON claims file; :class:`ClaimsFileError` names the entry and key at fault."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClaimsFileError(f"{where}: cannot read the claims file: {exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClaimsFileError(f"{where}: not JSON: {exc}") from None
    return claims_from_json(doc, where)


def claims_to_json(claims: Sequence[Claim]) -> dict[str, Any]:
    """The claims-file document of ``claims`` (what :func:`claims_from_json` reads back)."""
    return {"claims": [c.to_dict() for c in claims]}


__all__ = ["ClaimCheck", "check_claim_list", "claims_from_json", "claims_to_json", "expand_cites",
           "load_claims", "parse_slot_ref", "slot_ref"]
