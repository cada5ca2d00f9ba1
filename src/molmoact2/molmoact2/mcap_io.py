"""MCAP recording of serialized ROS 2 messages, readable by ros2 bag, Foxglove and rosbags.

Messages are written exactly as they arrived on the wire (CDR bytes from a raw subscription),
so recording costs no deserialization. Each channel's schema is the ``ros2msg`` definition
text: the message's .msg file followed by every nested type's, as rosbag2 writes it.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import BinaryIO

PRIMITIVES = {
    "bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16",
    "int32", "uint32", "int64", "uint64", "string", "wstring",
}  # fmt: skip
SEPARATOR = "=" * 80


def _msg_file(type_name: str) -> Path:
    from ament_index_python.packages import get_package_share_directory

    package, _, name = type_name.partition("/msg/")
    if not name:
        package, _, name = type_name.partition("/")
    return Path(get_package_share_directory(package)) / "msg" / f"{name}.msg"


def _field_types(text: str, package: str) -> list[str]:
    """Nested (non-primitive) types a .msg file refers to, as ``pkg/Type``."""
    found = []
    for line in text.splitlines():
        tokens = line.split("#", 1)[0].split()
        if len(tokens) < 2 or "=" in tokens[1] or (len(tokens) > 2 and tokens[2][0] == "="):
            continue  # blank, or a constant (constants have primitive types)
        base = re.sub(r"\[.*?\]$", "", tokens[0])
        base = re.sub(r"<=\d+$", "", base)
        if base in PRIMITIVES:
            continue
        if base == "Header":
            base = "std_msgs/Header"
        found.append(base if "/" in base else f"{package}/{base}")
    return found


def message_definition(type_name: str) -> str:
    """The full ros2msg schema text of ``pkg/msg/Type`` with its dependencies appended."""
    root = type_name.replace("/msg/", "/")
    text = _msg_file(root).read_text()
    parts = [text.rstrip("\n")]
    seen = {root}
    queue = _field_types(text, root.split("/")[0])
    while queue:
        dep = queue.pop(0).replace("/msg/", "/")
        if dep in seen:
            continue
        seen.add(dep)
        dep_text = _msg_file(dep).read_text()
        parts.append(f"{SEPARATOR}\nMSG: {dep}\n{dep_text.rstrip(chr(10))}")
        queue.extend(_field_types(dep_text, dep.split("/")[0]))
    return "\n".join(parts) + "\n"


class McapRecorder:
    """Thread-safe MCAP writer of CDR messages; ``close()`` writes the summary (flush)."""

    def __init__(self, path: str | Path, chunk_size: int = 1 << 20) -> None:
        from mcap.writer import CompressionType, Writer

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = open(self.path, "wb")
        # Small chunks reach the disk often, so a crash loses at most about a chunk.
        self._writer = Writer(
            self._file, chunk_size=chunk_size, compression=CompressionType.LZ4
        )
        self._writer.start(profile="ros2", library="molmoact2-recorder")
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}
        self._sequence: dict[str, int] = {}
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.closed = False

    def add_topic(self, topic: str, type_name: str, definition: str | None = None) -> None:
        """Register ``topic``; ``definition`` is ``message_definition(type_name)`` if the
        caller already has it (read from disk otherwise)."""
        with self._lock:
            if topic in self._channels or self.closed:
                return
            if type_name not in self._schemas:
                self._schemas[type_name] = self._writer.register_schema(
                    name=type_name.replace("/msg/", "/").replace("/", "/msg/", 1),
                    encoding="ros2msg",
                    data=(definition or message_definition(type_name)).encode(),
                )
            self._channels[topic] = self._writer.register_channel(
                topic=topic, message_encoding="cdr", schema_id=self._schemas[type_name]
            )
            self._sequence[topic] = 0
            self.counts[topic] = 0

    def write(self, topic: str, data: bytes, log_time_ns: int, publish_time_ns: int) -> None:
        with self._lock:
            if self.closed or topic not in self._channels:
                return
            self._writer.add_message(
                channel_id=self._channels[topic],
                log_time=log_time_ns,
                publish_time=publish_time_ns,
                data=data,
                sequence=self._sequence[topic],
            )
            self._sequence[topic] += 1
            self.counts[topic] += 1

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._writer.finish()
            self._file.flush()
            self._file.close()


def read_messages(path: str | Path, topics: list[str] | None = None):
    """Decoded messages of a recording: yields (topic, log_time_ns, ros_msg)."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with open(path, "rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        for _schema, channel, message, decoded in reader.iter_decoded_messages(topics=topics):
            yield channel.topic, message.log_time, decoded
