"""Every spelling of a refused built-in in tests/data/rego_spellings.yaml is refused with
file:line, and every innocent look-alike there is accepted (real regopy, real plan)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from acgs.adapters.rego_source import check_policy
from acgs.errors import UnsupportedBuiltin

CORPUS = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "data" / "rego_spellings.yaml").read_text("utf-8"))
HEADER = "package acgs.spelling\n\nimport rego.v1\n\n"
HEADER_LINES = HEADER.count("\n")


def modules(case: dict[str, Any]) -> dict[str, str]:
    return {"s.rego": HEADER + case["rego"], **case.get("extra", {})}


@pytest.mark.parametrize("case", CORPUS["refused"], ids=lambda c: c["name"])
def test_every_spelling_of_a_refused_builtin_is_refused(case: dict[str, Any]) -> None:
    if case.get("unplannable"):
        with pytest.raises(UnsupportedBuiltin, match=r"^the engine cannot write out what "
                                                     r"this policy calls \(.+\), so it is refused"):
            check_policy(modules(case))
        return
    line = HEADER_LINES + case["line"]
    shown = case["builtin"]
    with pytest.raises(UnsupportedBuiltin, match=rf"^s\.rego:{line}:\d+: call to "
                                                 rf"{shown.replace('.', '[.]')}\(\)"):
        check_policy(modules(case))


@pytest.mark.parametrize("case", CORPUS["accepted"], ids=lambda c: c["name"])
def test_innocent_look_alikes_are_accepted(case: dict[str, Any]) -> None:
    check_policy(modules(case))


def test_the_corpus_covers_the_spellings_of_the_issue() -> None:
    spelled = {c["rego"].strip() for c in CORPUS["refused"]}
    for needed in ('x := opa["runtime"]().env', "x := opa .runtime()", "x := opa\n.runtime()",
                   'x := time["now_ns"]()', 'x := rand["intn"]("s", 9)'):
        assert needed in spelled
    assert len(CORPUS["refused"]) >= 30 and len(CORPUS["accepted"]) >= 10
