"""weights_io: safetensors read tensor by tensor into the target dtype, malformed files named."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from molmoact2_policy.model.checkpoint import build_tiny, load_checkpoint, write_tiny_checkpoint
from molmoact2_policy.model.weights_io import WeightsError, WeightSource, read_header


@pytest.fixture
def tensors_file(tmp_path):
    tensors = {
        "a": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "b": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
        "c": torch.tensor([3, 4], dtype=torch.int64),
        "empty": torch.zeros(0, 5),
    }
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def test_reads_each_tensor_exactly_and_casts_only_floats(tensors_file):
    path, tensors = tensors_file
    with WeightSource.open([path]) as source:
        assert set(source) == set(tensors)
        for name, tensor in tensors.items():
            assert torch.equal(source[name], tensor)
            assert source[name].dtype == tensor.dtype
    with WeightSource.open([path], dtype=torch.bfloat16) as source:
        assert source["a"].dtype == torch.bfloat16
        assert torch.equal(source["a"], tensors["a"].bfloat16())
        assert source["c"].dtype == torch.int64  # ids are never cast
        assert source.read_stored("a").dtype == torch.float32
        out = torch.empty(3, 4, dtype=torch.float16)
        source.read_into("a", out)
        assert torch.equal(out, tensors["a"].half())


def _corrupt(path, header_json: bytes, data: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header_json)) + header_json + data)


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        (b"{not json", b"", "header is not valid JSON"),
        (json.dumps({"x": {"dtype": "F8", "shape": [1], "data_offsets": [0, 1]}}).encode(),
         b"\0", "unsupported dtype 'F8'"),
        (json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode(),
         b"\0" * 8, "does not hold"),
        (json.dumps({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}).encode(),
         b"\0" * 4, "malformed shape"),
    ],
)
def test_malformed_headers_are_named(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    _corrupt(path, header, data)
    with pytest.raises(WeightsError, match=message):
        read_header(path)
    path.write_bytes(b"\x01\x00")
    with pytest.raises(WeightsError, match="unreadable safetensors"):
        read_header(path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_checkpoint_loads_straight_into_the_target_dtype(tmp_path, dtype):
    path = write_tiny_checkpoint(tmp_path / "tiny", seed=0, embodiments=["droid"])
    model, *_ = load_checkpoint(path, dtype=dtype)
    reference, *_ = build_tiny(0, ["droid"])
    assert {p.dtype for p in model.parameters()} == {dtype}
    for (name, ours), (_, theirs) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(ours, theirs.to(dtype)), name
    rope = model.vlm.model.language_model.rotary_emb.inv_freq
    assert rope.dtype == torch.float32  # computed tables stay fp32 under bf16
