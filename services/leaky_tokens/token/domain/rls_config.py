"""envoyproxy/ratelimit's config files, read unchanged, and its descriptor matching rules."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from leaky_tokens.token.domain.yaml_nodes import PolicyError, Reader

_UINT32_MAX = 2**32 - 1
_RATE_LIMIT_KEYS = ("unit", "requests_per_unit", "unlimited", "name", "replaces")
_DESCRIPTOR_KEYS = (
    "key",
    "value",
    "rate_limit",
    "descriptors",
    "shadow_mode",
    "quota_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
)
TOKEN_BUCKET_KEY = "token_bucket"  # noqa: S105 (a YAML key, not a secret); our extension, accepted in the policy file only


class Unit(StrEnum):
    """The units envoyproxy/ratelimit accepts (upper-cased in the file, as it does)."""

    SECOND = "SECOND"
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    YEAR = "YEAR"


# envoyproxy/ratelimit's UnitToDivider: a month is 30 days and a year 365, epoch-aligned.
UNIT_SECONDS: Mapping[Unit, int] = MappingProxyType(
    {
        Unit.SECOND: 1,
        Unit.MINUTE: 60,
        Unit.HOUR: 3600,
        Unit.DAY: 86400,
        Unit.WEEK: 7 * 86400,
        Unit.MONTH: 30 * 86400,
        Unit.YEAR: 365 * 86400,
    }
)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One rule: `requests_per_unit` per `unit`, or unlimited; names for `replaces`.

    `token_bucket` (policy files only) names a provider: hits on this descriptor are LLM
    tokens charged to that provider's bucket of the subject in the descriptor's value.
    """

    full_key: str
    requests_per_unit: int = 0
    unit: Unit | None = None
    unlimited: bool = False
    name: str = ""
    replaces: tuple[str, ...] = ()
    shadow_mode: bool = False
    quota_mode: bool = False
    detailed_metric: bool = False
    token_bucket: str = ""


@dataclass(frozen=True, slots=True)
class DescriptorNode:
    """One level of the descriptor tree; children keyed "key" or "key_value" as upstream."""

    children: Mapping[str, DescriptorNode] = field(default_factory=dict)
    wildcards: tuple[tuple[str, tuple[str, ...]], ...] = ()
    limit: RateLimit | None = None
    share_threshold: bool = False
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class LimitMatch:
    """The rule a descriptor matched and the counter it hits (shared for share_threshold)."""

    limit: RateLimit
    counter_key: str
    metadata: Mapping[str, Any] | None = None


def wildcard_match(parts: Sequence[str], value: str) -> bool:
    """Whether `value` matches a pattern split on "*" (each * matches zero or more chars)."""
    if len(parts) == 1:
        return parts[0] == value
    if not value.startswith(parts[0]) or not value.endswith(parts[-1]):
        return False
    if len(value) < sum(len(p) for p in parts):
        return False
    rest = value[len(parts[0]) : len(value) - len(parts[-1])]
    for part in parts[1:-1]:
        at = rest.find(part)
        if at < 0:
            return False
        rest = rest[at + len(part) :]
    return True


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Descriptor trees by domain, with envoyproxy/ratelimit's lookup."""

    domains: Mapping[str, DescriptorNode] = field(default_factory=dict)

    def match(self, domain: str, entries: Sequence[tuple[str, str]]) -> LimitMatch | None:
        """The limit for one descriptor, or None.

        As upstream: at each level the key_value entry is tried first, then wildcard values in
        file order, then the key alone (any value); no backtracking; a limit applies only when
        it sits at the depth of the descriptor's last entry.
        """
        node = self.domains.get(domain)
        if node is None or not entries:
            return None
        found: RateLimit | None = None
        found_node: DescriptorNode | None = None
        counter = [domain]
        for i, (key, value) in enumerate(entries):
            final = f"{key}_{value}"
            nxt = node.children.get(final)
            part = final if value else key
            if nxt is None:
                for pattern, parts in node.wildcards:
                    if wildcard_match(parts, final):
                        nxt = node.children[pattern]
                        part = pattern if nxt.share_threshold else final
                        break
            if nxt is None:
                nxt = node.children.get(key)
            counter.append(part)
            if nxt is not None and nxt.limit is not None and i == len(entries) - 1:
                found, found_node = nxt.limit, nxt
            if nxt is None or not nxt.children:
                break
            node = nxt
        if found is None or found_node is None:
            return None
        return LimitMatch(found, ".".join(counter), found_node.metadata)


