"""MCAP recording of serialized ROS 2 messages, readable by ros2 bag, Foxglove and rosbags.

Messages are written exactly as they arrived on the wire (CDR bytes from a raw subscription),
so recording costs no deserialization. Each channel's schema is the ``ros2msg`` definition
text: the message's .msg file followed by every nested type's, as rosbag2 writes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

PRIMITIVES = {
    "bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16",
    "int32", "uint32", "int64", "uint64", "string", "wstring",
}  # fmt: skip
SEPARATOR = "=" * 80
MCAP_MAGIC = b"\x89MCAP0\r\n"
LOG = logging.getLogger("molmoact2.recording")


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
    """Thread-safe MCAP writer of CDR messages; ``close()`` writes the summary (flush).

    An existing file is never overwritten: when ``path`` exists (a relaunch with the same
    ``file_name``, two recorders started in the same second) the recording goes to
    ``<stem>_1<suffix>``, ``_2``, ... and ``path`` says which. A write that fails (disk full,
    file size limit, I/O error) is logged once with the file and the error; the recording
    stops there (the file keeps what reached it, readable up to that point) and later
    messages are counted in ``dropped``: the caller keeps running.
    """

    def __init__(self, path: str | Path, chunk_size: int = 1 << 20) -> None:
        from mcap.writer import CompressionType, Writer

        self.path, self._file = _create_new(Path(path))
        if self.path != Path(path):
            LOG.warning("%s exists: recording to %s instead", path, self.path)
        # Small chunks reach the disk often, so a crash loses at most about a chunk.
        self._writer = Writer(
            self._file, chunk_size=chunk_size, compression=CompressionType.LZ4
        )
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}
        self._sequence: dict[str, int] = {}
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.dropped = 0
        self.failed = ""  # why writing stopped; "" while it works
        self.deleted = False  # the file was removed from its directory while open
        self.closed = False
        with self._lock:
            self._guarded(lambda: self._writer.start(profile="ros2", library="molmoact2-recorder"))
            # On disk at once: a recorder killed in its first second leaves an MCAP file (no
            # messages, incomplete), not an empty one that reads as "not a recording".
            self._guarded(self._file.flush)
        if self.failed:
            with contextlib.suppress(OSError):
                self._file.close()
            raise OSError(self.failed)

    def _guarded(self, operation: Callable[[], Any]) -> bool:
        """Run a write to the file; on failure remember why and say so once (lock held)."""
        try:
            operation()
        except OSError as err:
            self.failed = f"writing {self.path} failed: {err.strerror or err}"
            total = sum(self.counts.values())
            LOG.error("%s; recording stopped after %d messages", self.failed, total)
            return False
        return True

    def add_topic(self, topic: str, type_name: str, definition: str | None = None) -> None:
        """Register ``topic``; ``definition`` is ``message_definition(type_name)`` if the
        caller already has it (read from disk otherwise)."""
        with self._lock:
            if topic in self._channels or self.closed or self.failed:
                return
            if type_name not in self._schemas:
                data = (definition or message_definition(type_name)).encode()
                name = type_name.replace("/msg/", "/").replace("/", "/msg/", 1)
                ids: list[int] = []
                if not self._guarded(
                    lambda: ids.append(
                        self._writer.register_schema(name=name, encoding="ros2msg", data=data)
                    )
                ):
                    return
                self._schemas[type_name] = ids[0]
            ids = []
            if not self._guarded(
                lambda: ids.append(
                    self._writer.register_channel(
                        topic=topic, message_encoding="cdr", schema_id=self._schemas[type_name]
                    )
                )
            ):
                return
            self._channels[topic] = ids[0]
            self._sequence[topic] = 0
            self.counts[topic] = 0

    def write(self, topic: str, data: bytes, log_time_ns: int, publish_time_ns: int) -> None:
        with self._lock:
            if self.closed or topic not in self._channels:
                return
            if self.failed:
                self.dropped += 1
                return
            if not self._guarded(
                lambda: self._writer.add_message(
                    channel_id=self._channels[topic],
                    log_time=log_time_ns,
                    publish_time=publish_time_ns,
                    data=data,
                    sequence=self._sequence[topic],
                )
            ):
                self.dropped += 1
                return
            self._sequence[topic] += 1
            self.counts[topic] += 1

    def flush(self) -> None:
        """Write the chunk in progress to the file now (call it periodically: a recorder
        killed without a chance to close loses only what came after the last flush)."""
        with self._lock:
            if not self.closed and not self.failed:
                self._guarded(self._writer.flush)
                self._check_deleted()

    def _check_deleted(self) -> None:
        # A file removed while open (`rm -r out/`) takes every later write with it when
        # the recorder closes: nothing would say so.
        if self.deleted:
            return
        with contextlib.suppress(OSError):
            self.deleted = os.fstat(self._file.fileno()).st_nlink == 0
        if self.deleted:
            LOG.error("%s was deleted while recording: what is recorded now is lost", self.path)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if not self.failed:
                self._guarded(self._writer.finish)
                self._check_deleted()
            if not self.failed:
                self._guarded(self._file.close)
            with contextlib.suppress(OSError):  # already said why; the descriptor must go
                self._file.close()


def _create_new(path: Path) -> tuple[Path, BinaryIO]:
    """Open a new file at ``path``, or beside it with a numbered suffix when it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = path
    for number in range(1, 10_000):
        try:
            return candidate, open(candidate, "xb")
        except FileExistsError:
            candidate = path.with_name(f"{path.stem}_{number}{path.suffix}")
    raise FileExistsError(f"{path} and 9999 numbered variants of it exist")


