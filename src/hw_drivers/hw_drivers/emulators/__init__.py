"""In-process emulators of robot hardware links, for tests and hardware-free demos.

They answer on the same transport the real backend uses (python-can's ``virtual`` bus for
DaMiao CAN motors, a pseudo-terminal for the Feetech serial bus), so a backend under test runs
its real protocol code end to end, including retries on injected faults.
"""
