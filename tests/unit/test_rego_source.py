"""Loading policies: manifest, revisions, entrypoints and the static checks (real regopy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from acgs.adapters.rego_source import (
    PolicyBundle,
    blank_literals,
    bundle_from_parts,
    check_modules,
    check_policy,
    load_policy_dir,
)
from acgs.errors import ConstitutionMismatch, PolicyError, UnsupportedBuiltin

HASH = "cdd01ef066bc6cf2"
MANIFEST = {"name": "t", "version": "1", "constitutional_hash": HASH,
            "decision": "acgs/constitution/decision"}
DECISION = """package acgs.constitution

import rego.v1

decision := {"effect": "ALLOW", "violations": []}
"""


def parts(extra: str = "", *, name: str = "extra.rego", data: str = "{}") -> PolicyBundle:
    modules = {"constitution.rego": DECISION}
    if extra:
        modules[name] = extra
    return bundle_from_parts(modules=modules, data_json=data, manifest=MANIFEST,
                             constitutional_hash=HASH)


def write_dir(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def test_loads_a_directory_with_nested_modules_and_data(tmp_path: Path) -> None:
    write_dir(tmp_path, {
        "manifest.json": json.dumps(MANIFEST),
        "constitution.rego": DECISION,
        "principles/p.rego": "package acgs.p\n\nimport rego.v1\n\nq := data.x\n",
        "data.json": '{"x": 1.0}',
    })
    bundle = load_policy_dir(tmp_path, constitutional_hash=HASH)
    assert [name for name, _ in bundle.modules] == ["constitution.rego", "principles/p.rego"]
    assert bundle.data_json == '{"x":1}'
    assert bundle.decision == "acgs/constitution/decision"
    assert {"acgs/constitution/decision", "acgs/p/q"} <= bundle.entrypoints
    assert len(bundle.revision) == 16 and int(bundle.revision, 16) >= 0
    assert len(bundle.data_revision) == 16


def test_data_json_is_optional(tmp_path: Path) -> None:
    write_dir(tmp_path, {"manifest.json": json.dumps(MANIFEST), "c.rego": DECISION})
    assert load_policy_dir(tmp_path, constitutional_hash=HASH).data_json == "{}"


def test_revisions_follow_content() -> None:
    base = parts()
    assert parts().revision == base.revision
    other_data = parts(data='{"a": 1}')
    assert other_data.revision != base.revision
    assert other_data.data_revision != base.data_revision
    other_module = parts("package acgs.x\n\ny := 1\n")
    assert other_module.revision != base.revision
    assert other_module.data_revision == base.data_revision


def test_hash_mismatch_is_refused() -> None:
    manifest = {**MANIFEST, "constitutional_hash": "0000000000000000"}
    with pytest.raises(ConstitutionMismatch, match="policy carries constitutional hash"):
        bundle_from_parts(modules={"c.rego": DECISION}, data_json="{}", manifest=manifest,
                          constitutional_hash=HASH)


@pytest.mark.parametrize("manifest", [
    {**MANIFEST, "decision": "acgs/constitution/nope"},
    {**MANIFEST, "decision": "data.acgs.constitution.decision"},
    {k: v for k, v in MANIFEST.items() if k != "version"},
    {**MANIFEST, "entrypoints": ["acgs/constitution/missing"]},
])
def test_bad_manifest_is_refused(manifest: dict[str, str]) -> None:
    with pytest.raises(PolicyError, match=r"manifest\.json"):
        bundle_from_parts(modules={"c.rego": DECISION}, data_json="{}", manifest=manifest,
                          constitutional_hash=HASH)


def test_missing_manifest_and_bad_data_are_policy_errors(tmp_path: Path) -> None:
    write_dir(tmp_path, {"c.rego": DECISION})
    with pytest.raises(PolicyError, match=r"manifest\.json"):
        load_policy_dir(tmp_path, constitutional_hash=HASH)
    with pytest.raises(PolicyError, match=r"data\.json"):
        parts(data="[1, 2]")


@pytest.mark.parametrize(("call", "why"), [
    ('http.send({"method": "get", "url": "http://x"})', "network"),
    ("opa.runtime()", "environment"),
    ('net.cidr_contains("10.0.0.0/8", "10.1.1.1")', "no such built-in"),
    ('strings.split_n("a,b", ",", 1)', "no such built-in"),
    ('print("x")', "output"),
    ("rego.metadata.rule()", "no such built-in"),
])
def test_unsupported_builtin_is_refused_with_file_line(call: str, why: str) -> None:
    source = f"package acgs.x\n\nimport rego.v1\n\ny := v if {{\n\tv := {call}\n}}\n"
    name = call.split("(")[0]
    with pytest.raises(UnsupportedBuiltin, match=rf"bad\.rego:6:7: call to {name}\(\).*{why}"):
        parts(source, name="bad.rego")


def test_user_functions_are_not_builtins() -> None:
    parts("package foo\n\nimport rego.v1\n\ncidr_contains(a, b) if a == b\n", name="foo.rego")
    caller = """package acgs.y

