"""Results of tools/bench.py: the harness's summary parsed, ratios against the targets, markdown."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from leaky_tokens.assets.tools.bench_procs import Run

# Issue 7 section 6: ours / ceiling in the same run, (throughput at least, p99 at most).
TARGETS = "ShouldRateLimit rps >= 0.85x ceiling, p99 <= 1.2x; Consume rps >= 0.4x, p99 <= 2x"
RLS_TARGET = (0.85, 1.2)
CONSUME_TARGET = (0.4, 2.0)
SUMMARY = re.compile(
    r"^\s+(\w+)\s+(\w+)\s+(\d+)/\s*(\d+)/\s*(\d+)\s+([\d.]+)ms\s+([\d.]+)ms\s+\((\d+)"
)
# Frames every sample passes through (the event loop, the entry point): left out of the
# "total" column, which would otherwise name only them.
PLUMBING = re.compile(
    r"\((asyncio/|<frozen |threading\.py|selectors\.py"
    r"|leaky_tokens/runtime/process\.py|leaky_tokens/token/__main__\.py)"
)
RUN_LINE = re.compile(r"^(\w+)\s+ERL\s+run\d+ rps=([\d.]+) .*cores:erl=([\d.]+)")


@dataclass
class Row:
    """One (scenario, target) of the harness summary."""

    rps_min: float
    rps_med: float
    rps_max: float
    p50: float
    p99: float
    runs: int


@dataclass
class Report:
    """Everything one `make bench` measured."""

    machine: dict[str, str]
    load_before: str
    load_after: str = ""
    harness: str = ""  # rls-bench.sh's output
    ours_rls: dict[str, Run] = field(default_factory=dict)  # our CPU pass, per scenario
    consume: Run | None = None
    consume_ceiling: Run | None = None
    profiles: dict[str, str] = field(default_factory=dict)

    def rows(self) -> dict[tuple[str, str], Row]:
        """The harness summary: (scenario, ERL|target|ceiling) -> figures."""
        found = {}
        for line in self.harness.splitlines():
            if m := SUMMARY.match(line):
                low, mid, high, p50, p99 = (float(x) for x in m.groups()[2:7])
                found[(m[1], m[2])] = Row(low, mid, high, p50, p99, int(m[8]))
        return found

    def erl_cpu_us(self) -> dict[str, float]:
        """ERL's CPU per decision by scenario (median over runs), from the harness's cores."""
        per: dict[str, list[float]] = {}
        for line in self.harness.splitlines():
            if m := RUN_LINE.match(line):
                per.setdefault(m[1], []).append(float(m[3]) / float(m[2]) * 1e6)
        return {s: statistics.median(v) for s, v in per.items()}

    def markdown(self) -> str:
        """The fragment docs/benchmarks.md records."""
        m = self.machine
        out = [
            f"### Run of {m['date']} (commit {m['commit']})",
            "",
            f"- Machine: {m['cpu']}, {m['os']}, Python {m['python']}",
            f"- Command: `{m['command']}`",
            f"- Load average (1/5/15 min) before: {self.load_before}; after: {self.load_after}",
            f"- Targets: {m['targets']}",
            "",
        ]
        if self.harness:
            out += self._rls()
            summary = self.harness[self.harness.find("# scenario") :].strip()
            out += ["rls-bench.sh summary, verbatim:", "", "```", summary, "```", ""]
        if self.consume and self.consume_ceiling:
            out += self._consume()
        for name, top in self.profiles.items():
            out += [f"py-spy, token service under {name}:", "", top, ""]
        return "\n".join(out) + "\n"

    def _rls(self) -> list[str]:
        rows, cpu = self.rows(), self.erl_cpu_us()
        out = [
            "ShouldRateLimit (rls-bench.sh --also <token service> --ceiling; rps min/median/max, "
            "median p50 / p99 in ms; CPU per decision in µs):",
            "",
            "| scenario | ERL rps | ERL p50/p99 | ERL CPU | ceiling rps | ceiling p50/p99 "
            "| ours rps | ours p50/p99 | ours CPU | ours/ceiling rps, p99 | target |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in ("hot", "spread", "over"):
            erl, ceil, ours = (rows.get((s, n)) for n in ("ERL", "ceiling", "target"))
            if not (erl and ceil and ours):
                continue
            mine = self.ours_rls.get(s)
            ratio = (ours.rps_med / ceil.rps_med, ours.p99 / ceil.p99)
            out.append(
                f"| {s} | {_rps(erl)} | {erl.p50:.1f} / {erl.p99:.1f} | {cpu.get(s, 0):.0f} "
                f"| {_rps(ceil)} | {ceil.p50:.1f} / {ceil.p99:.1f} | {_rps(ours)} "
                f"| {ours.p50:.1f} / {ours.p99:.1f} | {mine.cpu_us if mine else 0:.0f} "
                f"| {ratio[0]:.2f}, {ratio[1]:.2f} | {_verdict(ratio, RLS_TARGET)} |"
            )
        out.append("")
        if self.ours_rls:
            out += [
                "Our CPU pass (ghz alone against the token service, same -c/-z): "
                + "; ".join(
                    f"{s} {r.rps:.0f} rps, p99 {r.p99:.1f} ms, {r.cpu_us:.0f} µs CPU/decision"
                    f"{', errors: ' + r.error_kinds if r.errors else ''}"
                    for s, r in self.ours_rls.items()
                ),
                "",
            ]
        return out

    def _consume(self) -> list[str]:
        ours, ceil = self.consume, self.consume_ceiling
        assert ours is not None
        assert ceil is not None
        ratio = (ours.rps / ceil.rps, ours.p99 / ceil.p99)
        errors = f" ({ours.errors} errors: {ours.error_kinds})" if ours.errors else ""
        return [
            "Consume (ghz, JWT from the auth service, provider stub at zero latency, real Redis) "
            "against the ceiling's ShouldRateLimit hot, interleaved; medians:",
            "",
            "| call | rps | p50 / p99 ms | CPU per decision µs | requests |",
            "|---|---|---|---|---|",
            f"| Consume (ours) | {ours.rps:.0f} | {ours.p50:.1f} / {ours.p99:.1f} "
            f"| {ours.cpu_us:.0f} (token service only) | {ours.count}{errors} |",
            f"| ceiling | {ceil.rps:.0f} | {ceil.p50:.1f} / {ceil.p99:.1f} | {ceil.cpu_us:.0f} "
            f"| {ceil.count} |",
            "",
            f"Consume/ceiling: rps {ratio[0]:.2f}, p99 {ratio[1]:.2f}: "
            f"{_verdict(ratio, CONSUME_TARGET)}.",
            "",
        ]


def _rps(row: Row) -> str:
    return f"{row.rps_min:.0f} / {row.rps_med:.0f} / {row.rps_max:.0f}"


def _verdict(ratio: tuple[float, float], target: tuple[float, float]) -> str:
    misses = []
    if ratio[0] < target[0]:
        misses.append(f"rps < {target[0]}x")
    if ratio[1] > target[1]:
        misses.append(f"p99 > {target[1]}x")
    return "met" if not misses else "not yet met (" + ", ".join(misses) + ")"


def profile(raw: Path, top: int = 10) -> str:
    """The `top` frames of a py-spy raw (collapsed) profile, by own and by total samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            if not PLUMBING.search(_short(frame)):
                total[frame] += n
    rows = [
        "| # | own % | frame (own samples) | total % | frame (inclusive, event loop left out) |",
        "|---|---|---|---|---|",
    ]
    for i, ((o, on), (t, tn)) in enumerate(
        zip(own.most_common(top), total.most_common(top), strict=False), 1
    ):
        rows.append(
            f"| {i} | {100 * on / samples:.1f} | `{_short(o)}` | {100 * tn / samples:.1f} "
            f"| `{_short(t)}` |"
        )
    return f"{samples} samples\n\n" + "\n".join(rows)


def _short(frame: str) -> str:
    """`function (path/to/site-packages/pkg/mod.py:12)` -> `function (pkg/mod.py:12)`."""
    return re.sub(r"\(.*?(?:site-packages|services|lib/python3\.\d+)/", "(", frame)
