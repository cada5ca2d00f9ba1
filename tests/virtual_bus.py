"""The freeze-detector setting for DaMiao backends whose buses run on virtual time.

``TimedDamiaoBus`` moves its clock only when the host waits on it, so an exchange takes no wall
time of its own; the backend's wall-clock freeze detector (``io_timeout``, 0.5 s by default) would
then only measure how long a loaded test host left the bus's I/O thread unscheduled. It tripped
in CI that way (the gripper calibration's ~1000 exchanges, and once mid-motion in
test_execution_modes: the loop faulted and held the arm short of its target). Every rig that
steps a backend on virtual time sets this instead; freezes themselves are tested with a bus that
really hangs (test_damiao_bus.py).
"""

VIRTUAL_TIME_IO_TIMEOUT = 60.0  # [s] wall