import rego.v1

import data.foo
import data.foo as bar
import data.foo.cidr_contains as cc

a if foo.cidr_contains(1, 1)
b if data.foo.cidr_contains(1, 1)
c if bar.cidr_contains(1, 1)
d if cc(1, 1)
e if local(1)
local(x) := x
"""
    check_policy({"foo.rego": "package foo\n\ncidr_contains(a, b) if a == b\n", "y.rego": caller})


def test_a_package_named_like_a_builtin_family_does_not_unlock_it() -> None:
    modules = {
        "foo.rego": "package foo\n\ncidr_contains(a, b) if a == b\n",
        "y.rego": (
            'package y\n\nimport rego.v1\n\np if net.cidr_contains("10.0.0.0/8", "10.0.0.1")\n'
        ),
    }
    with pytest.raises(UnsupportedBuiltin, match=r"y\.rego:5:6: call to net\.cidr_contains"):
        check_policy(modules)


def test_comments_and_strings_are_not_calls() -> None:
    source = (
        'package acgs.x\n\nimport rego.v1\n\n# http.send({"url": "x"})\n'
        'a := "opa.runtime() is refused"\nb := `http.send(raw)`\nc := "esc \\" opa.runtime()"\n'
    )
    parts(source)
    assert blank_literals('x := "ab" # c(\n') == 'x := "  " ' + ' ' * 4 + '\n'


def test_calls_inside_template_strings_are_checked() -> None:
    source = 'package acgs.x\n\nimport rego.v1\n\na := $"{count([1])} and {opa.runtime()}"\n'
    with pytest.raises(UnsupportedBuiltin, match=r"x\.rego:5:26: call to opa\.runtime"):
        parts(source, name="x.rego")


def test_syntax_error_names_file_and_line() -> None:
    source = "package acgs.x\n\nimport rego.v1\n\ny := 1 +\n"
    with pytest.raises(PolicyError, match=r"broken\.rego:5:8: "):
        parts(source, name="broken.rego")


def test_module_without_package_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"nopkg\.rego:1:1: the module declares no package"):
        parts("x := 1\n", name="nopkg.rego")


def test_entrypoints_are_rules_not_functions() -> None:
    source = """package acgs.x

import rego.v1

