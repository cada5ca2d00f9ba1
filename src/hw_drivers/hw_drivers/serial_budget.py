"""How much of a Feetech serial bus one control tick needs, and which control rates fit.

The STS bus is half duplex at ``baudrate`` with 8N1 framing: ``feetech_protocol.BITS_PER_BYTE``
(10) bit times per byte, as Feetech's SDK times it. One control tick of ``FeetechBackend`` is:

* one servo's health, interleaved (each tick the next servo in turn): READ of 4 bytes from
  ``HEALTH_ADDRESS`` (voltage, temperature, status): an 8-byte request and a 10-byte reply;
* the measurement: SYNC_READ of position and velocity (4 bytes) from every servo: a request of
  ``6 + 2 + n`` bytes and ``n`` replies of 10 bytes, the servos answering one after the other;
* the command: SYNC_WRITE of the 2-byte goal position: ``6 + 2 + 3n`` bytes, no reply.

Besides the wire, each reply waits for the servo's turnaround (Return_Delay_Time, 2 us per
count, which the backend sets to 0 as LeRobot does, plus the firmware's own reaction; we
assume at most ``SERVO_TURNAROUND``), and each request/reply transaction waits for the USB
serial adapter (``ADAPTER_LATENCY``: one full-speed USB frame, 1 ms, is our estimate for a
CDC-ACM adapter such as the CH343 of the SO-101 boards; an FTDI adapter with its default 16 ms
latency timer needs ``low_latency`` set). Health and measurement are two transactions per tick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hw_drivers import feetech_protocol as ft
from hw_drivers.can_budget import DEFAULT_MAX_BUS_LOAD

#: Assumed worst-case reaction of an STS servo from the end of a request to its reply [s].
SERVO_TURNAROUND = 100e-6
#: Assumed USB serial adapter latency per request/reply transaction [s].
ADAPTER_LATENCY = 1e-3

_POSITION_BYTES = (
    ft.STS_REGISTERS["Present_Position"].size + ft.STS_REGISTERS["Present_Velocity"].size
)
_GOAL_BYTES = ft.STS_REGISTERS["Goal_Position"].size


def health_read_bytes() -> int:
    """Wire bytes of one servo's interleaved health read (request + reply)."""
    return ft.packet_bytes(2) + ft.packet_bytes(ft.HEALTH_LENGTH)


def position_sync_read_bytes(servos: int) -> int:
    return ft.packet_bytes(2 + servos) + servos * ft.packet_bytes(_POSITION_BYTES)


def goal_sync_write_bytes(servos: int) -> int:
    return ft.packet_bytes(2 + servos * (1 + _GOAL_BYTES))


@dataclass(frozen=True)
class SerialBudget:
    """Bus time per control tick of one Feetech chain."""

    KIND: ClassVar[str] = "serial bus"

    baudrate: int  # bit/s
    servos: int
    max_bus_load: float = DEFAULT_MAX_BUS_LOAD
    turnaround: float = SERVO_TURNAROUND
    adapter_latency: float = ADAPTER_LATENCY
    transactions: int = 2  # health read, position sync read (the sync write has no reply)

    @property
    def byte_time(self) -> float:
        return ft.BITS_PER_BYTE / float(self.baudrate)

    @property
    def tick_bytes(self) -> int:
        return (
            health_read_bytes()
            + position_sync_read_bytes(self.servos)
            + goal_sync_write_bytes(self.servos)
        )

    @property
    def replies(self) -> int:
        return self.servos + 1

    @property
    def wire_time(self) -> float:
        return self.tick_bytes * self.byte_time

    @property
    def tick_bus_time(self) -> float:
        """Seconds one tick's exchanges take: wire, servo turnarounds, adapter latency."""
        return (
            self.wire_time
            + self.replies * self.turnaround
            + self.transactions * self.adapter_latency
        )

    @property
    def max_rate(self) -> float:
        return self.max_bus_load / self.tick_bus_time

    def load(self, rate: float) -> float:
        return self.tick_bus_time * rate

    def _parts(self) -> str:
        return (
            f"{self.tick_bytes} bytes at {self.baudrate} baud ({self.wire_time * 1e3:.2f} ms)"
            f" + {self.replies} replies x {self.turnaround * 1e6:.0f} us turnaround + "
            f"{self.transactions} x {self.adapter_latency * 1e3:g} ms adapter latency = "
            f"{self.tick_bus_time * 1e3:.2f} ms per tick"
        )

    def check(self, rate: float) -> str | None:
        """Why ``rate`` does not fit on this bus (with the numbers), or None when it does."""
        load = self.load(rate)
        if load <= self.max_bus_load:
            return None
        return (
            f"control_rate {rate:g} Hz does not fit the Feetech serial bus: {self.servos} servos,"
            f" {self._parts()}, {load:.0%} of the {1e3 / rate:.2f} ms period (at most "
            f"{self.max_bus_load:.0%} allowed); highest rate that fits: {self.max_rate:.0f} Hz"
        )

    def describe(self, rate: float) -> str:
        return (
            f"{self.servos} servos: {self._parts()}, {self.load(rate):.0%} load at {rate:g} Hz "
            f"(max {self.max_rate:.0f} Hz at {self.max_bus_load:.0%})"
        )
