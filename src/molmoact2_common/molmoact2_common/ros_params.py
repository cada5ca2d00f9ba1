"""Declare a node's ROS parameters from one typed dataclass (the single declaration).

Each node keeps its parameters in a frozen dataclass (no ROS imports) with defaults and a
``description`` in each field's metadata; the node, the bringup config validation and the docs
all read that dataclass. This module is the only place that turns it into ROS parameters.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

_KIND_NAMES = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}
_PLURALS = {float: "numbers", int: "integers", str: "strings", bool: "booleans"}


class ParamTypeError(ValueError):
    """A parameter value of the wrong type for its field (the message names both)."""


def _element(kind: type, value: Any, where: str) -> Any:
    # bool is an int in Python, but `true` for a number is a typo, not a value.
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    raise ParamTypeError(f"{where} must be {_KIND_NAMES[kind]}, got {value!r}")


def coerce_param(cls: type, name: str, value: Any) -> Any:
    """``value`` as ROS delivered it (a ``ros2 param set``, a params file), as field ``name``
    of ``cls`` holds it: ints for float fields become floats, arrays become tuples.
    ``ParamTypeError`` naming the parameter for any other type: float parameters are declared
    with dynamic typing (YAML writes ``250`` for ``250.0``), so rclpy lets any type through to
    here, and a string reaching ``float()`` or a comparison in a node would raise mid-callback.
    """
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        kind = args[0] if args else str
        if isinstance(value, str | bytes) or not isinstance(value, Sequence | _array_type()):
            raise ParamTypeError(
                f"{name} must be a list of {_PLURALS[kind]}, got {value!r}"
            )
        return tuple(_element(kind, v, f"every entry of {name}") for v in value)
    return _element(hint, value, name)


def _array_type() -> type:
    import array  # rclpy hands numeric arrays over as array.array

    return array.array


# A ROS 2 topic name as rcl's validate_topic_name accepts it: '/'-separated tokens of letters,
# digits and '_' not starting with a digit (or a {substitution}), optionally absolute ('/...')
# or private ('~' or '~/...'); no empty token, no trailing '/'.
_TOKEN = r"(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})"
_TOPIC_NAME = re.compile(rf"~(?:/{_TOKEN})*|/?{_TOKEN}(?:/{_TOKEN})*")


def topic_name_problem(name: str) -> str:
    """Why ``name`` is not a ROS topic name (empty: it is one)."""
    if _TOPIC_NAME.fullmatch(name):
        return ""
    return (
        f"{name!r} is not a ROS topic name ('/'-separated parts of letters, digits and '_', "
        "not starting with a digit)"
    )


def frame_id_problem(frame_id: str) -> str:
    """Why ``frame_id`` is not a tf2 frame id (empty: it is one, or it is empty).

    tf2's ``BufferCore::validateFrameId`` refuses ids starting with '/' in every lookup, while
    ``setTransform`` strips that slash: a transform published for "/cam" is stored as "cam",
    and an image or marker stamped "/cam" can never be placed by RViz ("in tf2 frame_ids cannot
    start with a '/'"). Empty ids are left to each field (some mean "the default")."""
    if frame_id.startswith("/"):
        return (
            f"{frame_id!r} is not a tf2 frame id (tf2 frame ids cannot start with a '/'; "
            f"write {frame_id.lstrip('/')!r})"
        )
    return ""


def _is_frame_field(name: str) -> bool:
    return name.endswith(("_frame", "_frames")) or name in ("frame_ids", "frame_parents")


def field_problems(params: Any) -> list[str]:
    """What every params dataclass checks alike: finite floats (``finite_problems``), a
    valid ROS name in every non-empty ``*_topic`` / ``*_topics`` / ``topics`` field (a bad
    name raised from deep inside rclpy when the node subscribed, or killed a plain node), and
    a tf2 frame id in every ``*_frame`` / ``*_frames`` / ``frame_ids`` / ``frame_parents``
    field (``frame_id_problem``)."""
    problems = finite_problems(params)
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        values = value if isinstance(value, tuple) else (value,)
        if f.name.endswith(("_topic", "_topics")) or f.name == "topics":
            for name in values:
                if isinstance(name, str) and name and topic_name_problem(name):
                    problems.append(f"{f.name}: {topic_name_problem(name)}")
        elif _is_frame_field(f.name):
            for name in values:
                if isinstance(name, str) and frame_id_problem(name):
                    problems.append(f"{f.name}: {frame_id_problem(name)}")
    return problems


def finite_problems(params: Any) -> list[str]:
    """One sentence per float field (or float list) of a params dataclass holding NaN or inf:
    every comparison with NaN is false, so ``x <= 0`` style checks let it through."""
    problems = []
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            problems.append(f"{f.name} must be finite, got {value}")
    return problems


def deprecated_params(cls: type) -> dict[str, str]:
    """A params dataclass's old parameter names still accepted: old name -> new (its
    ``DEPRECATED`` class attribute; empty when it has none)."""
    return dict(getattr(cls, "DEPRECATED", {}))


def apply_deprecated(cls: type, values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``values`` (parameter name -> value, from a config or a node) with each deprecated name
    of ``cls`` read as its new one, and one warning per old name used. The new name wins when
    both are given: it is the one the docs describe. Pure, so the launch's config check and the
    node map old configs the same way."""
    out = dict(values)
    warnings = []
    for old, new in deprecated_params(cls).items():
        if old not in out:
            continue
        value = out.pop(old)
        if new in out:
            warnings.append(f"{old} is deprecated and ignored: {new} is set too; remove {old}")
        else:
            out[new] = value
            warnings.append(f"{old} is deprecated: read as {new}: {value!r}; rename it")
    return out, warnings


def _descriptor(description: str, read_only: bool, dynamic: bool = False):
    from rcl_interfaces.msg import ParameterDescriptor

    return ParameterDescriptor(
        description=description, read_only=read_only, dynamic_typing=dynamic
    )


def _array_types() -> dict[type, Any]:
    from rclpy.parameter import Parameter

    return {
        str: Parameter.Type.STRING_ARRAY,
        int: Parameter.Type.INTEGER_ARRAY,
        bool: Parameter.Type.BOOL_ARRAY,
        float: Parameter.Type.DOUBLE_ARRAY,
    }


def _value_or_empty(node: Any, name: str, array_type: Any) -> Any:
    """The value of array parameter ``name``; when nothing set it (declared by type only, or
    dynamically typed with no value), set it to the typed empty array first. A parameter left
    NOT_SET has no value for ``ros2 param get``/``dump`` (and ``get_parameter`` raises)."""
    from rclpy.exceptions import ParameterUninitializedException
    from rclpy.parameter import Parameter

    try:
        value = node.get_parameter(name).value
    except ParameterUninitializedException:
        value = None
    if value is not None:
        return value
    descriptor = node.describe_parameter(name)
    if descriptor.read_only:
        # set_parameters refuses read-only parameters: lift the flag for this one write.
        writable = copy.copy(descriptor)
        writable.read_only = False
        node.set_descriptor(name, writable)
    result = node.set_parameters([Parameter(name, array_type, [])])[0]
    if descriptor.read_only:
        node.set_descriptor(name, descriptor)
    if not result.successful:
        raise ParamTypeError(f"{name}: cannot set its empty default: {result.reason}")
    return []


def declare_dataclass_params(node: Any, cls: type[T], problems: list[str] | None = None) -> T:
    """Declare every field of ``cls`` on ``node`` and return an instance with the values.

    A value of the wrong type (``-p control_rate:=fast``, a list where one number belongs) is
    described in ``problems`` and replaced by the default, so the node can start and fail its
    configure with that sentence; without a ``problems`` list it raises ``ParamTypeError``.
    """
    from rclpy.exceptions import InvalidParameterTypeException
    from rclpy.parameter import Parameter

    array_types = _array_types()
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        default = (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        )
        description = f.metadata.get("description", "")
        if isinstance(default, tuple):
            default = list(default)
        read_only = f.metadata.get("read_only", False)
        element = typing.get_args(hints[f.name])
        kind = element[0] if element else str
        if isinstance(default, list) and not default and kind is not float:
            # An empty list has no element type (rclpy would infer a byte array): declare the
            # intended array type, then give it its typed empty value if nothing set it.
            array_type = array_types[kind]
            try:
                node.declare_parameter(f.name, array_type, _descriptor(description, read_only))
            except InvalidParameterTypeException as err:
                if problems is None:
                    raise ParamTypeError(f"{f.name}: {err}") from err
                problems.append(f"{f.name} has the wrong type ({err}); default kept")
                node.declare_parameter(
                    f.name, array_type, _descriptor(description, read_only), ignore_override=True
                )
            value = _value_or_empty(node, f.name, array_type)
            values[f.name] = list(value)
        else:
            # YAML writes 250 for 250.0 and [3, 3, 4] for [3.0, 3.0, 4.0]: float parameters
            # and float lists take any type from rclpy; coerce_param below checks it.
            dynamic = kind is float if isinstance(default, list) else isinstance(default, float)
            descriptor = _descriptor(description, read_only, dynamic)
            empty_floats = dynamic and default == []
            try:
                value = node.declare_parameter(
                    f.name, None if empty_floats else default, descriptor
                ).value
            except InvalidParameterTypeException as err:
                # rclpy refuses an override of another type; keep the default, report it.
                if problems is None:
                    raise ParamTypeError(f"{f.name}: {err}") from err
                problems.append(f"{f.name} has the wrong type ({err}); default kept")
                value = node.declare_parameter(
                    f.name, None if empty_floats else default, descriptor, ignore_override=True
                ).value
            if empty_floats and value is None:
                value = _value_or_empty(node, f.name, Parameter.Type.DOUBLE_ARRAY)
            values[f.name] = [] if value is None else value
        try:
            values[f.name] = coerce_param(cls, f.name, values[f.name])
        except ParamTypeError as err:
            if problems is None:
                raise
            problems.append(f"{err}; default kept")
            values[f.name] = tuple(default) if isinstance(default, list) else default
    _declare_deprecated(node, cls, values, problems)
    return cls(**values)


def _declare_deprecated(
    node: Any, cls: type, values: dict[str, Any], problems: list[str] | None
) -> None:
    """Declare each deprecated name of ``cls`` (rclpy ignores overrides of undeclared names:
    an old config would silently lose its value) and read a value set for it as its new name,
    with a warning; the new name's parameter then shows the value in force."""
    from rclpy.parameter import Parameter

    defaults = dataclass_defaults(cls)
    for old, new in deprecated_params(cls).items():
        descriptor = _descriptor(f"deprecated: use {new}", read_only=False, dynamic=True)
        value = node.declare_parameter(old, None, descriptor).value
        if value is None:  # not set: nothing to map
            continue
        given = {new: values[new]} if _was_set(node, new, values[new], defaults[new]) else {}
        mapped, warnings = apply_deprecated(cls, {old: value, **given})
        for warning in warnings:
            node.get_logger().warning(warning)
        if given:
            continue
        try:
            values[new] = coerce_param(cls, new, mapped[new])
        except ParamTypeError as err:
            if problems is None:
                raise
            problems.append(f"{old} (deprecated, read as {new}): {err}; default kept")
            continue
        node.set_parameters([Parameter(new, value=mapped[new])])


def _was_set(node: Any, name: str, value: Any, default: Any) -> bool:
    """Whether a params file or ``-p`` set ``name``, as the launch's config check sees it.

    rclpy has no public call for it; its nodes keep the overrides they were started with in
    ``_parameter_overrides`` (Humble to Kilted). The fallback, a value other than the default,
    misses a new name set to its default beside an old one, and the node then ran on the old
    name's value while the launch check had taken the new one's.
    """
    overrides = getattr(node, "_parameter_overrides", None)
    if isinstance(overrides, Mapping):
        return name in overrides
    return value != default


def dataclass_defaults(cls: type) -> dict[str, Any]:
    """Field name -> default value, for config validation and docs (no ROS needed)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = f.default
    return out


def refuse_param_changes(node: Any, cls: type, live: tuple[str, ...] = ()) -> None:
    """Answer ``ros2 param set`` on a parameter of ``cls`` that the node reads once at start
    with ``successful: false`` and the reason. Without it rclpy stores the new value and answers
    success while the node keeps running on the old one (a changed limit that is not in force).
    Call after ``declare_dataclass_params``: rclpy runs these callbacks on declaration too."""
    from rcl_interfaces.msg import SetParametersResult

    fields = set(cls.__dataclass_fields__)

    def check(parameters: list[Any]) -> Any:
        fixed = [p.name for p in parameters if p.name in fields and p.name not in live]
        if fixed:
            return SetParametersResult(
                successful=False,
                reason=f"{', '.join(fixed)}: read at start, cannot change while the node runs "
                "(edit the config and restart)",
            )
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(check)
