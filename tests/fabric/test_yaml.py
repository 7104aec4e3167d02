"""YAML 1.2 pins, caps and the loader's refusals."""

from __future__ import annotations

import resource
import time

import pytest

from treadle.fabric.yamlload import DELETE, Append, Limits, Replace, YamlProblem, load_yaml


def load(text: str, **limits: int):
    return load_yaml(text.encode(), Limits(**limits))[0]


def test_yaml_1_2_scalars_are_read_as_pinned():
    doc = load(
        "c: 1.10\nd: 22:22\ne: 0644\ng: 0o644\nh: 2024-01-02\ni: 0x1F\nj: -12\nk: .5\nl: 1e3\nm: ~\nn:\n"
    )
    assert doc == {
        "c": 1.1,
        "d": "22:22",
        "e": 644,
        "g": 420,
        "h": "2024-01-02",
        "i": 31,
        "j": -12,
        "k": 0.5,
        "l": 1000.0,
        "m": None,
        "n": None,
    }


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("false", False),
        ("False", False),
        ("FALSE", False),
        ("tRUE", "tRUE"),
        ("0X1F", "0X1F"),
        ("+0x1F", "+0x1F"),
        ("0o8", "0o8"),
        ("1.2.3", "1.2.3"),
        ("Null", None),
        ("nULL", "nULL"),
        ("-.inf", float("-inf")),
        (".Inf", float("inf")),
        ("+12", 12),
        ("'yes'", "yes"),
        ('"no"', "no"),
        ("! 12", "12"),
        ("! true", "true"),
        ("!!str 12", "12"),
        ("!!int 12", 12),
        ("!!bool TRUE", True),
        ("!!null ''", None),
        ("!!float 1", 1.0),
        ("key is text", "key is text"),
    ],
)
def test_scalars_follow_the_yaml_1_2_core_schema_exactly(text, value):
    assert load(f"v: {text}\n") == {"v": value}


@pytest.mark.parametrize(
    ("text", "code", "col", "words"),
    [
        ("flags: 0b101", "yaml-1.1-number", 8, "'0b101' is a YAML 1.1 number"),
        ("count: 1_000", "yaml-1.1-number", 8, "'1_000' is a YAML 1.1 number"),
        ("n: " + "9" * 5000, "yaml", 4, "has 5000 characters, more than 20"),
        ("n: 18446744073709551616", "yaml", 4, "does not fit in 64 bits"),
        ("a: !!bool yes", "yaml", 4, "'yes' is not a valid bool in YAML 1.2"),
        ("!!bool kind: Node", "yaml", 1, "'kind' is not a valid bool"),
        ("a: !!int 1_000", "yaml", 4, "not a valid int"),
        ("a: !!float x", "yaml", 4, "not a valid float"),
        ("a: !!null 0", "yaml", 4, "not a valid null"),
        ("key: &an:chor value", "yaml", None, "anchor names here are letters, digits, - and _"),
        ("a: &x 1\nb: *x:y", "yaml", None, "anchor names here"),
        ("a: *nothing", "yaml", 4, "alias *nothing refers to no anchor"),
        ("a: 1\n---\nb: 2", "yaml", 1, "more than one YAML document"),
        ("a: !!map [1]", "yaml", 4, "unknown tag tag:yaml.org,2002:map"),
        ("a: !!set {x}", "yaml", 4, "unknown tag tag:yaml.org,2002:set"),
    ],
)
def test_values_yaml_1_2_would_misread_are_refused_located(text, code, col, words):
    with pytest.raises(YamlProblem) as e:
        load(text + "\n")
    p = e.value.problem
    assert p.code == code and words in p.message
    assert p.line >= 1 and (col is None or p.col == col)


@pytest.mark.parametrize(
    "word", ["yes", "no", "on", "off", "y", "n", "Yes", "NO", "On", "OFF", "Y", "N", "yEs"]
)
def test_unquoted_yaml_1_1_boolean_words_are_refused_with_the_hint(word):
    with pytest.raises(YamlProblem) as e:
        load(f"ssh:\n  password_authentication: {word}\n")
    p = e.value.problem
    assert (p.code, p.line, p.col) == ("truthy", 2, 28)
    assert p.hint == "quote it, or write true/false"
    assert load(f"ssh:\n  password_authentication: '{word}'\n") == {
        "ssh": {"password_authentication": word}
    }


def test_yaml_1_1_boolean_words_in_lists_are_refused_and_as_keys_are_text():
    with pytest.raises(YamlProblem) as e:
        load("a:\n  - x\n  - off\n")
    assert (e.value.problem.code, e.value.problem.line) == ("truthy", 3)
    assert load("on: 1\ny: 2\n") == {"on": 1, "y": 2}


def test_a_yaml_1_1_directive_does_not_bring_back_1_1_rules():
    assert load("%YAML 1.1\n---\na: 'no'\nb: 0644\n") == {"a": "no", "b": 644}
    with pytest.raises(YamlProblem) as e:
        load("%YAML 1.1\n---\na: no\n")
    assert e.value.problem.code == "truthy"


@pytest.mark.parametrize("depth", [65, 300, 5000, 100_000])
def test_deep_nesting_is_refused_located_without_recursion(depth):
    for text in (
        "a: " + "[" * depth + "]" * depth,
        "a:\n" + "".join("  " * i + "- \n" for i in range(min(depth, 2000))),
    ):
        if text.startswith("a:\n") and depth > 2000:
            continue
        with pytest.raises(YamlProblem) as e:
            load(text + "\n")
        assert e.value.problem.code == "too-deep" and e.value.problem.line >= 1


