"""Parameters of the ``molmoact2_policy`` node: declared once here, read by the node and bringup.

No ROS imports: ``molmoact2_common.ros_params.declare_dataclass_params`` turns this dataclass
into ROS parameters, and the bringup validates ``config/<robot>.yaml`` against it without a node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from molmoact2_common.embodiments import EMBODIMENTS
from molmoact2_common.ros_params import field_problems, topic_name_problem
from molmoact2_policy.policy_api import MODES, instruction_characters_problem

CAMERA_TRANSPORTS = ("raw", "compressed")
MAX_INSTRUCTION_CHARS = 2000
MAX_STATUS_RATE = 100.0  # [Hz] status and diagnostics are for people and monitors
INFERENCE_BACKENDS = ("local", "remote")
IMAGE_ENCODINGS = ("jpeg", "raw")
SERVER_TRANSPORTS = ("http", "ws")
DTYPES = ("float32", "float16", "bfloat16")
# Devices local inference runs on (torch.device spellings; the model code has CPU and CUDA paths).
TORCH_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")
EXECUTORS = ("events", "single")


def instruction_text_problem(instruction: str) -> str:
    """Why the text of ``instruction`` cannot be one ('' when it can): too long, or characters
    no operator typed as words (``instruction_characters_problem``)."""
    instruction = instruction.strip()
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        return f"instruction has {len(instruction)} characters; at most {MAX_INSTRUCTION_CHARS}"
    return instruction_characters_problem(instruction)


def _doc(text: str) -> dict[str, str]:
    return {"description": text}


@dataclass(frozen=True)
class PolicyNodeParams:
    """Everything the policy node reads from its ROS parameters."""

    # Keys shared by every node of the graph (under `/**` in the robot config).
    robot: str = field(default="", metadata=_doc("Robot name (yam, so101, droid)."))
    embodiment: str = field(
        default="yam_bimanual",
        metadata=_doc("Model embodiment (a key of molmoact2_common.embodiments.EMBODIMENTS)."),
    )
    joint_names: tuple[str, ...] = field(
        default=(),
        metadata=_doc("Joint names in model state/action order; one per action dimension."),
    )
    camera_names: tuple[str, ...] = field(
        default=(), metadata=_doc("Camera names in the order the model sees them.")
    )
    camera_topics: tuple[str, ...] = field(
        default=(),
        metadata=_doc("Image topic per camera (relative names resolve in the namespace)."),
    )
    camera_transports: tuple[str, ...] = field(
        default=(),
        metadata=_doc("Per camera: 'raw' (sensor_msgs/Image) or 'compressed' (CompressedImage)."),
    )
    camera_frames: tuple[str, ...] = field(
        default=(), metadata=_doc("Optical frame id per camera (used for depth outputs).")
    )

    # Policy backend.
    checkpoint: str = field(
        default="tiny",
        metadata=_doc("Local checkpoint directory, or 'tiny' for a tiny random test model."),
    )
    inference: str = field(
        default="local", metadata=_doc("'local' (model in this process) or 'remote' (server).")
    )
    server_url: str = field(
        default="http://127.0.0.1:8202", metadata=_doc("Policy server URL when inference=remote.")
    )
    server_token: str = field(
        default="", metadata=_doc("Bearer token for the policy server (empty: none).")
    )
    request_timeout: float = field(
        default=5.0, metadata=_doc("Seconds before a remote request counts as failed.")
    )
    image_encoding: str = field(
        default="jpeg", metadata=_doc("How images travel to a remote server: 'jpeg' or 'raw'.")
    )
    jpeg_quality: int = field(
        default=90, metadata=_doc("JPEG quality 1..100 when image_encoding=jpeg.")
    )
    remote_image_size: int = field(
        default=0,
        metadata=_doc(
            "0 (default, as released): send camera images at their own resolution to a remote "
            "server. N > 0: resize them to NxN on the robot with the model processor's kernel "
            "(needs torch) to save bandwidth; with JPEG this changes what the model sees."
        ),
    )
    server_transport: str = field(
        default="http",
        metadata=_doc("Remote transport: 'http' (POST /act, JSON) or 'ws' (websocket, msgpack)."),
    )
    device: str = field(default="cpu", metadata=_doc("Torch device for local inference."))
    dtype: str = field(default="float32", metadata=_doc("float32, float16 or bfloat16."))
    cuda_graph: bool = field(
        default=False, metadata=_doc("Capture the flow loop as a CUDA graph (CUDA only).")
    )
    mode: str = field(
        default="flow", metadata=_doc("'flow' (flow expert), 'fast' (tokens) or 'think' (depth).")
    )
    seed: int = field(
        default=-1,
        metadata=_doc("Noise seed for every inference (>= 0: reproducible chunks; -1: random)."),
    )

    # Task.
    instruction: str = field(
        default="", metadata=_doc("Initial language instruction; empty pauses inference.")
    )

    # Inputs and synchronisation.
    joint_state_topics: tuple[str, ...] = field(
        default=("joint_states",),
        metadata=_doc("JointState topics, merged by joint name (one per arm is fine)."),
    )
    max_observation_age: float = field(
        default=0.5,
        metadata=_doc("Seconds: an input whose header stamp is older than this is stale."),
    )
    max_camera_skew: float = field(
        default=0.05, metadata=_doc("Seconds: largest allowed spread between camera stamps.")
    )
    max_inference_rate: float = field(
        default=10.0, metadata=_doc("Upper bound on inferences per second (<= 0: unbounded).")
    )

    # Real-time chunking (molmoact2_policy.rtc_feed, model/rtc.py).
    rtc: bool = field(
        default=False,
        metadata=_doc(
            "Real-time chunking: sample each chunk consistent with the one being executed "
            "(flow and think modes; a remote server must know the 'rtc' request field)."
        ),
    )
    rtc_commanded_topic: str = field(
        default="",
        metadata=_doc(
            "The driver's commanded JointState topic (e.g. so101_driver/commanded_joint_states): "
            "RTC is skipped while the driver is not following the last chunk. Empty: unchecked."
        ),
    )
    rtc_execution_topic: str = field(
        default="",
        metadata=_doc(
            "The driver's ChunkExecution topic (e.g. so101_driver/chunk_execution): once the "
            "driver reports on it, RTC continues the chunk the driver runs (a rejected chunk is "
            "not continued) and is skipped while it runs none. Empty, or a driver that never "
            "reports: the chunk published last, checked with rtc_commanded_topic."
        ),
    )
    rtc_verdict_timeout: float = field(
        default=0.1,
        metadata=_doc(
            "Seconds an inference waits for the driver's verdict on the chunk published last "
            "before sampling free (only while the driver reports on rtc_execution_topic)."
        ),
    )
    rtc_max_deviation: float = field(
        default=0.2,
        metadata=_doc(
            "Largest |commanded - last chunk| [rad, m or gripper units] of a driver command that "
            "stands still (hold, e-stop, fault) at which the driver still counts as following "
            "the last chunk; a moving command (ramp-in, splice blend) always does."
        ),
    )

    # Task action (~/run_task).
    driver_node: str = field(
        default="",
        metadata=_doc(
            "Driver node whose ~/hold a ~/run_task goal releases at its start and engages at "
            "its end, and whose /diagnostics e-stop or fault ends a goal (empty: none)."
        ),
    )
    task_input_grace: float = field(
        default=3.0,
        metadata=_doc("Seconds of failing inputs or inference before a task ends (input_error)."),
    )

    # Outputs.
    action_start_offset: float = field(
        default=0.0,
        metadata=_doc("Seconds from the observation stamp to chunk row 0 (0: row 0 applies then)."),
    )
    marker_frame: str = field(
        default="base_link",
        metadata=_doc("Frame of the joint-space plot of each chunk (used without a URDF)."),
    )
    urdf: str = field(
        default="",
        metadata=_doc(
            "Robot URDF (the shared `/**` key; the launch layer makes it absolute). With "
            "end_effector_links, ~/predicted_chunk_markers shows each chunk's end-effector "
            "path (FK of every row) in the URDF's root frame instead of the joint-space plot."
        ),
    )
    end_effector_links: tuple[str, ...] = field(
        default=(),
        metadata=_doc("URDF links whose predicted paths to draw (one per arm)."),
    )
    status_rate: float = field(default=1.0, metadata=_doc("Hz of ~/status and /diagnostics."))
    executor: str = field(
        default="events",
        metadata=_doc(
            "Executor of the node's process: 'events' (rclpy's EventsExecutor: callbacks "
            "dispatched from C++, no wait set rebuilt in Python per message; falls back to "
            "'single' where rclpy has none) or 'single' (SingleThreadedExecutor)."
        ),
    )
    autostart: bool = field(
        default=True,
        metadata=_doc("main(): configure and activate at start (no lifecycle manager)."),
    )

    def hold_driver(self) -> str:
        """``driver_node`` when it can name a node (its ``~/hold`` is called), else "": the
        run_task server is built at construction, before validate() can refuse the value,
        and a name rclpy refuses there raised out of the constructor."""
        valid = self.driver_node and not topic_name_problem(self.driver_node)
        return self.driver_node if valid else ""

    def status_period(self) -> float:
        """Seconds between ~/status messages; 1 s while ``status_rate`` is unusable (the node
        publishes its status from construction, before validate() can refuse the value)."""
        rate = self.status_rate
        return 1.0 / rate if 0.0 < rate <= MAX_STATUS_RATE else 1.0

    def validate(self) -> list[str]:
        """Every problem with these values, as sentences (empty list: valid)."""
        problems: list[str] = field_problems(self)  # NaN passes `x <= 0` checks; topic names
        spec = EMBODIMENTS.get(self.embodiment)
        if spec is None:
            problems.append(
                f"unknown embodiment {self.embodiment!r}; known: {', '.join(sorted(EMBODIMENTS))}"
            )
        if not self.joint_names:
            problems.append("joint_names is empty")
        elif len(set(self.joint_names)) != len(self.joint_names):
            problems.append("joint_names has duplicates")
        if spec is not None and self.joint_names and len(self.joint_names) != spec.action_dim:
            problems.append(
                f"{len(self.joint_names)} joint_names but embodiment {spec.name} has "
                f"action_dim {spec.action_dim}"
            )
        if spec is not None and self.joint_names and len(self.joint_names) != spec.state_dim:
            problems.append(
                f"{len(self.joint_names)} joint_names but embodiment {spec.name} has "
                f"state_dim {spec.state_dim}"
            )
        if not self.camera_names:
            problems.append("camera_names is empty")
        elif len(set(self.camera_names)) != len(self.camera_names):
            problems.append("camera_names has duplicates")
        for key in ("camera_topics", "camera_transports", "camera_frames"):
            values = getattr(self, key)
            if len(values) != len(self.camera_names):
                problems.append(
                    f"{key} has {len(values)} entries but camera_names has {len(self.camera_names)}"
                )
        for transport in self.camera_transports:
            if transport not in CAMERA_TRANSPORTS:
                problems.append(
                    f"camera transport {transport!r} is not one of {', '.join(CAMERA_TRANSPORTS)}"
                )
        if spec is not None and self.camera_names:
            missing = [c for c in spec.camera_names if c not in self.camera_names]
            if missing:
                problems.append(
                    f"embodiment {spec.name} needs camera(s) {', '.join(missing)} "
                    f"not in camera_names"
                )
        if self.inference not in INFERENCE_BACKENDS:
            problems.append(f"inference {self.inference!r} is not 'local' or 'remote'")
        if self.inference == "remote" and not self.server_url:
            problems.append("inference=remote needs server_url")
        if self.mode not in MODES:
            problems.append(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.image_encoding not in IMAGE_ENCODINGS:
            problems.append(f"image_encoding {self.image_encoding!r} is not 'jpeg' or 'raw'")
        if self.remote_image_size < 0:
            problems.append(f"remote_image_size {self.remote_image_size} is negative")
        if self.server_transport not in SERVER_TRANSPORTS:
            problems.append(f"server_transport {self.server_transport!r} is not 'http' or 'ws'")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality {self.jpeg_quality} is not in 1..100")
        if self.inference == "local" and not self.checkpoint:
            problems.append("checkpoint is empty")
        if self.inference == "local" and not TORCH_DEVICE.fullmatch(self.device):
            # Refused by the launch's config check, not at configure after the graph started.
            problems.append(f"device {self.device!r} is not cpu, cuda or cuda:<index>")
        if not self.joint_state_topics:
            problems.append("joint_state_topics is empty")
        for key in (
            "max_observation_age",
            "max_camera_skew",
            "request_timeout",
            "status_rate",
            "task_input_grace",
        ):
            if not getattr(self, key) > 0.0:
                problems.append(f"{key} must be > 0, got {getattr(self, key)}")
        if self.executor not in EXECUTORS:
            problems.append(f"executor {self.executor!r} is not one of {', '.join(EXECUTORS)}")
        if self.rtc and self.mode == "fast":
            problems.append("rtc needs the flow expert: mode 'flow' or 'think', not 'fast'")
        if not 0.0 <= self.rtc_verdict_timeout <= 1.0:
            problems.append(
                f"rtc_verdict_timeout must be in [0, 1] s, got {self.rtc_verdict_timeout}"
            )
        if not self.rtc_max_deviation > 0.0:
            problems.append(f"rtc_max_deviation must be > 0, got {self.rtc_max_deviation}")
        if self.driver_node and topic_name_problem(self.driver_node):
            problems.append(f"driver_node: {topic_name_problem(self.driver_node)}")
        if self.status_rate > MAX_STATUS_RATE:
            problems.append(f"status_rate must be at most {MAX_STATUS_RATE:g} Hz")
        if instruction_text_problem(self.instruction):
            problems.append(instruction_text_problem(self.instruction))
        if self.action_start_offset < 0.0:
            problems.append(f"action_start_offset must be >= 0, got {self.action_start_offset}")
        return problems


# Parameters that `ros2 param set` may change while the node runs; the rest are read once.
LIVE_PARAMS = ("instruction", "max_inference_rate")


def live_param_problem(name: str, value: object) -> str:
    """Why a running policy node refuses ``name := value`` (empty: accepted)."""
    import math

    if name == "instruction":
        if not isinstance(value, str):
            return "instruction must be a string"
        return instruction_text_problem(value)
    if name == "max_inference_rate":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "max_inference_rate must be a number"
        if not math.isfinite(value):
            return f"max_inference_rate must be finite, got {value}"
        return ""
    return (
        f"{name} is read at start and cannot change while the node runs "
        f"(live: {', '.join(LIVE_PARAMS)}); edit the config and restart"
    )
