"""Every value of config/paper.yaml says where it comes from: a source in the paper or
`(unverified)`.

The convention (also stated at the top of config/paper.yaml):

- A *value* is a `key: value` line whose value is a scalar or an inline list / mapping (which may
  run over several lines); a `key:` line with nothing after it is a *block header*.
- A line's *comment* is its trailing comment (on any line of a multi-line value) together with the
  comment lines directly above it (no blank line between).
- A *marker* is `(unverified)` (the paper does not state the value) or a source in the paper: a
  section (`§4.2`), a table (`Table 8`, `supplementary Table 8`) or a supplementary section
  (`supplementary B.2`). Words alone ("the paper", "not in the paper", "FACTS.md") are not one.
- A value is marked when its own comment holds a marker, or when the comment of a block header
  above it holds `whole block` and a marker (then the marker speaks for every value of the block).
- An inline mapping has one comment for the line: entries with another provenance are named in it.
- Not checked: values that are `/path/to/` placeholders (the run refuses them until set), and the
  `reproduce` block (which table cells to compute, not a setting of the paper's experiments).

The checker reads the file as text (YAML loses comments) and refuses syntax it does not know (a
block sequence, a block scalar) rather than skip it; its list of values is checked against the
file's parsed YAML, so no line goes unseen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
import yaml

from alice.config import PLACEHOLDER_PREFIX, REPO_ROOT

PAPER_YAML = REPO_ROOT / "config" / "paper.yaml"
UNVERIFIED = "(unverified)"
SOURCE = re.compile(r"§\s*\d|\bTables?\s+\d+|\bsupplementary\s+[A-C]\.\d")
WHOLE_BLOCK = "whole block"
EXEMPT_BLOCKS = ("reproduce",)
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*):(?:\s+(?P<value>\S.*))?$")


def has_marker(comment: str) -> bool:
    return UNVERIFIED in comment or SOURCE.search(comment) is not None


@dataclass
class Line:
    path: tuple[str, ...]
    number: int
    value: str
    comment: str
    headers: list[tuple[tuple[str, ...], str]] = field(default_factory=list)  # enclosing (path, comment)


def split_comment(line: str) -> tuple[str, str]:
    """(code, comment) of one line: the comment starts at a `#` outside quotes that begins the line
    or follows whitespace."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def bracket_depth(code: str) -> int:
    depth, quote = 0, None
    for ch in code:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
    return depth


def parse_values(text: str) -> list[Line]:
    """Every value of a YAML text of block mappings (inline lists and mappings allowed) with its
    comment and the comments of its enclosing block headers. Raises ValueError on other syntax."""
    values: list[Line] = []
    stack: list[tuple[int, tuple[str, ...], str]] = []  # (indent, path, comment) of open headers
    above: list[str] = []  # the comment lines directly above the next line
    current: Line | None = None  # a value whose inline list / mapping is still open
    depth = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        code, comment = split_comment(raw)
        if current is not None:  # a continuation line of a multi-line value
            if comment:
                current.comment += " " + comment
            depth += bracket_depth(code)
            if depth <= 0:
                current, depth = None, 0
            continue
        if not code.strip():
            above = above + [comment] if comment else []  # a blank line ends a comment block
            continue
        match = KEY_LINE.match(code)
        if match is None:
            raise ValueError(f"line {number}: not a `key: value` or `key:` line: {raw.strip()!r}")
        indent, key, value = len(match["indent"]), match["key"], match["value"]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (stack[-1][1] if stack else ()) + (key,)
        own = " ".join(above + ([comment] if comment else []))
        above = []
        if value is None:
            stack.append((indent, path, own))
            continue
        if value[0] in "|>":
            raise ValueError(f"line {number}: block scalars are not supported: {raw.strip()!r}")
        line = Line(path, number, value, own, [(p, c) for _, p, c in stack])
        values.append(line)
        depth = bracket_depth(value)
        if depth > 0:
            current = line
    if current is not None:
        raise ValueError(f"line {current.number}: an inline list or mapping is never closed")
    return values


def is_marked(line: Line) -> bool:
    if has_marker(line.comment):
        return True
    return any(WHOLE_BLOCK in c and has_marker(c) for _, c in line.headers)


def is_exempt(line: Line) -> bool:
    return line.path[0] in EXEMPT_BLOCKS or line.value.startswith(PLACEHOLDER_PREFIX)


def unmarked(text: str) -> list[str]:
    """`line N: dotted.key` of every checked value that carries no marker."""
    return [f"line {v.number}: {'.'.join(v.path)}" for v in parse_values(text)
            if not is_exempt(v) and not is_marked(v)]