def test_nesting_deepened_by_aliases_is_refused():
    text = "a: &a " + "[" * 40 + "]" * 40 + "\nb: &b " + "[" * 30 + "*a" + "]" * 30 + "\n"
    with pytest.raises(YamlProblem) as e:
        load(text)
    assert e.value.problem.code == "too-deep" and e.value.problem.line == 2


def test_nesting_up_to_the_limit_loads():
    doc = load("a: " + "[" * 63 + "]" * 63 + "\n")
    for _ in range(63):
        doc = doc["a"] if isinstance(doc, dict) else doc[0]
    assert doc == []


@pytest.mark.parametrize(
    ("data", "line", "col"),
    [
        (b"a: 1\n" * 16 + b"b: \x00\n", 17, 4),
        (b"a: 1\nb: x\x07y\n", 2, 5),
        (b"a: 1\nb: \xff\n", 2, 4),
        (b"a: 1\nb: \xc2\x85\xc2\x80\n", 2, 4),
        (b"a: \xe2\x80\xa8\nb: x\n", 1, 4),
    ],
)
def test_control_characters_and_bad_bytes_are_located_at_their_line(data, line, col):
    with pytest.raises(YamlProblem) as e:
        load_yaml(data, Limits())
    assert (e.value.problem.line, e.value.problem.col) == (line, col)


def test_an_oversized_file_is_a_whole_file_problem_at_line_1():
    with pytest.raises(YamlProblem) as e:
        load("a: " + "x" * 2000 + "\n", max_file_bytes=1024)
    assert (e.value.problem.code, e.value.problem.line, e.value.problem.col) == ("too-large", 1, 1)


def test_merge_tags_load_as_markers():
    doc, tagged = load_yaml(b"a: !append [1]\nb: !delete\nc: !replace {x: 1}\n", Limits())
    assert tagged
    assert type(doc["a"]) is Append and doc["a"] == [1]
    assert doc["b"] is DELETE
    assert type(doc["c"]) is Replace and doc["c"] == {"x": 1}


def test_files_without_tags_are_flagged_untagged():
    assert load_yaml(b"a: [1]\n", Limits()) == ({"a": [1]}, False)


@pytest.mark.parametrize(
    ("text", "code", "line", "words"),
    [
        ("a: 1\nb: 2\na: 3\n", "duplicate-key", 3, "duplicate key 'a' (first at line 1)"),
        ("a: [1\n", "yaml", 2, "did not find expected"),
        ("a: !include x.yaml\n", "yaml", 1, "unknown tag !include"),
        ("a: !append 3\n", "yaml", 1, "!append takes a list"),
        ("a: !delete 3\n", "yaml", 1, "!delete takes no value"),
        ("<<: {a: 1}\n", "yaml", 1, "merge keys (<<) are not supported"),
    ],
)
def test_bad_yaml_is_refused_with_its_line(text, code, line, words):
    with pytest.raises(YamlProblem) as e:
        load(text)
    assert (e.value.problem.code, e.value.problem.line) == (code, line)
    assert words in e.value.problem.message


def test_an_alias_bomb_is_refused_fast_with_bounded_memory():
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = "\n".join(levels) + "\n"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(YamlProblem) as e:
        load(bomb)
    assert e.value.problem.code == "aliases"
    assert (
        time.monotonic() - started < 5
    )  # a bound that catches expansion (minutes), not a timing assertion
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100 * 1024  # KiB


def test_more_aliases_than_the_cap_are_refused():
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * 5) + "]\n"
    with pytest.raises(YamlProblem) as e:
        load(text, max_aliases=4)
    assert e.value.problem.code == "aliases"
    assert load(text, max_aliases=5)["b"] == [1] * 5


def test_a_recursive_alias_is_refused():
    with pytest.raises(YamlProblem) as e:
        load("a: &a [*a]\n")
    assert e.value.problem.code == "aliases"


def test_an_oversized_file_is_refused_before_parsing():
    with pytest.raises(YamlProblem) as e:
        load_yaml(b"a: " + b"x" * 2048 + b"\n", Limits(max_file_bytes=1024))
    assert e.value.problem.code == "too-large"
    assert "limits.max_file_bytes 1024" in e.value.problem.message


def test_non_utf8_bytes_are_refused_with_the_line():
    with pytest.raises(YamlProblem) as e:
        load_yaml(b"a: 1\nb: \xff\n", Limits())
    assert (e.value.problem.line, e.value.problem.code) == (2, "yaml")


@pytest.mark.parametrize("key", ["22", "true", "null", "1.5"])
def test_map_keys_that_are_not_text_are_refused_with_a_quoting_hint(key):
    with pytest.raises(YamlProblem) as e:
        load(f"data:\n  {key}: x\n")
    assert (e.value.problem.line, e.value.problem.col) == (2, 3)
    assert e.value.problem.hint.startswith(f'quote it: "{key}":')


def test_a_file_without_aliases_is_never_an_alias_bomb_whatever_its_shape():
    text = (
        "{" + ",".join(f"k{i}" for i in range(225)) + "}\n"
    )  # null values: more values than bytes
    assert len(text) < 1024 and len(load(text, max_file_bytes=1024)) == 225
