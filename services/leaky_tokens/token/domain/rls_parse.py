"""Parse envoyproxy/ratelimit config files (and the policy's descriptors) with line numbers."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType

import yaml

from leaky_tokens.token.domain.rls_config import DescriptorNode, RateLimit, RateLimitConfig, Unit
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
# Our extension, accepted in the policy file only (a YAML key, not a secret).
TOKEN_BUCKET_KEY = "token_bucket"  # noqa: S105


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
    name = reader.text(fields["name"], f"{where}.name") if "name" in fields else ""
    replaces: list[str] = []
    items = reader.sequence(fields["replaces"], f"{where}.replaces") if "replaces" in fields else []
    for item in items:
        entry = reader.mapping(item, f"{where}.replaces", ("name",), ("name",))
        replaced = reader.text(entry["name"], f"{where}.replaces.name")
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
        key = reader.text(fields["key"], f"{parent_key}: key")
        value_node = fields.get("value")
        value = ""  # absent or null: any value matches, as upstream reads it
        if value_node is not None and not reader.is_null(value_node):
            value = reader.text(value_node, f"{parent_key}: value")
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
        domain = reader.text(fields["domain"], "domain")
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
