"""Build the ``Policy`` a policy node runs: the local model or the remote client (no ROS).

The model (torch) and the client (httpx) are imported only when chosen, so the node starts fast
and a missing optional part fails with a message that says what is missing.
"""

from __future__ import annotations

import importlib
import os

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.policy_api import Policy
from molmoact2_policy.policy_node_params import PolicyNodeParams

# Test-only hook: "module:callable" taking PolicyNodeParams and returning a Policy. Lets ROS tests
# inject failure modes (an act() that raises) into a node running in a subprocess. Never set it
# in a deployment; the node logs a warning whenever it is used.
TEST_POLICY_ENV = "MOLMOACT2_TEST_POLICY_FACTORY"


class PolicyLoadError(RuntimeError):
    """The configured policy could not be built; the message says why and what to check."""


def make_policy(params: PolicyNodeParams, *, allow_test_override: bool = True) -> Policy:
    """The policy described by ``params`` (``inference`` local or remote)."""
    override = os.environ.get(TEST_POLICY_ENV, "") if allow_test_override else ""
    if override:
        return _from_override(override, params)
    try:
        spec = get_embodiment(params.embodiment)
    except ValueError as exc:
        raise PolicyLoadError(str(exc)) from None
    if params.inference == "remote":
        return _remote(params, spec)
    if params.inference == "local":
        return _local(params, spec)
    raise PolicyLoadError(f"inference {params.inference!r} is not 'local' or 'remote'")


def _local(params: PolicyNodeParams, spec) -> Policy:
    try:
        module = importlib.import_module("molmoact2_policy.model.loader")
    except ImportError as exc:
        raise PolicyLoadError(
            f"local inference needs molmoact2_policy.model.loader (torch, transformers): {exc}"
        ) from None
    try:
        return module.load_policy(
            params.checkpoint,
            spec.name,
            device=params.device,
            dtype=params.dtype,
            cuda_graph=params.cuda_graph,
            mode=params.mode,
            # The tiny preset's weights come from this seed too: keep it fixed when unseeded.
            seed=max(params.seed, 0),
            joint_names=tuple(params.joint_names),
        )
    except Exception as exc:  # any loader failure must become one clear message
        raise PolicyLoadError(
            f"could not load checkpoint {params.checkpoint!r} on {params.device} "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _remote(params: PolicyNodeParams, spec) -> Policy:
    try:
        module = importlib.import_module("molmoact2_policy.remote.client")
    except ImportError as exc:
        raise PolicyLoadError(
            f"remote inference needs molmoact2_policy.remote.client: {exc}"
        ) from None
    try:
        return module.RemotePolicy(
            params.server_url,
            spec,
            tuple(params.joint_names),
            timeout=params.request_timeout,
            token=params.server_token or None,
            image_encoding=params.image_encoding,
            jpeg_quality=params.jpeg_quality,
            transport=params.server_transport,
            image_size=params.remote_image_size,
        )
    except Exception as exc:
        raise PolicyLoadError(
            f"could not set up the remote policy at {params.server_url} "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _from_override(target: str, params: PolicyNodeParams) -> Policy:
    module_name, _, attribute = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
        return factory(params)
    except Exception as exc:
        raise PolicyLoadError(f"test policy factory {target!r} failed: {exc}") from exc
