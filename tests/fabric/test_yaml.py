"""YAML 1.2 pins, caps and the loader's refusals."""

from __future__ import annotations

import resource
import time

import pytest

from treadle.fabric.yamlload import DELETE, Append, Limits, Replace, YamlProblem, load_yaml


def load(text: str, **limits: int):
    return load_yaml(text.encode(), Limits(**limits))[0]


def test_yaml_1_2_scalars_are_read_as_pinned():
    doc = load("a: no\nb: on\nc: 1.10\nd: 22:22\ne: 0644\nf: yes\ng: 0o644\nh: 2024-01-02\n")
    assert doc == {"a": "no", "b": "on", "c": 1.1, "d": "22:22", "e": 644, "f": "yes", "g": 420, "h": "2024-01-02"}


def test_a_yaml_1_1_directive_does_not_bring_back_1_1_rules():
    assert load("%YAML 1.1\n---\na: no\nb: 0644\n") == {"a": "no", "b": 644}


def test_merge_tags_load_as_markers():
    doc, tagged = load_yaml(b"a: !append [1]\nb: !delete\nc: !replace {x: 1}\n", Limits())
    assert tagged
    assert type(doc["a"]) is Append and doc["a"] == [1]
    assert doc["b"] is DELETE
    assert type(doc["c"]) is Replace and doc["c"] == {"x": 1}


def test_files_without_tags_are_flagged_untagged():
    assert load_yaml(b"a: [1]\n", Limits()) == ({"a": [1]}, False)


@pytest.mark.parametrize(("text", "code", "line", "words"), [
    ("a: 1\nb: 2\na: 3\n", "duplicate-key", 3, "duplicate key 'a' (first at line 1)"),
    ("a: [1\n", "yaml", 2, "did not find expected"),
    ("a: !include x.yaml\n", "yaml", 1, "unknown tag !include"),
    ("a: !append 3\n", "yaml", 1, "!append takes a list"),
    ("a: !delete 3\n", "yaml", 1, "!delete takes no value"),
    ("<<: {a: 1}\n", "yaml", 1, "merge keys (<<) are not supported"),
])
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
    assert time.monotonic() - started < 5  # a bound that catches expansion (minutes), not a timing assertion
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
