"""The reliability suite's tally: faults injected and survived, fuzzing, soak figures.

Tests record what they did through the session-scoped ``reliability`` fixture; the terminal
summary prints one table at the end of the run (only when some test recorded something).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest


@dataclass
class ReliabilityTally:
    faults_injected: int = 0
    faults_survived: int = 0
    fault_kinds: list[str] = field(default_factory=list)
    fuzz_messages: int = 0
    fuzz_unsafe_commands: int = 0
    fuzz_commands_checked: int = 0
    soak_seconds: float = 0.0
    memory_growth: dict[str, float] = field(default_factory=dict)  # process -> fraction
    figures: dict[str, str] = field(default_factory=dict)  # free-form measured figures

    def fault(self, kind: str) -> FaultRecord:
        """Count one injected fault; call ``.survived()`` on the result once recovery is shown."""
        self.faults_injected += 1
        self.fault_kinds.append(kind)
        return FaultRecord(self, kind)

    @property
    def empty(self) -> bool:
        return not (
            self.faults_injected or self.fuzz_messages or self.soak_seconds or self.figures
        )


@dataclass
class FaultRecord:
    tally: ReliabilityTally
    kind: str
    done: bool = False

    def survived(self) -> None:
        if not self.done:
            self.done = True
            self.tally.faults_survived += 1


_TALLY = ReliabilityTally()


@pytest.fixture(scope="session")
def reliability() -> ReliabilityTally:
    return _TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    tally = _TALLY
    if tally.empty:
        return
    write = terminalreporter.write_line
    terminalreporter.section("reliability suite")
    write(f"{'faults injected / survived':<34} {tally.faults_injected} / {tally.faults_survived}")
    if tally.fault_kinds:
        write(f"{'  kinds':<34} {', '.join(sorted(set(tally.fault_kinds)))}")
    write(
        f"{'fuzzed messages sent':<34} {tally.fuzz_messages}"
        f"  (backend commands checked: {tally.fuzz_commands_checked})"
    )
    write(f"{'unsafe commands (must be 0)':<34} {tally.fuzz_unsafe_commands}")
    write(f"{'load/soak duration':<34} {tally.soak_seconds:.0f} s")
    for name, value in sorted(tally.memory_growth.items()):
        write(f"{'  memory growth ' + name:<34} {100 * value:+.2f} %")
    for name, value in sorted(tally.figures.items()):
        write(f"{name:<34} {value}")
