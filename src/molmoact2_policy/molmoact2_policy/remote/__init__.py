"""Remote inference: a policy server for a GPU host and a ``Policy`` client for the robot.

``protocol`` is pure (numpy, cv2, msgpack); ``client`` adds httpx/websockets; only ``server``
imports FastAPI/uvicorn (and, through the local model, torch). Import the submodule you need.
"""
