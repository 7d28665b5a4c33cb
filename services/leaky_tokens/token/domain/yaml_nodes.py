"""Strict reading of composed YAML nodes: every error names the source, line and key."""

from __future__ import annotations

from collections.abc import Collection
from decimal import Decimal, InvalidOperation

import yaml

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


class PolicyError(ValueError):
    """A policy or rate-limit config file is invalid: `source:line: message`."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line
        self.message = message


class Reader:
    """Typed accessors over the nodes of one document; `source` names it in errors."""

    def __init__(self, source: str) -> None:
        self.source = source

    def compose(self, text: str) -> yaml.Node | None:
        """The document's root node (None for an empty document)."""
        try:
            return yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 1
            raise PolicyError(self.source, line, f"invalid YAML: {exc.problem}") from None
        except yaml.YAMLError as exc:
            raise PolicyError(self.source, 1, f"invalid YAML: {exc}") from None

    def fail(self, node: yaml.Node, message: str) -> PolicyError:
        """An error pointing at `node`."""
        return PolicyError(self.source, node.start_mark.line + 1, message)

    def mapping(
        self,
        node: yaml.Node,
        where: str,
        allowed: Collection[str] | None = None,
        required: Collection[str] = (),
    ) -> dict[str, yaml.Node]:
        """A mapping with string keys; unknown or repeated keys and missing ones are errors.

        `allowed=None` accepts any key (maps keyed by names such as providers or tiers).
        """
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{where}: expected a mapping")
        found: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
                raise self.fail(key_node, f"{where}: keys must be strings")
            key = key_node.value
            if key in found:
                raise self.fail(key_node, f"{where}: duplicate key '{key}'")
            if allowed is not None and key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.fail(key_node, f"{where}: unknown key '{key}' (known: {known})")
            found[key] = value_node
        for key in required:
            if key not in found:
                raise self.fail(node, f"{where}: missing required key '{key}'")
        return found

    def sequence(self, node: yaml.Node, where: str) -> list[yaml.Node]:
        """A list."""
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{where}: expected a list")
        return list(node.value)

    def is_null(self, node: yaml.Node) -> bool:
        """Whether the node is YAML null (`~`, `null` or empty)."""
        return isinstance(node, yaml.ScalarNode) and node.tag == _NULL

    def string(self, node: yaml.Node, where: str) -> str:
        """A string; numbers and booleans written unquoted are refused, not converted."""
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
            raise self.fail(node, f"{where}: expected a string")
        return str(node.value)

    def text(self, node: yaml.Node, where: str) -> str:
        """Any scalar as written (upstream's YAML library reads `value: 123` as "123")."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
            raise self.fail(node, f"{where}: expected a string")
        return str(node.value)

    def boolean(self, node: yaml.Node, where: str) -> bool:
        """true or false."""
        if not isinstance(node, yaml.ScalarNode) or node.tag != _BOOL:
            raise self.fail(node, f"{where}: expected true or false")
        return bool(_CONSTRUCTOR.construct_yaml_bool(node))

    def integer(self, node: yaml.Node, where: str, low: int = 0, high: int | None = None) -> int:
        """An integer within [low, high]."""
        if not isinstance(node, yaml.ScalarNode) or node.tag != _INT:
            raise self.fail(node, f"{where}: expected a whole number")
        value = int(_CONSTRUCTOR.construct_yaml_int(node))
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise self.fail(node, f"{where}: {value} must be {bound}")
        return value

    def decimal(self, node: yaml.Node, where: str, places: int) -> Decimal:
        """A positive number with at most `places` decimals, read exactly from its text."""
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_INT, _FLOAT):
            raise self.fail(node, f"{where}: expected a number")
        try:
            value = Decimal(str(node.value).replace("_", ""))
        except InvalidOperation:
            raise self.fail(node, f"{where}: '{node.value}' is not a decimal number") from None
        if not value.is_finite() or value <= 0:
            raise self.fail(node, f"{where}: must be a positive number")
        exponent = value.normalize().as_tuple().exponent
        if isinstance(exponent, int) and -exponent > places:
            raise self.fail(node, f"{where}: at most {places} decimals ({node.value})")
        return value
