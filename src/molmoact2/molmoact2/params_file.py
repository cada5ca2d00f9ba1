"""Read a ROS 2 parameters file as the nodes will get it: rcl's YAML parser, not PyYAML's.

The nodes of a graph never see the config through PyYAML: rcl (``rcl_yaml_param_parser``)
parses ``--params-file`` itself, with its own YAML reading. Checked with PyYAML, the launch's
config check passed files that rcl refuses as a whole, so that every node of the graph died at
start (``[0.0, 1]`` is a list of mixed types, ``key:`` with no value, an ``&anchor``), and it
checked other values than the nodes got (``y`` is true for rcl, a string for PyYAML; ``1_000``
and ``10:40`` are strings for rcl, numbers for PyYAML; a duplicate section is merged by rcl and
replaced by PyYAML). This module reads the file's structure with PyYAML's composer (line numbers
for every message) and types each scalar as rcl does.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

PARAMS_KEY = "ros__parameters"
_STR_TAG = "tag:yaml.org,2002:str"
_PLAIN = "!rcl-implicit"  # a scalar without an explicit tag (quoted or not)

# rcl's spellings (parse.c, get_value): unquoted only.
_TRUE = {"Y", "y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"}
_FALSE = {"N", "n", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"}
_SPECIAL_FLOATS = {
    ".nan": math.nan,
    ".NaN": math.nan,
    ".NAN": math.nan,
    ".inf": math.inf,
    ".Inf": math.inf,
    ".INF": math.inf,
    "+.inf": math.inf,
    "+.Inf": math.inf,
    "+.INF": math.inf,
    "-.inf": -math.inf,
    "-.Inf": -math.inf,
    "-.INF": -math.inf,
}
_WS = " \t\n\v\f\r"
_INT = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_DEC_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX_FLOAT = re.compile(
    r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?"
)
_WORD_FLOAT = re.compile(r"[+-]?(?:inf|infinity|nan(?:\([0-9A-Za-z_]*\))?)", re.IGNORECASE)
_INT64 = (-(2**63), 2**63 - 1)


class ParamsFileError(ValueError):
    """What rcl would refuse in the file, or what cannot be read; one line, with the line."""


def _strtoll(text: str) -> int | None:
    """``strtoll(text, &end, 0)`` consuming all of ``text`` without ERANGE, else None."""
    body = text.lstrip(_WS)
    if not _INT.fullmatch(body):
        return None
    sign = -1 if body.startswith("-") else 1
    digits = body.lstrip("+-")
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0") and len(digits) > 1:
        value = int(digits[1:], 8)
    else:
        value = int(digits)
    value *= sign
    return value if _INT64[0] <= value <= _INT64[1] else None


def _strtod(text: str) -> float | None:
    """``strtod`` consuming all of ``text`` without ERANGE (overflow, underflow), else None."""
    body = text.lstrip(_WS)
    if _WORD_FLOAT.fullmatch(body):
        word = body.lstrip("+-").lower()
        value = math.nan if word.startswith("nan") else math.inf
        return -value if body.startswith("-") else value
    if _HEX_FLOAT.fullmatch(body):
        value = float.fromhex(body)
    elif _DEC_FLOAT.fullmatch(body):
        value = float(body)
    else:
        return None
    if math.isinf(value):
        return None  # overflow: rcl then reads the text as a string
    mantissa = body.lower().split("p" if "x" in body.lower() else "e")[0]
    nonzero = any(c not in "0.+-x" for c in mantissa)
    if nonzero and abs(value) < 2.2250738585072014e-308:
        return None  # underflow
    return value


def rcl_scalar(text: str, style: str | None, tag: str) -> Any:
    """The value rcl gives a YAML scalar: bool, int (int64), float or str."""
    if tag == _STR_TAG or style in ("'", '"'):
        return text
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    value = _strtoll(text)
    if value is not None:
        return value
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    number = _strtod(text)
    return text if number is None else number


class _Composer(yaml.SafeLoader):
    """PyYAML's composer, with the scalars left untyped and anchors refused (rcl: "Will not
    support aliasing")."""

    def resolve(self, kind, value, implicit):
        if kind is yaml.ScalarNode:  # called only for scalars without an explicit tag
            return _PLAIN
        return super().resolve(kind, value, implicit)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _RefusedError(
                event.start_mark,
                f"alias *{event.anchor}: ROS parameter files "
                "cannot use YAML anchors and aliases (rcl refuses the file)",
            )
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise _RefusedError(
                event.start_mark,
                f"anchor &{event.anchor}: ROS parameter files "
                "cannot use YAML anchors and aliases (rcl refuses the file)",
            )
        return super().compose_node(parent, index)


class _RefusedError(Exception):
    def __init__(self, mark: Any, text: str) -> None:
        super().__init__(text)
        self.mark = mark
        self.text = text


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}" if mark is not None else "?"


