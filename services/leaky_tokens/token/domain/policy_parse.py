"""Parse and validate a policy file: strict keys, exact numbers, errors as file:line: message."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType

import yaml

from leaky_tokens.token.domain.bucket import BucketLimit
from leaky_tokens.token.domain.policy import Plan, Policy, Provider, Tier, role_name, scaled
from leaky_tokens.token.domain.rls_config import DescriptorNode, RateLimitConfig
from leaky_tokens.token.domain.rls_parse import parse_descriptors
from leaky_tokens.token.domain.units import MILLI, SAFE_LIMIT, TOKEN_SCALE
from leaky_tokens.token.domain.windows import Period, QuotaWindow
from leaky_tokens.token.domain.yaml_nodes import PolicyError, Reader

DEFAULT_POLICY = "default-policy.yaml"
MAX_CAPACITY = (SAFE_LIMIT - 1) // TOKEN_SCALE  # 9,007,199,254 tokens: micro-tokens < 2**53
MAX_RATE_MILLI = 10**12  # a billion tokens a second: far past any provider
_TOP = ("providers", "tiers", "default_tier", "orgs", "quota", "rate_limits")
_PLAN = ("capacity_multiplier", "rate_multiplier", "quota_tokens", "provider_quota_tokens")
_ONE = Decimal(1)

__all__ = ["DEFAULT_POLICY", "PolicyError", "parse_policy"]


def parse_policy(text: str, source_name: str = "<policy>") -> Policy:
    """Validate `text` into an immutable Policy, or raise PolicyError naming file and line."""
    reader = Reader(source_name)
    root = reader.compose(text)
    if root is None:
        raise PolicyError(source_name, 1, "the policy file is empty")
    top = reader.mapping(root, "policy", _TOP, ("providers",))
    providers = _providers(reader, top["providers"])
    tiers = _tiers(reader, top.get("tiers"), providers)
    default_tier = "USER"
    if "default_tier" in top:
        default_tier = role_name(reader.string(top["default_tier"], "default_tier"))
    if default_tier not in tiers:
        if "default_tier" in top:
            raise reader.fail(top["default_tier"], f"default_tier: no tier '{default_tier}'")
        tiers = {**tiers, default_tier: Tier(default_tier, 0, _neutral(default_tier, providers))}
    org_default, org_plans = _orgs(reader, top.get("orgs"), providers)
    window = _window(reader, top.get("quota"))
    domain, limits = _rate_limits(reader, top.get("rate_limits"), providers)
    return Policy(
        source_name,
        MappingProxyType(providers),
        MappingProxyType(tiers),
        default_tier,
        org_default,
        MappingProxyType(org_plans),
        window,
        limits,
        domain,
    )


def _providers(reader: Reader, node: yaml.Node) -> dict[str, Provider]:
    found: dict[str, Provider] = {}
    for name, body in reader.mapping(node, "providers").items():
        where = f"providers.{name}"
        if not name or name != name.strip().lower():
            raise reader.fail(body, f"{where}: provider names are lower case")
        fields = reader.mapping(body, where, ("capacity", "leak_rate"), ("capacity", "leak_rate"))
        capacity = reader.integer(fields["capacity"], f"{where}.capacity", 1, MAX_CAPACITY)
        rate = reader.decimal(fields["leak_rate"], f"{where}.leak_rate", 3)
        rate_milli = int(rate * MILLI)
        if rate_milli > MAX_RATE_MILLI:
            raise reader.fail(fields["leak_rate"], f"{where}.leak_rate: too large")
        found[name] = Provider(name, capacity, rate_milli)
    if not found:
        raise reader.fail(node, "providers: at least one provider is needed")
    return found


def _plan(
    reader: Reader, node: yaml.Node, where: str, name: str, providers: Mapping[str, Provider]
) -> Plan:
    return _plan_fields(reader, reader.mapping(node, where, _PLAN), node, where, name, providers)


def _plan_fields(
    reader: Reader,
    fields: Mapping[str, yaml.Node],
    node: yaml.Node,
    where: str,
    name: str,
    providers: Mapping[str, Provider],
) -> Plan:
    cap_m = _multiplier(reader, fields, "capacity_multiplier", where)
    rate_m = _multiplier(reader, fields, "rate_multiplier", where)
    quota = _allowance(reader, fields.get("quota_tokens"), f"{where}.quota_tokens")
    per_provider: dict[str, int | None] = {}
    if "provider_quota_tokens" in fields:
        pq_where = f"{where}.provider_quota_tokens"
        for named, value in reader.mapping(fields["provider_quota_tokens"], pq_where).items():
            if named not in providers:
                raise reader.fail(value, f"{pq_where}: unknown provider '{named}'")
            per_provider[named] = _allowance(reader, value, f"{pq_where}.{named}")
    buckets: dict[str, BucketLimit] = {}
    for prov in providers.values():
        capacity = scaled(prov.capacity, cap_m)
        rate = scaled(prov.rate_milli, rate_m)
        if capacity > MAX_CAPACITY or rate > MAX_RATE_MILLI:
            raise reader.fail(node, f"{where}: the {prov.name} bucket grows past the limits")
        buckets[prov.name] = BucketLimit.tokens(capacity, rate)
    return Plan(
        name, cap_m, rate_m, quota, MappingProxyType(per_provider), MappingProxyType(buckets)
    )


def _neutral(name: str, providers: Mapping[str, Provider]) -> Plan:
    buckets = {p.name: BucketLimit.tokens(p.capacity, p.rate_milli) for p in providers.values()}
    return Plan(name, _ONE, _ONE, None, MappingProxyType({}), MappingProxyType(buckets))


def _multiplier(reader: Reader, fields: Mapping[str, yaml.Node], key: str, where: str) -> Decimal:
    if key not in fields:
        return _ONE
    return reader.decimal(fields[key], f"{where}.{key}", 6)


def _allowance(reader: Reader, node: yaml.Node | None, where: str) -> int | None:
    if node is None or reader.is_null(node):
        return None
    return reader.integer(node, where, 0, SAFE_LIMIT - 1)


def _tiers(
    reader: Reader, node: yaml.Node | None, providers: Mapping[str, Provider]
) -> dict[str, Tier]:
    if node is None:
        return {}
    tiers: dict[str, Tier] = {}
    priorities: dict[int, str] = {}
    for raw, body in reader.mapping(node, "tiers").items():
        name = role_name(raw)
        where = f"tiers.{raw}"
        if not name or name in tiers:
            raise reader.fail(body, f"{where}: empty or repeated tier name")
        fields = reader.mapping(body, where, ("priority", *_PLAN), ("priority",))
        priority_node = fields.pop("priority")
        priority = reader.integer(priority_node, f"{where}.priority", 0)
        if priority in priorities:
            other = priorities[priority]
            raise reader.fail(priority_node, f"{where}: priority {priority} is also {other}'s")
        priorities[priority] = name
        plan = _plan_fields(reader, fields, body, where, name, providers)
        tiers[name] = Tier(name, priority, plan)
    return tiers


def _orgs(
    reader: Reader, node: yaml.Node | None, providers: Mapping[str, Provider]
) -> tuple[Plan, dict[str, Plan]]:
    if node is None:
        return _neutral("org:default", providers), {}
    fields = reader.mapping(node, "orgs", ("default", "overrides"))
    default = (
        _plan(reader, fields["default"], "orgs.default", "org:default", providers)
        if "default" in fields
        else _neutral("org:default", providers)
    )
    plans: dict[str, Plan] = {}
    if "overrides" in fields and not reader.is_null(fields["overrides"]):
        for org_id, body in reader.mapping(fields["overrides"], "orgs.overrides").items():
            plans[org_id] = _plan(reader, body, f"orgs.overrides.{org_id}", org_id, providers)
    return default, plans


def _window(reader: Reader, node: yaml.Node | None) -> QuotaWindow:
    if node is None:
        return QuotaWindow()
    fields = reader.mapping(node, "quota", ("window", "timezone"))
    period = Period.DAILY
    if "window" in fields:
        text = reader.string(fields["window"], "quota.window")
        if text not in Period._value2member_map_:
            known = ", ".join(p.value for p in Period)
            raise reader.fail(fields["window"], f"quota.window: '{text}' is not one of {known}")
        period = Period(text)
    zone = "UTC"
    if "timezone" in fields:
        zone = reader.string(fields["timezone"], "quota.timezone")
        try:
            return QuotaWindow(period, zone)
        except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
            raise reader.fail(
                fields["timezone"], f"quota.timezone: unknown zone '{zone}'"
            ) from None
    return QuotaWindow(period, zone)


def _rate_limits(
    reader: Reader, node: yaml.Node | None, providers: Mapping[str, Provider]
) -> tuple[str, RateLimitConfig]:
    if node is None:
        return "leaky", RateLimitConfig()
    fields = reader.mapping(node, "rate_limits", ("domain", "descriptors"))
    domain = "leaky"
    if "domain" in fields:
        domain = reader.string(fields["domain"], "rate_limits.domain")
    if not domain:
        raise reader.fail(node, "rate_limits.domain: must not be empty")
    nodes = fields.get("descriptors")
    tree = DescriptorNode()
    if nodes is not None and not reader.is_null(nodes):
        tree = parse_descriptors(reader, nodes, domain, frozenset(providers))
    return domain, RateLimitConfig(MappingProxyType({domain: tree}))
