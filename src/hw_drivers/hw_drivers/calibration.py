"""LeRobot calibration files and the joint conventions between servo ticks and the model.

Three conventions meet on an SO-100/101 arm:

1. servo ticks (0..4095 per turn), after the servo's own ``Homing_Offset``;
2. LeRobot's normalised values: body joints in ``DEGREES`` mode,
   ``deg = (ticks - mid) * 360 / 4095`` with ``mid`` the middle of the calibrated range;
   the gripper in ``RANGE_0_100`` mode, ``(ticks - range_min) / (range_max - range_min) * 100``
   (``100 - x`` when the motor's ``drive_mode`` is 1), clamped to the calibrated range;
3. the model's convention, which the released MolmoAct2 SO-101 deployment relates to LeRobot's
   per joint by ``model_deg = sign * lerobot_deg + offset`` with signs ``[1, -1, 1, 1, 1, 1]``
   and offsets ``[0, 90, 90, 0, 0, 0]`` degrees (the gripper is not transformed).

On the ROS side (REP-103) body joints are radians of the model convention and the gripper is a
normalised opening 0..1 (LeRobot's 0..100 divided by 100).

A calibration file is LeRobot's JSON: ``{motor_name: {"id", "drive_mode", "homing_offset",
"range_min", "range_max"}}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

#: Largest tick value (resolution - 1) that LeRobot's DEGREES mode divides by.
MAX_RESOLUTION = 4095
#: Released MolmoAct2 SO-101 transform, LeRobot -> model, per joint in SO-101 order.
SO101_JOINTS = (
    "shoulder_pan",
    "shoulder_lift",
    "elbow_flex",
    "wrist_flex",
    "wrist_roll",
    "gripper",
)
SO101_MODEL_SIGNS: tuple[float, ...] = (1.0, -1.0, 1.0, 1.0, 1.0, 1.0)
SO101_MODEL_OFFSETS_DEG: tuple[float, ...] = (0.0, 90.0, 90.0, 0.0, 0.0, 0.0)

_KEYS = ("id", "drive_mode", "homing_offset", "range_min", "range_max")


class CalibrationError(ValueError):
    """A calibration file or entry that cannot be used; the message names the motor and key."""


@dataclass(frozen=True)
class MotorCalibration:
    """One motor's entry of a LeRobot calibration file."""

    id: int
    drive_mode: int
    homing_offset: int
    range_min: int
    range_max: int

    @property
    def mid(self) -> float:
        return (self.range_min + self.range_max) / 2.0


def parse_calibration(
    data: Mapping[str, object], source: str = "calibration"
) -> dict[str, MotorCalibration]:
    """Validate a decoded calibration JSON object."""
    if not isinstance(data, Mapping) or not data:
        raise CalibrationError(f"{source}: expected a non-empty object of motors")
    out: dict[str, MotorCalibration] = {}
    for name, entry in data.items():
        if not isinstance(entry, Mapping):
            raise CalibrationError(f"{source}: motor {name!r} is not an object")
        missing = [k for k in _KEYS if k not in entry]
        if missing:
            raise CalibrationError(f"{source}: motor {name!r} lacks {missing}")
        values = {}
        for key in _KEYS:
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
                raise CalibrationError(
                    f"{source}: motor {name!r} {key}={value!r} is not an integer"
                )
            values[key] = int(value)
        cal = MotorCalibration(**values)
        if not 0 <= cal.range_min < cal.range_max <= MAX_RESOLUTION:
            raise CalibrationError(
                f"{source}: motor {name!r} needs 0 <= range_min < range_max <= {MAX_RESOLUTION}, "
                f"got {cal.range_min}..{cal.range_max}"
            )
        if cal.drive_mode not in (0, 1):
            raise CalibrationError(f"{source}: motor {name!r} drive_mode must be 0 or 1")
        out[str(name)] = cal
    ids = [c.id for c in out.values()]
    if len(set(ids)) != len(ids):
        raise CalibrationError(f"{source}: motor ids are not unique: {ids}")
    return out


