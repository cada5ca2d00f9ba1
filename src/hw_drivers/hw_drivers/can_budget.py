"""How much of a CAN bus one control tick needs, and which control rates a bus can carry.

Frame length of classic CAN 2.0A (11-bit identifier) with ``n`` data bytes, worst-case bit
stuffing (Davis, Burns, Bril, Lukkien, "Controller Area Network (CAN) schedulability analysis:
refuted, revisited and revised", Real-Time Systems 35, 2007, eq. (1)):

    bits(n) = 8n + 47 + floor((34 + 8n - 1) / 4)

47 bits of fixed fields (SOF, identifier, RTR, IDE, r0, DLC, 15-bit CRC, CRC delimiter, ACK
slot and delimiter, 7-bit EOF, 3-bit interframe space), of which the 34 + 8n bits from SOF to
the end of the CRC are subject to stuffing (one stuff bit after every 5 equal bits, worst case
one per 4 after the first). An 8-byte DaMiao frame is thus at most 135 bit times: 135 us at
1 Mbit/s. i2rt's YAM driver budgets 130 bits per frame with a 1.1 safety factor
(``i2rt/motor_drivers/dm_driver.py``); we take the exact worst case and a larger margin.

One MIT exchange is one command frame and one feedback frame per motor; motors of one arm
share a bus, arms on separate buses run in parallel (one I/O thread each), so a tick costs the
bus time of the busiest bus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

#: Data bytes of every DaMiao MIT command and feedback frame.
DAMIAO_FRAME_BYTES = 8
#: Fraction of the control period the MIT exchange may use. The rest is headroom for one
#: in-tick resend to a motor whose reply was lost, error frames, the host's own latency and the
#: motors' reply turnaround (the budget counts bits on the wire only).
DEFAULT_MAX_BUS_LOAD = 0.7


def can_frame_bits(
    data_bytes: int = DAMIAO_FRAME_BYTES, *, worst_case_stuffing: bool = True
) -> int:
    """Bit times of one classic CAN 2.0A data frame, interframe space included."""
    if not 0 <= data_bytes <= 8:
        raise ValueError(f"classic CAN carries 0..8 data bytes, got {data_bytes}")
    stuffable = 34 + 8 * data_bytes
    stuff = (stuffable - 1) // 4 if worst_case_stuffing else 0
    return 8 * data_bytes + 47 + stuff


def can_frame_time(bitrate: int, data_bytes: int = DAMIAO_FRAME_BYTES) -> float:
    """Seconds one worst-case frame occupies the bus at ``bitrate`` bit/s."""
    if bitrate <= 0:
        raise ValueError(f"bitrate must be > 0, got {bitrate}")
    return can_frame_bits(data_bytes) / float(bitrate)


@dataclass(frozen=True)
class BusBudget:
    """Bus time per control tick on the busiest of the buses."""

    KIND: ClassVar[str] = "CAN"

    bitrate: int  # bit/s
    motors_per_bus: int  # on the busiest bus
    frames_per_motor: int = 2  # one command, one feedback
    max_bus_load: float = DEFAULT_MAX_BUS_LOAD

    @property
    def frame_bits(self) -> int:
        return can_frame_bits(DAMIAO_FRAME_BYTES)

    @property
    def tick_bus_time(self) -> float:
        """Seconds of bus time one tick's exchange needs (worst-case stuffing)."""
        frames = self.motors_per_bus * self.frames_per_motor
        return frames * self.frame_bits / float(self.bitrate)

    @property
    def max_rate(self) -> float:
        """Highest control rate [Hz] whose exchange stays within ``max_bus_load``."""
        return self.max_bus_load / self.tick_bus_time

    def load(self, rate: float) -> float:
        """Fraction of the bus a control rate uses."""
        return self.tick_bus_time * rate

    def check(self, rate: float) -> str | None:
        """Why ``rate`` does not fit on this bus (with the numbers), or None when it does."""
        load = self.load(rate)
        if load <= self.max_bus_load:
            return None
        return (
            f"control_rate {rate:g} Hz does not fit the CAN bus: {self.motors_per_bus} motors x "
            f"{self.frames_per_motor} frames x {self.frame_bits} bits (worst-case stuffing) at "
            f"{self.bitrate / 1e6:g} Mbit/s = {self.tick_bus_time * 1e3:.2f} ms of bus time per "
            f"tick, {load:.0%} of the {1e3 / rate:.2f} ms period (at most "
            f"{self.max_bus_load:.0%} allowed); highest rate that fits: {self.max_rate:.0f} Hz"
        )

    def describe(self, rate: float) -> str:
        return (
            f"{self.motors_per_bus} motors/bus at {self.bitrate / 1e6:g} Mbit/s: "
            f"{self.tick_bus_time * 1e3:.2f} ms bus time per tick, {self.load(rate):.0%} load at "
            f"{rate:g} Hz (max {self.max_rate:.0f} Hz at {self.max_bus_load:.0%})"
        )