def _key(node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise _RefusedError(node.start_mark, "a key must be a plain name, not a list or mapping")
    if node.tag == "tag:yaml.org,2002:merge" or (
        node.tag == _PLAIN and node.style is None and node.value == "<<"
    ):
        raise _RefusedError(
            node.start_mark,
            "YAML merge keys (<<) are not read by ROS (rcl takes '<<' for a parameter name)",
        )
    return node.value


def _pairs(node: yaml.Node, what: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
    """The (key, key node, value node) of a mapping; duplicate keys refused."""
    if not isinstance(node, yaml.MappingNode):
        raise _RefusedError(node.start_mark, f"{what} must be a mapping")
    seen: dict[str, Any] = {}
    out = []
    for key_node, value_node in node.value:
        key = _key(key_node)
        if key in seen:
            raise _RefusedError(
                key_node.start_mark,
                f"{what}: {key!r} is given twice (first on "
                f"{_where(seen[key])}); the nodes would get only one of them",
            )
        seen[key] = key_node.start_mark
        out.append((key, key_node, value_node))
    return out


def _scalar(node: yaml.ScalarNode, name: str) -> Any:
    if node.tag == _PLAIN and node.style is None and node.value == "":
        raise _RefusedError(
            node.start_mark,
            f"{name} has no value (rcl refuses the file; "
            'for an empty string write "", for an empty list [])',
        )
    return rcl_scalar(node.value, node.style, node.tag)


def _type_name(value: Any) -> str:
    return {bool: "bool", int: "integer", float: "double", str: "string"}[type(value)]


def _param(node: yaml.Node, name: str) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node, name)
    if isinstance(node, yaml.SequenceNode):
        values = []
        for item in node.value:
            if not isinstance(item, yaml.ScalarNode):
                raise _RefusedError(
                    item.start_mark,
                    f"{name}: a list of lists or mappings is not a ROS parameter value",
                )
            values.append(_scalar(item, name))
        kinds = {_type_name(v) for v in values}
        if len(kinds) > 1:
            # rcl types each entry on its own and refuses the whole file; [0.5, 1] is the
            # classic (write 1.0).
            hint = " (write 1.0, not 1, among decimals)" if kinds == {"double", "integer"} else ""
            raise _RefusedError(
                node.start_mark,
                f"{name} mixes {' and '.join(sorted(kinds))} "
                f"entries: ROS lists hold one type{hint} (rcl refuses the file)",
            )
        return values
    raise _RefusedError(node.start_mark, f"{name}: unexpected YAML node")


def _flatten(node: yaml.Node, prefix: str, out: dict[str, Any], marks: dict[str, Any]) -> None:
    # rcl reads a nested mapping under ros__parameters as dotted parameter names (a.b).
    for key, key_node, value_node in _pairs(node, prefix.rstrip(".") or PARAMS_KEY):
        name = prefix + key
        if isinstance(value_node, yaml.MappingNode):
            _flatten(value_node, name + ".", out, marks)
            continue
        if name in out:
            raise _RefusedError(
                key_node.start_mark, f"{name!r} is given twice (first on {_where(marks[name])})"
            )
        marks[name] = key_node.start_mark
        out[name] = _param(value_node, name)


def read_params_file(path: Path) -> dict[str, dict[str, Any]]:
    """Section key (as written, e.g. ``/**/yam_driver``) -> its ``ros__parameters``, typed as
    rcl types them. ``ParamsFileError`` (one line: file, line, problem) for anything rcl would
    refuse or read otherwise than written, and for a file that cannot be read."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        byte = exc.object[exc.start]
        raise ParamsFileError(f"{path}: line {line}: not UTF-8 text (byte 0x{byte:02x})") from None
    except IsADirectoryError as exc:
        raise ParamsFileError(f"{path}: is a directory, not a config file") from exc
    except OSError as exc:
        raise ParamsFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        loader = _Composer(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
        if root is None:
            raise ParamsFileError(
                f"{path}: empty; expected a mapping of node names to {PARAMS_KEY}"
            )
        if not isinstance(root, yaml.MappingNode):
            raise ParamsFileError(f"{path}: expected a mapping of node names to {PARAMS_KEY}")
        sections: dict[str, dict[str, Any]] = {}
        for key, _key_node, body in _pairs(root, "the file"):
            if not isinstance(body, yaml.MappingNode):
                raise ParamsFileError(f"{path}: section {key!r} has no {PARAMS_KEY!r} mapping")
            pairs = _pairs(body, f"section {key!r}")
            names = [k for k, _kn, _v in pairs]
            if names != [PARAMS_KEY]:
                others = [k for k in names if k != PARAMS_KEY]
                if PARAMS_KEY not in names or not others:
                    raise ParamsFileError(f"{path}: section {key!r} has no {PARAMS_KEY!r} mapping")
                mark = next(kn for k, kn, _v in pairs if k == others[0]).start_mark
                raise _RefusedError(
                    mark,
                    f"section {key!r}: {others[0]!r} beside {PARAMS_KEY} (rcl refuses the file)",
                )
            params_node = pairs[0][2]
            if not isinstance(params_node, yaml.MappingNode):
                raise ParamsFileError(f"{path}: section {key!r} has no {PARAMS_KEY!r} mapping")
            params: dict[str, Any] = {}
            _flatten(params_node, "", params, {})
            sections[key] = params
        return sections
    except _RefusedError as exc:
        raise ParamsFileError(f"{path}: line {exc.mark.line + 1}: {exc.text}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "malformed"
        raise ParamsFileError(f"{path}: malformed YAML{line}: {problem}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        # RecursionError: thousands of nested brackets; rcl has its own depth limit.
        raise ParamsFileError(f"{path}: malformed YAML: {type(exc).__name__}") from None