def load_calibration(path: str | Path) -> dict[str, MotorCalibration]:
    """Read a LeRobot calibration JSON file (``~`` is expanded: a launch argument's is not)."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CalibrationError(f"calibration file {path} does not exist") from exc
    except OSError as exc:  # a directory, no permission
        raise CalibrationError(f"calibration file {path} cannot be read: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"calibration file {path} is not valid JSON: {exc}") from exc
    return parse_calibration(data, f"calibration file {path}")


# Path -> (the file's identity when read, what it held). The driver's parameter check runs on
# every parameter change (``ros2 param set``), not only at configure: it re-read and parsed
# the file each time. Keyed by what changes when the file does (an editor's save, a new
# lerobot-calibrate run), so a configure after the file changed reads it again.
_CALIBRATION_CACHE: dict[str, tuple[tuple[int, int, int], dict[str, MotorCalibration]]] = {}


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def load_calibration_cached(path: str | Path) -> dict[str, MotorCalibration]:
    """``load_calibration``, read again only when the file changed (modification time, size
    or inode differ). A file that cannot be read raises as ``load_calibration`` does; only
    what was read successfully is kept."""
    resolved = Path(path).expanduser()
    identity = _file_identity(resolved)
    if identity is None:
        return load_calibration(resolved)  # the clear error (missing, unreadable)
    cached = _CALIBRATION_CACHE.get(str(resolved))
    if cached is not None and cached[0] == identity:
        return dict(cached[1])
    calibration = load_calibration(resolved)
    _CALIBRATION_CACHE[str(resolved)] = (identity, calibration)
    return dict(calibration)


#: Where LeRobot writes an SO-101 follower's calibration (``lerobot-calibrate``; LeRobot's
#: ``Robot.calibration_fpath``: HF_LEROBOT_CALIBRATION / "robots" / robot name / f"{id}.json").
LEROBOT_SO101_CALIBRATION = (
    "~/.cache/huggingface/lerobot/calibration/robots/so101_follower/<id>.json"
)


def load_arm_calibration(
    path: str | Path, joint_names: Sequence[str], *, cached: bool = False
) -> dict[str, MotorCalibration]:
    """The calibration file of an arm with these joints: ``CalibrationError`` when no file is
    named (with where LeRobot writes one), or it is missing, not JSON, not LeRobot's shape, or
    has no entry for one of the joints. The driver's parameter check (so the launch, before
    any node starts) and the backend both read the file through this one function; the check,
    which also runs on every parameter change, with ``cached`` (``load_calibration_cached``)."""
    if not str(path).strip():
        raise CalibrationError(
            "the feetech backend needs calibration_file: the LeRobot calibration JSON of this "
            f"arm (lerobot-calibrate writes {LEROBOT_SO101_CALIBRATION})"
        )
    calibration = load_calibration_cached(path) if cached else load_calibration(path)
    missing = [name for name in joint_names if name not in calibration]
    if missing:
        raise CalibrationError(
            f"calibration file {path} has no entry for joints {missing} "
            f"(it has {sorted(calibration)})"
        )
    return calibration


def save_calibration(calibration: Mapping[str, MotorCalibration], path: str | Path) -> None:
    """Write in LeRobot's format (indent 4, like LeRobot)."""
    Path(path).write_text(json.dumps({k: asdict(v) for k, v in calibration.items()}, indent=4))


# -- ticks <-> LeRobot values ------------------------------------------------------------------
def ticks_to_degrees(ticks: float, cal: MotorCalibration) -> float:
    """LeRobot DEGREES mode (not clamped, as LeRobot reads it)."""
    return (float(ticks) - cal.mid) * 360.0 / MAX_RESOLUTION