class RecordingError(ValueError):
    """A file that is not a readable recording; the message says why, in one line."""


@dataclass
class ReadInfo:
    """How a read of a recording went, for the caller to say so (``read_messages(info=...)``).

    ``complete`` is False when the file has no intact summary (the recorder was killed, the
    disk filled up, the file was cut short): its messages were read in file order up to the
    first damaged record, and ``problem`` says where reading stopped.
    """

    complete: bool = True
    problem: str = ""
    messages: int = 0
    undecodable: int = 0


def read_messages(
    path: str | Path, topics: list[str] | None = None, info: ReadInfo | None = None
) -> Iterator[tuple[str, int, Any]]:
    """Decoded messages of a recording: yields (topic, log_time_ns, ros_msg).

    A file that is not an MCAP recording (missing, empty, another format) raises
    ``RecordingError``. One without its summary is read as far as it is intact (whole chunks:
    their CRC is checked), a chunk that fails its check is left out, and ``info`` says the
    read is incomplete; a warning is logged too. A message whose bytes do not decode with its
    channel's schema is skipped and counted.
    """
    from mcap.reader import SeekingReader

    info = info if info is not None else ReadInfo()
    path = Path(path)
    try:
        stream = open(path, "rb")
    except OSError as err:
        raise RecordingError(f"{path}: cannot open: {err.strerror or err}") from err
    with stream:
        head = stream.read(len(MCAP_MAGIC))
        if not head:
            raise RecordingError(f"{path}: empty file (0 bytes), not a recording")
        if head != MCAP_MAGIC:
            if MCAP_MAGIC.startswith(head):
                raise RecordingError(f"{path}: only {len(head)} bytes, cut short at its start")
            raise RecordingError(f"{path}: not an MCAP file (no MCAP magic at its start)")
        stream.seek(0)
        reader = SeekingReader(stream, validate_crcs=True)
        try:
            summary = reader.get_summary()
        except Exception:  # a torn end fails in many ways: read what is intact
            summary = None
        if summary is None or not summary.chunk_indexes:
            records = _sequential_messages(stream, topics, info, path)
        else:
            records = _indexed_messages(stream, summary, topics, info, path)
        decoders: dict[int, Any] = {}
        for schema, channel, message in records:
            try:
                decoded = _decode(decoders, schema, channel, message)
            except Exception as err:  # malformed CDR fails in many ways
                info.undecodable += 1
                if info.undecodable == 1:
                    LOG.warning("%s: a message on %s does not decode (%s); skipped",
                                path, channel.topic, _describe(err))
                continue
            info.messages += 1
            yield channel.topic, message.log_time, decoded



