"""Metric names in PromQL, and whether a scrape exports them: the dashboard and alert checks.

`metric_names(expr)` finds every metric selector of an expression: bare names (`foo_total`,
`foo_bucket{le="1"}`) and `{__name__="..."}` / `{__name__=~"..."}` matchers, skipping
functions, aggregations, keywords, label names (in braces, `by (...)`, `on (...)`, ...),
strings, numbers, durations and Grafana's `$variables`. `Exported` holds the families of
one or more /metrics scrapes and answers for a selector by the series names Prometheus would
store: each sample's name as exposed, and for a family with no sample yet the names its type
implies (a counter `<name>_total`, a histogram `<name>_bucket`, `_sum` and `_count`, a gauge
its name), so `foo_bucket` of a counter `foo` is not exported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
     "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)  # fmt: skip
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = LABEL_LISTS | {"and", "or", "unless", "bool", "offset"}
NUMBERS = frozenset({"inf", "nan"})

TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)
  | (?P<number>(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)[a-zA-Z0-9]*)
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<matcher>=~|!~|!=|==|>=|<=)
  | (?P<punct>[(){}\[\],=<>+\-*/%^@])
    """,
    re.VERBOSE,
)


class PromqlError(ValueError):
    """An expression the extractor cannot read (so a check never passes by not looking)."""


@dataclass(frozen=True)
class Selector:
    """One metric selector: an exact name, or a `__name__` regex (`pattern`)."""

    name: str = ""
    pattern: str = ""

    def __str__(self) -> str:
        return self.name or f'{{__name__=~"{self.pattern}"}}'


def tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) of every token but spaces; PromqlError on a character PromQL has not."""
    found, at = [], 0
    while at < len(expr):
        match = TOKEN.match(expr, at)
        if match is None:
            raise PromqlError(f"cannot read {expr[at:]!r} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            found.append((kind, match.group()))
        at = match.end()
    return found


def _unquote(text: str) -> str:
    body = text[1:-1]
    return body if text[0] == "`" else re.sub(r"\\(.)", r"\1", body)


def metric_names(expr: str) -> list[Selector]:
    """Every metric selector of `expr`, in order (PromqlError if it has none or is unbalanced)."""
    toks = tokens(expr)
    found: list[Selector] = []
    depth = {"(": 0, "{": 0, "[": 0}
    closing = {")": "(", "}": "{", "]": "["}
    skip_list = False  # the next "(...)" is a list of label names
    in_label_list = 0  # nesting depth of such a list, while inside one
    for i, (kind, text) in enumerate(toks):
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "punct" and text in depth:
            if skip_list and text == "(":
                in_label_list = depth["("] + 1
                skip_list = False
            depth[text] += 1
            continue
        if kind == "punct" and text in closing:
            opener = closing[text]
            if depth[opener] == 0:
                raise PromqlError(f"unbalanced {text!r} in {expr!r}")
            if opener == "(" and in_label_list == depth["("]:
                in_label_list = 0
            depth[opener] -= 1
            continue
        if depth["["] or in_label_list:
            continue  # a range/subquery duration or a label list
        if depth["{"]:
            if kind == "name" and text == "__name__" and i + 2 < len(toks):
                op, (value_kind, value) = toks[i + 1][1], toks[i + 2]
                if value_kind == "string" and op == "=":
                    found.append(Selector(name=_unquote(value)))
                elif value_kind == "string" and op == "=~":
                    found.append(Selector(pattern=_unquote(value)))
                else:
                    raise PromqlError(f"__name__ {op} cannot be checked in {expr!r}")
            continue
        if kind != "name":
            continue
        if text in LABEL_LISTS:
            skip_list = nxt == "("
            continue
        if text in KEYWORDS or text in AGGREGATIONS or text.lower() in NUMBERS or nxt == "(":
            continue  # a keyword, an aggregation or a function call
        found.append(Selector(name=text))
    if any(depth.values()):
        raise PromqlError(f"unbalanced brackets in {expr!r}")
    if not found:
        raise PromqlError(f"no metric in {expr!r}")
    return found


SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


SAMPLE_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


@dataclass
class Exported:
    """The series names a set of scrapes export, by the family each belongs to."""

    families: dict[str, str] = field(default_factory=dict)  # family name -> type
    series: set[str] = field(default_factory=set)

    def add_text(self, text: str) -> None:
        """Add one /metrics scrape (Prometheus text format): each sample's name as exposed,
        which is what Prometheus stores (Envoy's counters have no _total, prometheus_client's
        do), and for a family with no sample yet the names its TYPE implies."""
        declared: dict[str, str] = {}
        sampled: set[str] = set()
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(maxsplit=3)
                declared[name] = kind.strip()
            elif line and not line.startswith("#"):
                match = SAMPLE_NAME.match(line)
                if match is None:
                    raise PromqlError(f"not a sample line: {line!r}")
                sampled.add(match.group())
        self.series |= sampled
        for name, kind in declared.items():
            self.families[name] = kind
            implied = {name + suffix for suffix in SUFFIXES.get(kind, ("",))}
            if kind == "counter" and name.endswith("_total"):  # prometheus_client >= 0.20
                implied = {name}
            if not implied & sampled and name not in sampled:
                self.series |= implied

    def add_family(self, name: str, kind: str) -> None:
        """Add one family by its name and type (as the scrape's TYPE line gives them)."""
        self.families[name] = kind
        for suffix in SUFFIXES.get(kind, ("",)):
            self.series.add(name + suffix)

    def has(self, selector: Selector) -> bool:
        """Whether a series the selector selects is exported."""
        if selector.name:
            return selector.name in self.series
        pattern = re.compile(selector.pattern)
        return any(pattern.fullmatch(name) for name in self.series)

    def missing(self, exprs: Iterable[str]) -> list[str]:
        """One line per selector of `exprs` no scrape exports ("name in expr")."""
        return [
            f"{selector} in {expr}"
            for expr in exprs
            for selector in metric_names(expr)
            if not self.has(selector)
        ]


def dashboard_exprs(path: Path) -> list[str]:
    """Every query of a Grafana dashboard (panels, rows' panels, templating queries)."""
    board: dict[str, Any] = json.loads(path.read_text())

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    exprs = [
        str(target["expr"])
        for panel in panels(board.get("panels", []))
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            exprs.append(str(query))
    return exprs


def rule_exprs(path: Path) -> list[str]:
    """Every `expr` of a Prometheus rules file (alerting and recording rules)."""
    rules: dict[str, Any] = yaml.safe_load(path.read_text())
    return [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]]