def degrees_to_ticks(degrees: float, cal: MotorCalibration) -> int:
    """Inverse of ``ticks_to_degrees``, rounded and clamped to the calibrated range (a
    command outside the range the arm was calibrated over is never sent)."""
    ticks = round(float(degrees) * MAX_RESOLUTION / 360.0 + cal.mid)
    return int(min(max(ticks, cal.range_min), cal.range_max))


def ticks_to_range_0_100(ticks: float, cal: MotorCalibration) -> float:
    bounded = min(max(float(ticks), cal.range_min), cal.range_max)
    value = (bounded - cal.range_min) / (cal.range_max - cal.range_min) * 100.0
    return 100.0 - value if cal.drive_mode else value


def range_0_100_to_ticks(value: float, cal: MotorCalibration) -> int:
    value = min(max(float(value), 0.0), 100.0)
    if cal.drive_mode:
        value = 100.0 - value
    return round(value / 100.0 * (cal.range_max - cal.range_min) + cal.range_min)


# -- LeRobot <-> model convention ----------------------------------------------------------
def lerobot_to_model_degrees(
    lerobot_deg: float,
    joint: int,
    signs: Sequence[float] = SO101_MODEL_SIGNS,
    offsets: Sequence[float] = SO101_MODEL_OFFSETS_DEG,
) -> float:
    return signs[joint] * float(lerobot_deg) + offsets[joint]


def model_to_lerobot_degrees(
    model_deg: float,
    joint: int,
    signs: Sequence[float] = SO101_MODEL_SIGNS,
    offsets: Sequence[float] = SO101_MODEL_OFFSETS_DEG,
) -> float:
    # signs are +-1, so dividing is multiplying; divide anyway to stay exact for any sign.
    return (float(model_deg) - offsets[joint]) / signs[joint]


@dataclass(frozen=True)
class JointConvention:
    """Ticks <-> REP-103 value for one joint: radians of the model convention, or a 0..1
    gripper opening."""

    calibration: MotorCalibration
    is_gripper: bool
    sign: float = 1.0
    offset_deg: float = 0.0

    def ticks_to_value(self, ticks: float) -> float:
        if self.is_gripper:
            return ticks_to_range_0_100(ticks, self.calibration) / 100.0
        lerobot = ticks_to_degrees(ticks, self.calibration)
        return math.radians(self.sign * lerobot + self.offset_deg)

    def value_to_ticks(self, value: float) -> int:
        if self.is_gripper:
            return range_0_100_to_ticks(float(value) * 100.0, self.calibration)
        lerobot = (math.degrees(float(value)) - self.offset_deg) / self.sign
        return degrees_to_ticks(lerobot, self.calibration)

    def ticks_per_unit(self) -> float:
        """d(ticks)/d(value): converts tick velocities to value velocities."""
        if self.is_gripper:
            return (self.calibration.range_max - self.calibration.range_min) * (
                -1.0 if self.calibration.drive_mode else 1.0
            )
        return MAX_RESOLUTION / (2 * math.pi) / self.sign


def so101_conventions(
    calibration: Mapping[str, MotorCalibration],
    joint_names: Sequence[str] = SO101_JOINTS,
    signs: Sequence[float] = SO101_MODEL_SIGNS,
    offsets: Sequence[float] = SO101_MODEL_OFFSETS_DEG,
) -> list[JointConvention]:
    """One ``JointConvention`` per joint name, looked up in the calibration by name."""
    if len(signs) != len(joint_names) or len(offsets) != len(joint_names):
        raise CalibrationError(
            f"{len(signs)} signs / {len(offsets)} offsets for {len(joint_names)} joints"
        )
    missing = [n for n in joint_names if n not in calibration]
    if missing:
        raise CalibrationError(
            f"calibration has no entry for joints {missing} (it has {sorted(calibration)})"
        )
    return [
        JointConvention(
            calibration[name],
            is_gripper=name.endswith("gripper"),
            sign=float(signs[j]),
            offset_deg=float(offsets[j]),
        )
        for j, name in enumerate(joint_names)
    ]
