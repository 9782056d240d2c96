"""`gemma-train quantize` against bitsandbytes (CPU backend, PyPI): the same weights give the same
bytes, and bitsandbytes dequantizes our files to the values gemma-train uses."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import bitsandbytes.functional as F
from bitsandbytes.functional import QuantState

from conftest import our_logits, run

# Odd sizes on purpose: element counts not divisible by 64 or 256, and odd ones.
ODD_CONFIG = {
    "vocab_size": 300, "hidden_size": 45, "intermediate_size": 33, "num_hidden_layers": 3,
    "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 6, "global_head_dim": 12,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"], "sliding_window": 4,
    "hidden_size_per_layer_input": 7, "vocab_size_per_layer_input": 300, "final_logit_softcapping": 30.0,
    "initializer_range": 0.05,
}


@pytest.fixture(scope="module")
def checkpoints(gemma_train, tmp_path_factory):
    root = tmp_path_factory.mktemp("bnb")
    (root / "odd.json").write_text(json.dumps(ODD_CONFIG))
    run(gemma_train, "init", "--config", root / "odd.json", "--out", root / "dense", "--dtype", "bf16", "--seed", "3")
    run(gemma_train, "quantize", "--model", root / "dense", "--out", root / "nf4")
    return root / "dense", root / "nf4"


def quant_state_of(tensors, key):
    parts = {k[len(key) + 1:]: v for k, v in tensors.items() if k.startswith(key + ".")}
    return QuantState.from_dict(parts, device=torch.device("cpu"))


def test_same_bytes_as_bitsandbytes(checkpoints):
    dense_dir, nf4_dir = checkpoints
    dense = load_file(dense_dir / "model.safetensors")
    ours = load_file(nf4_dir / "model.safetensors")
    quantized = [k[: -len(".quant_state.bitsandbytes__nf4")] for k in ours if k.endswith("bitsandbytes__nf4")]
    assert len(quantized) >= 20
    odd = 0
    for key in quantized:
        w = dense[key]
        odd += w.numel() % 2
        packed, state = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        assert torch.equal(ours[key], packed), key
        expected = state.as_dict(packed=True)
        for suffix in ("absmax", "quant_map", "nested_absmax", "nested_quant_map"):
            assert torch.equal(ours[f"{key}.{suffix}"], expected[suffix]), (key, suffix)
        ours_state = json.loads(bytes(ours[f"{key}.quant_state.bitsandbytes__nf4"].tolist()))
        theirs_state = json.loads(bytes(expected["quant_state.bitsandbytes__nf4"].tolist()))
        assert ours_state == theirs_state, key
        assert bytes(ours[f"{key}.quant_state.bitsandbytes__nf4"].tolist()) == \
            bytes(expected["quant_state.bitsandbytes__nf4"].tolist()), key
    assert odd > 0, "no weight with an odd element count was exercised"
    config = json.loads((nf4_dir / "config.json").read_text())
    assert config["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    assert config["quantization_config"]["bnb_4bit_use_double_quant"] is True


def test_bitsandbytes_dequantizes_our_file_to_our_values(gemma_train, checkpoints, tmp_path):
    dense_dir, nf4_dir = checkpoints
    ours = load_file(nf4_dir / "model.safetensors")
    dense = load_file(dense_dir / "model.safetensors")
    rebuilt = {}
    for key, value in dense.items():
        if f"{key}.quant_state.bitsandbytes__nf4" in ours:
            rebuilt[key] = F.dequantize_4bit(ours[key], quant_state_of(ours, key)).contiguous()
            assert rebuilt[key].shape == value.shape
        else:
            rebuilt[key] = value
    out = tmp_path / "dequantized"
    out.mkdir()
    save_file(rebuilt, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text((dense_dir / "config.json").read_text())
    ids = list(np.random.default_rng(1).integers(0, 300, size=11))
    from_bnb_values = our_logits(gemma_train, out, ids, tmp_path)
    from_nf4_file = our_logits(gemma_train, nf4_dir, ids, tmp_path)
    assert np.array_equal(from_bnb_values, from_nf4_file)
    # and the NF4 weights stay near the dense ones (4-bit: about 10% RMS error)
    for key, value in rebuilt.items():
        if f"{key}.quant_state.bitsandbytes__nf4" in ours:
            err = (value.float() - dense[key].float()).norm() / dense[key].float().norm()
            assert err < 0.15, (key, float(err))