def _describe(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _decode(decoders: dict[int, Any], schema: Any, channel: Any, message: Any) -> Any:
    from mcap_ros2.decoder import DecoderFactory

    decoder = decoders.get(channel.id)
    if decoder is None:
        decoder = DecoderFactory().decoder_for(channel.message_encoding, schema)
        if decoder is None:
            raise RecordingError(f"no decoder for encoding {channel.message_encoding!r}")
        decoders[channel.id] = decoder
    return decoder(message.data)


def _indexed_messages(
    stream: BinaryIO, summary: Any, topics: list[str] | None, info: ReadInfo, path: Path
) -> Iterator[Any]:
    """Messages chunk by chunk through the summary's index, in log-time order for chunks that
    do not overlap in time (a recorder's do not). A chunk that fails its CRC or does not
    decompress (a damaged disk block) is left out and counted; the rest are read."""
    from mcap.data_stream import ReadDataStream
    from mcap.records import Chunk, Message
    from mcap.stream_reader import breakup_chunk

    wanted = None
    if topics is not None:
        wanted = {cid for cid, c in summary.channels.items() if c.topic in set(topics)}
    damaged: list[str] = []
    order = sorted(
        summary.chunk_indexes, key=lambda c: (c.message_start_time, c.chunk_start_offset)
    )
    for index in order:
        if wanted is not None and index.message_index_offsets:
            if not wanted & set(index.message_index_offsets):
                continue  # no message of the wanted topics in this chunk
        try:
            stream.seek(index.chunk_start_offset + 1 + 8)  # past the opcode and the length
            chunk = Chunk.read(ReadDataStream(stream))
            records = breakup_chunk(chunk, validate_crc=True)
        except Exception as err:  # a damaged chunk fails in many ways
            damaged.append(f"at byte {index.chunk_start_offset}: {_describe(err)}")
            continue
        messages = [r for r in records if isinstance(r, Message)]
        messages.sort(key=lambda m: m.log_time)  # stable: equal times keep the file's order
        for message in messages:
            channel = summary.channels.get(message.channel_id)
            if channel is None or (wanted is not None and message.channel_id not in wanted):
                continue
            yield summary.schemas.get(channel.schema_id), channel, message
    if damaged:
        info.complete = False
        info.problem = (
            f"{len(damaged)} of {len(order)} chunks are damaged and were left out "
            f"(the first {damaged[0]})"
        )
        LOG.warning("%s: damaged recording: %s", path, info.problem)


def _sequential_messages(
    stream: BinaryIO, topics: list[str] | None, info: ReadInfo, path: Path
) -> Iterator[Any]:
    """Messages in file order up to the first damaged or missing record (a killed recorder's
    file ends inside a chunk: the chunks before it are whole and CRC-checked)."""
    from mcap.records import Channel, DataEnd, Footer, Message, Schema
    from mcap.stream_reader import StreamReader

    size = stream.seek(0, 2)
    stream.seek(0)
    schemas: dict[int, Any] = {}
    channels: dict[int, Any] = {}
    records = StreamReader(stream, validate_crcs=True).records
    wanted = set(topics) if topics is not None else None
    ended = False
    stopped = ""
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except Exception as err:  # the torn end fails in many ways
            stopped = _describe(err)
            break
        if isinstance(record, Schema):
            schemas[record.id] = record
        elif isinstance(record, Channel):
            channels[record.id] = record
        elif isinstance(record, (DataEnd, Footer)):
            ended = True  # every message is before DataEnd: only the summary is damaged
        elif isinstance(record, Message):
            channel = channels.get(record.channel_id)
            if channel is None or (wanted is not None and channel.topic not in wanted):
                continue
            yield schemas.get(channel.schema_id), channel, record
    if not ended:
        info.complete = False
        info.problem = (
            "no summary (still being recorded, or the recorder was killed or its disk filled "
            f"up): of its {size} bytes, the whole chunks before the torn end were read"
        )
        if stopped and stopped != "EndOfFile":
            info.problem += f" (the end: {stopped})"
        LOG.warning("%s: incomplete recording: %s", path, info.problem)