def apply_replaces(matches: Sequence[LimitMatch | None]) -> tuple[LimitMatch | None, ...]:
    """Drop every matched limit whose name another matched limit `replaces` (as upstream)."""
    replaced = {name for m in matches if m is not None for name in m.limit.replaces}
    return tuple(
        None if m is not None and m.limit.name and m.limit.name in replaced else m for m in matches
    )


def _rate_limit(reader: Reader, node: yaml.Node, full_key: str) -> RateLimit:
    where = f"{full_key}: rate_limit"
    fields = reader.mapping(node, where, _RATE_LIMIT_KEYS)
    unlimited = "unlimited" in fields and reader.boolean(fields["unlimited"], where)
    unit: Unit | None = None
    if "unit" in fields:
        text = reader.string(fields["unit"], f"{where}.unit").upper()
        if text not in Unit.__members__:
            raise reader.fail(fields["unit"], f"{where}: invalid rate limit unit '{text}'")
        unit = Unit(text)
    if unlimited and unit is not None:
        raise reader.fail(node, f"{where}: should not specify rate limit unit when unlimited")
    if not unlimited and unit is None:
        raise reader.fail(node, f"{where}: missing required key 'unit'")
    rpu = 0
    if "requests_per_unit" in fields:
        rpu_node = fields["requests_per_unit"]
        rpu = reader.integer(rpu_node, f"{where}.requests_per_unit", 0, _UINT32_MAX)
    name = reader.string(fields["name"], f"{where}.name") if "name" in fields else ""
    replaces: list[str] = []
    items = reader.sequence(fields["replaces"], f"{where}.replaces") if "replaces" in fields else []
    for item in items:
        entry = reader.mapping(item, f"{where}.replaces", ("name",), ("name",))
        replaced = reader.string(entry["name"], f"{where}.replaces.name")
        if not replaced or replaced == name:
            raise reader.fail(item, f"{where}: replaces must name another, non-empty rule")
        replaces.append(replaced)
    return RateLimit(full_key, rpu, unit, unlimited, name, tuple(replaces))


def _flag(reader: Reader, fields: Mapping[str, yaml.Node], key: str, where: str) -> bool:
    return key in fields and reader.boolean(fields[key], f"{where}.{key}")