def yaml_leaves(data, path=()) -> set[tuple[str, ...]]:
    if isinstance(data, dict) and data:
        return set().union(*(yaml_leaves(v, path + (str(k),)) for k, v in data.items()))
    return {path}


# --- config/paper.yaml -------------------------------------------------------------------------

def test_every_paper_value_has_a_source_or_is_unverified():
    missing = unmarked(PAPER_YAML.read_text())
    assert not missing, ("values of config/paper.yaml without a source in the paper or "
                         f"'{UNVERIFIED}' (convention: top of the file): {missing}")


def test_the_checker_sees_every_value_of_paper_yaml():
    """The text parser's values are exactly the YAML's leaves (an inline mapping is one value)."""
    text = PAPER_YAML.read_text()
    parsed = {v.path for v in parse_values(text)}
    leaves = yaml_leaves(yaml.safe_load(text))
    assert all(any(leaf[:len(p)] == p for p in parsed) for leaf in leaves), \
        sorted(leaf for leaf in leaves if not any(leaf[:len(p)] == p for p in parsed))
    assert all(any(leaf[:len(p)] == p for leaf in leaves) for p in parsed)


def test_paper_yaml_states_the_defaults_paper_scale_relies_on():
    """The schema defaults that change a paper-scale result are written out (and so marked)."""
    data = yaml.safe_load(PAPER_YAML.read_text())
    for backbone in ("unetr", "swin_unetr", "nnformer"):
        assert {"sampling", "batch_dice", "sw_batch_size"} <= set(data["finetune"][backbone])
    for backbone in ("unetr", "swin_unetr"):
        assert "norm" in data["finetune"][backbone]


# --- the checker itself ------------------------------------------------------------------------

def test_a_value_without_a_marker_is_reported():
    text = ("finetune:\n"
            "  unetr:\n"
            "    crop: [96, 96, 96]\n"
            "    lr: 1.0e-4        # supplementary Table 8\n")
    assert unmarked(text) == ["line 3: finetune.unetr.crop"]


@pytest.mark.parametrize("comment", ["# the paper", "# not in the paper", "# FACTS.md", "# UNETR's",
                                     "# unverified", "# B.2"])
def test_words_that_name_no_place_in_the_paper_are_no_marker(comment):
    assert unmarked(f"a:\n  b: 1   {comment}\n") == ["line 2: a.b"]


@pytest.mark.parametrize("comment", ["# (unverified) MONAI's default", "# §4.2", "# paper § 3.2",
                                     "# supplementary Table 8", "# Table 10", "# supplementary B.2",
                                     "# paper, supplementary A.1"])
def test_markers(comment):
    assert unmarked(f"a:\n  b: 1   {comment}\n") == []


def test_a_comment_block_directly_above_marks_the_next_value_only():
    text = ("a:\n"
            "  # (unverified) chosen here\n"
            "  # on two lines\n"
            "  b: 1\n"
            "  c: 2\n"
            "  # §4.2\n"
            "\n"
            "  d: 3\n")
    assert unmarked(text) == ["line 5: a.c", "line 8: a.d"]  # a blank line detaches a comment


def test_a_header_covers_its_block_only_when_it_says_whole_block():
    text = ("a:   # whole block (unverified): the harness's own\n"
            "  b: 1\n"
            "  c:\n"
            "    d: 2\n"
            "e:   # supplementary Table 8\n"
            "  f: 3\n"
            "  g: 4   # supplementary Table 8\n")
    assert unmarked(text) == ["line 6: e.f"]


def test_a_multi_line_value_is_marked_on_any_of_its_lines():
    text = ("optim: {optimizer: adamw, lr: 1.0e-4,\n"
            "        iterations: 10}   # §4.2\n"
            "crop: [1,\n"
            "       2]\n"
            "next: 3   # (unverified)\n")
    assert unmarked(text) == ["line 3: crop"]


def test_placeholders_and_the_reproduce_block_are_not_checked():
    text = ("datasets:\n"
            "  btcv:\n"
            "    root: /path/to/BTCV   # PLACEHOLDER\n"
            "    folds: 5\n"
            "reproduce:\n"
            "  methods: [rand_init, alice]\n")
    assert unmarked(text) == ["line 4: datasets.btcv.folds"]


def test_a_hash_inside_quotes_is_no_comment():
    assert unmarked('a: "x # (unverified)"\n') == ["line 1: a"]


@pytest.mark.parametrize("text", ["a:\n  - 1   # (unverified)\n", "a: |   # (unverified)\n  x\n",
                                  "a: [1,   # (unverified)\n"])
def test_syntax_the_checker_does_not_know_fails_loudly(text):
    with pytest.raises(ValueError, match="line"):
        unmarked(text)