default allow := false
allow if input.ok
deny contains msg if { msg := "m" }
obj[k] := 1 if some k in ["a"]
a.b.c := 3
f(x) := x
test_one if f(1) == 1
v := 1 if {
	true
} else := 2
"""
    bundle = parts(source)
    got = {e for e in bundle.entrypoints if e.startswith("acgs/x/")}
    assert got == {"acgs/x/allow", "acgs/x/deny", "acgs/x/obj", "acgs/x/a", "acgs/x/a/b/c",
                   "acgs/x/test_one", "acgs/x/v"}
    assert bundle.tests == ("acgs/x/test_one",)


def test_refused_builtin_used_as_a_mock_is_refused() -> None:
    source = ("package acgs.x\n\nimport rego.v1\n\n"
              "p := v if { v := lower(\"A\") with lower as opa.runtime }\n")
    # The engine calls the mock where the mocked function is called: that is the place named.
    with pytest.raises(UnsupportedBuiltin, match=r"m\.rego:5:18: call to opa\.runtime"):
        parts(source, name="m.rego")


def test_function_with_string_key_head_is_callable() -> None:
    outline = check_modules({"t.rego": 'package t\n\nfoo["bar"](x) := x + 1\n\ny := foo.bar(2)\n'})
    assert "t.foo.bar" in outline.callables
    assert outline.entrypoints == {"t/y"}


def test_call_split_over_lines_is_still_a_call() -> None:
    # regopy reads `net.cidr_contains\n(...)` as a call, so must the check.
    source = ('package acgs.x\n\nimport rego.v1\n\n'
              'p := net.cidr_contains\n("10.0.0.0/8", "10.0.0.1")\n')
    with pytest.raises(UnsupportedBuiltin, match=r"n\.rego:5:6: call to net\.cidr_contains"):
        parts(source, name="n.rego")


def test_missing_builtin_used_as_a_mock_is_refused() -> None:
    source = ("package acgs.x\n\nimport rego.v1\n\nf(a, b) := true\n\n"
              "p if {\n\tf(1, 2) with f as net.cidr_contains\n}\n")
    with pytest.raises(UnsupportedBuiltin, match=r"w\.rego:8:2: call to net\.cidr_contains"):
        parts(source, name="w.rego")
    parts(source.replace("net.cidr_contains", "object.union"))  # a supported one is fine


@pytest.mark.parametrize("call", ["time.now_ns()", "rand.intn(\"k\", 10)", "uuid.rfc4122(\"k\")"])
def test_nondeterministic_builtins_are_refused(call: str) -> None:
    # The cache, replay and "never stale" need decisions that depend on input,
    # data and policy only; callers pass the time in the request's context.
    source = f"package acgs.x\n\nimport rego.v1\n\np := {call}\n"
    with pytest.raises(UnsupportedBuiltin, match=r"m\.rego:5:6: call to .* refused"):
        check_policy({"m.rego": source})


@pytest.mark.parametrize("comprehension", [
    '[v | some k, v in obj; k != "b"]',
    '{v | some k, v in obj; k != "b"}',
    '[v |\n\tsome k, v in obj\n\tk != "b"\n]',
])
def test_an_engine_limitation_is_named_with_its_rewrite(comprehension: str) -> None:
    # OPA accepts `some k, v in` in array and set comprehensions; regopy said only
    # "Invalid collection; Invalid collection", as if the policy were wrong.
    source = ('package acgs.x\n\nimport rego.v1\n\nobj := {"a": 1, "b": 2}\n\n'
              f"y := {comprehension}\n")
    with pytest.raises(PolicyError) as info:
        parts(source, name="lim.rego")
    message = str(info.value)
    assert message.startswith("lim.rego:7:6: `some k, v in obj` inside an array or set "
                              "comprehension is an engine limitation"), message
    assert "Rewrite it as `some k; v := obj[k]`" in message and "Invalid" not in message
    rewritten = source.replace("some k, v in obj", "some k; v := obj[k]")
    assert "acgs/x/y" in parts(rewritten, name="lim.rego").entrypoints  # the rewrite works


def test_other_parse_errors_keep_the_engine_message() -> None:
    with pytest.raises(PolicyError, match=r"^b\.rego:5:6: Invalid collection$"):
        parts("package acgs.x\n\nimport rego.v1\n\ny := [1, 2; 3]\n", name="b.rego")