def parse_descriptors(
    reader: Reader, nodes: yaml.Node, parent_key: str, token_buckets: Collection[str] | None
) -> DescriptorNode:
    """Load one descriptor list into a node; `token_buckets` (providers) enables our extension."""
    children: dict[str, DescriptorNode] = {}
    wildcards: list[tuple[str, tuple[str, ...]]] = []
    allowed = _DESCRIPTOR_KEYS + ((TOKEN_BUCKET_KEY,) if token_buckets is not None else ())
    for item in reader.sequence(nodes, f"{parent_key}: descriptors"):
        fields = reader.mapping(item, f"{parent_key}: descriptor", allowed, ("key",))
        key = reader.string(fields["key"], f"{parent_key}: key")
        value = reader.string(fields["value"], f"{parent_key}: value") if "value" in fields else ""
        if not key:
            raise reader.fail(item, f"{parent_key}: descriptor has empty key")
        final = f"{key}_{value}" if value else key
        full_key = f"{parent_key}.{final}"
        if final in children:
            raise reader.fail(item, f"duplicate descriptor composite key '{full_key}'")
        limit = None
        if "rate_limit" in fields:
            limit = _rate_limit(reader, fields["rate_limit"], full_key)
        if TOKEN_BUCKET_KEY in fields:
            provider = reader.string(fields[TOKEN_BUCKET_KEY], f"{full_key}.{TOKEN_BUCKET_KEY}")
            if limit is not None or token_buckets is None or provider not in token_buckets:
                raise reader.fail(
                    fields[TOKEN_BUCKET_KEY],
                    f"{full_key}: token_bucket must name a provider and replace rate_limit",
                )
            limit = RateLimit(full_key, token_bucket=provider)
        if limit is not None:
            limit = replace(
                limit,
                shadow_mode=_flag(reader, fields, "shadow_mode", full_key),
                quota_mode=_flag(reader, fields, "quota_mode", full_key),
                detailed_metric=_flag(reader, fields, "detailed_metric", full_key),
            )
        share = _flag(reader, fields, "share_threshold", full_key)
        if share and "*" not in final:
            raise reader.fail(item, f"share_threshold needs a wildcard value, not '{final}'")
        _flag(reader, fields, "value_to_metric", full_key)  # metrics only: validated, no effect
        metadata = None
        if "metadata" in fields:
            reader.mapping(fields["metadata"], f"{full_key}.metadata")
            metadata = MappingProxyType(yaml.safe_load(yaml.serialize(fields["metadata"])))
        nested = fields.get("descriptors")
        child = (
            parse_descriptors(reader, nested, full_key, token_buckets)
            if nested is not None and not reader.is_null(nested)
            else DescriptorNode()
        )
        children[final] = DescriptorNode(child.children, child.wildcards, limit, share, metadata)
        if "*" in final:
            wildcards.append((final, tuple(final.split("*"))))
    return DescriptorNode(MappingProxyType(children), tuple(wildcards))


def parse_rate_limit_files(
    files: Iterable[tuple[str, str]], *, merge_domains: bool = False
) -> RateLimitConfig:
    """Parse (source name, text) pairs; a domain in two files needs `merge_domains` (upstream's
    MERGE_DOMAIN_CONFIG), and even then a descriptor defined twice is an error."""
    domains: dict[str, DescriptorNode] = {}
    for source, text in files:
        reader = Reader(source)
        root = reader.compose(text)
        if root is None:
            raise PolicyError(source, 1, "config file is empty")
        fields = reader.mapping(root, "config", ("domain", "descriptors"), ("domain",))
        domain = reader.string(fields["domain"], "domain")
        if not domain:
            raise reader.fail(fields["domain"], "config file cannot have empty domain")
        nodes = fields.get("descriptors")
        tree = (
            parse_descriptors(reader, nodes, domain, None)
            if nodes is not None and not reader.is_null(nodes)
            else DescriptorNode()
        )
        if domain in domains:
            if not merge_domains:
                raise reader.fail(fields["domain"], f"duplicate domain '{domain}' in config file")
            tree = _merge(reader, fields["domain"], domain, domains[domain], tree)
        domains[domain] = tree
    return RateLimitConfig(MappingProxyType(domains))


def _merge(
    reader: Reader, at: yaml.Node, domain: str, old: DescriptorNode, new: DescriptorNode
) -> DescriptorNode:
    clash = set(old.children) & set(new.children)
    if clash:
        raise reader.fail(at, f"duplicate descriptor composite key '{domain}.{min(clash)}'")
    children = MappingProxyType({**old.children, **new.children})
    return DescriptorNode(children, old.wildcards + new.wildcards)


def load_rate_limit_files(paths: Iterable[Path], *, merge_domains: bool = False) -> RateLimitConfig:
    """Read and parse envoyproxy/ratelimit config files (read once, at start or reload)."""
    return parse_rate_limit_files(
        ((str(p), p.read_text(encoding="utf-8")) for p in paths), merge_domains=merge_domains
    )


def load_rate_limit_directory(directory: Path, *, merge_domains: bool = False) -> RateLimitConfig:
    """Every *.yaml file of a directory, in name order (upstream's RUNTIME_APPDIRECTORY)."""
    return load_rate_limit_files(sorted(directory.glob("*.yaml")), merge_domains=merge_domains)
