"""Adapters and merged checkpoints against the Python stack: `peft` loads the adapters gemma-train
writes (LoRA and DoRA) onto transformers' Gemma 4 and computes our `logits --adapter`; gemma-train
loads adapters that `peft` saved; `merge` gives the unmerged logits and transformers loads its
output; bad input to merge and quantize leaves nothing behind."""
import json
import os

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import Gemma4ForCausalLM, Gemma4ForConditionalGeneration

from conftest import relative_error, run
from test_cli import expect_error

IDS = [2, 5, 9, 11, 17, 3, 40, 8, 1, 30]
TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def logits(gemma_train, model_dir, tmp_path, *extra, dtype="f32"):
    out = tmp_path / f"logits-{len(os.listdir(tmp_path))}.bin"
    run(gemma_train, "logits", "--model", model_dir, "--ids", ",".join(map(str, IDS)), "--out", out,
        "--dtype", dtype, *extra)
    return np.fromfile(out, dtype="<f4").reshape(len(IDS), -1)


def hf_model(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    multimodal = "Gemma4ForConditionalGeneration" in config.get("architectures", [])
    cls = Gemma4ForConditionalGeneration if multimodal else Gemma4ForCausalLM
    return cls.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_logits(model):
    with torch.no_grad():
        return model(input_ids=torch.tensor([IDS])).logits[0].float().numpy()


@pytest.fixture(scope="module", params=[("tiny-e2b", True), ("tiny-31b", False)],
                ids=["tiny-e2b-text-only", "tiny-31b-multimodal"])
def base(request, gemma_train, tmp_path_factory):
    config, text_only = request.param
    out = tmp_path_factory.mktemp(config) / "base"
    run(gemma_train, "init", "--config", config, "--out", out, "--dtype", "f32", "--seed", "4",
        *(["--text-only"] if text_only else []))
    return out


def make_adapter(gemma_train, model_dir, out, dora, rank=4, seed=3, alpha=2):
    """A gemma-train adapter with B random too (PEFT's init_lora_weights=False), so it changes the
    model. DoRA magnitudes start at ‖W + ΔW‖, where DoRA equals LoRA: they are then rescaled row by
    row, as training would move them, so the magnitude path is exercised."""
    run(gemma_train, "adapter", "--model", model_dir, "--out", out, "--r", rank, "--alpha", alpha,
        "--init", "random", "--target-modules", TARGETS, "--seed", seed, *(["--dora"] if dora else []))
    if dora:
        path = out / "adapter_model.safetensors"
        tensors = load_file(path)
        generator = torch.Generator().manual_seed(seed)
        for key, value in tensors.items():
            if key.endswith("lora_magnitude_vector"):
                tensors[key] = value * (1 + 0.2 * torch.rand(value.shape, generator=generator))
        save_file(tensors, path, metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_peft_loads_our_adapter(gemma_train, base, tmp_path, dora):
    adapter = make_adapter(gemma_train, base, tmp_path / "adapter", dora)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["use_dora"] is dora and config["r"] == 4
    ours = logits(gemma_train, base, tmp_path, "--adapter", adapter)
    plain = logits(gemma_train, base, tmp_path)
    assert relative_error(ours, plain) > 1e-3  # the adapter matters

    model = PeftModel.from_pretrained(hf_model(base), adapter)
    # Every tensor of our file went into a PEFT module.
    ours_keys = set(load_file(adapter / "adapter_model.safetensors"))
    assert ours_keys == set(get_peft_model_state_dict(model))
    assert relative_error(hf_logits(model), ours) < 1e-4


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_we_load_an_adapter_peft_saved(gemma_train, base, tmp_path, dora):
    torch.manual_seed(0)
    model = get_peft_model(hf_model(base), LoraConfig(
        r=8, lora_alpha=16, target_modules=TARGETS.split(","), use_dora=dora, init_lora_weights=False))
    with torch.no_grad():  # DoRA magnitudes away from their init too
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "peft")
    expected = hf_logits(model)
    ours = logits(gemma_train, base, tmp_path, "--adapter", tmp_path / "peft")
    assert relative_error(ours, expected) < 1e-4
    # The same adapter as the other Gemma 4 class spells it (trained on Gemma4ForCausalLM over a
    # multimodal checkpoint, or the reverse): loaded and merged onto this base all the same.
    other = respelt(tmp_path / "peft", tmp_path / "respelt")
    assert np.array_equal(logits(gemma_train, base, tmp_path, "--adapter", other), ours)
    run(gemma_train, "merge", "--model", base, "--adapter", other, "--out", tmp_path / "merged", "--dtype", "f32")
    assert relative_error(logits(gemma_train, tmp_path / "merged", tmp_path), ours) < 1e-5


def respelt(adapter, out):
    multimodal, text_only = "base_model.model.model.language_model.", "base_model.model.model."
    tensors = load_file(adapter / "adapter_model.safetensors")

    def swap(key):
        if key.startswith(multimodal):
            return text_only + key[len(multimodal):]
        return multimodal + key[len(text_only):]
    out.mkdir()
    save_file({swap(k): v for k, v in tensors.items()}, out / "adapter_model.safetensors", metadata={"format": "pt"})
    (out / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    return out


def test_merge_equals_the_unmerged_adapter_and_loads_in_transformers(gemma_train, base, tmp_path):
    for dora in (False, True):
        adapter = make_adapter(gemma_train, base, tmp_path / f"adapter-{dora}", dora)
        unmerged = logits(gemma_train, base, tmp_path, "--adapter", adapter)
        merged_dir = tmp_path / f"merged-{dora}"
        run(gemma_train, "merge", "--model", base, "--adapter", adapter, "--out", merged_dir,
            "--dtype", "f32", "--shard-size", "1")
        assert (merged_dir / "model.safetensors.index.json").exists()  # sharded with an index
        assert (merged_dir / "generation_config.json").exists()
        assert relative_error(logits(gemma_train, merged_dir, tmp_path), unmerged) < 1e-5

        model, info = type(hf_model(base)).from_pretrained(merged_dir, dtype=torch.float32,
                                                           output_loading_info=True)
        assert not info["missing_keys"] and not info["mismatched_keys"], info
        assert relative_error(hf_logits(model.eval()), unmerged) < 1e-4

        # bf16: every merged tensor is the f32 merge rounded to bf16 (relative error < 1e-2 per tensor).
        bf16_dir = tmp_path / f"merged-bf16-{dora}"
        run(gemma_train, "merge", "--model", base, "--adapter", adapter, "--out", bf16_dir)
        assert json.loads((bf16_dir / "config.json").read_text()).get("dtype", "bfloat16") == "bfloat16"
        merged_f32, merged_bf16 = load_checkpoint(merged_dir), load_checkpoint(bf16_dir)
        assert merged_f32.keys() == merged_bf16.keys()
        for key, value in merged_bf16.items():
            assert value.dtype == torch.bfloat16, key
            assert relative_error(value.float().numpy(), merged_f32[key].numpy()) < 1e-2, key
        # (Logits computed in bf16 are not compared: on random tiny Gemma 4 models bf16 rounding
        # alone moves them by 2-15%, with transformers' own init too.)


def load_checkpoint(folder):
    tensors = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(folder / name))
    return tensors


def test_merge_onto_an_nf4_base(gemma_train, base, tmp_path):
    """A bitsandbytes NF4 checkpoint: the adapter trained on the NF4 base (logits computed on the NF4
    weights) equals the dequantized + merged checkpoint, and the output has no quantization_config."""
    nf4 = tmp_path / "nf4"
    run(gemma_train, "quantize", "--model", base, "--out", nf4)
    adapter = make_adapter(gemma_train, nf4, tmp_path / "adapter", dora=True)
    unmerged = logits(gemma_train, nf4, tmp_path, "--adapter", adapter)
    merged = tmp_path / "merged"
    run(gemma_train, "merge", "--model", nf4, "--adapter", adapter, "--out", merged, "--dtype", "f32")
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())
    assert relative_error(logits(gemma_train, merged, tmp_path), unmerged) < 1e-5
    # Quantizing really changed the weights: the NF4 base differs from the original one.
    stored = logits(gemma_train, nf4, tmp_path)
    assert relative_error(stored, logits(gemma_train, base, tmp_path)) > 1e-3
    # --load-in-4bit quantizes the dense checkpoint while loading: the same NF4 numbers (the MoE
    # router, which the file holds in NF4 but --load-in-4bit keeps dense, is absent here).
    streamed = logits(gemma_train, base, tmp_path, "--load-in-4bit")
    assert relative_error(streamed, stored) < 1e-6


def no_leftovers(folder, before):
    assert sorted(os.listdir(folder)) == before, "partial or temporary output left behind"


def test_bad_input_to_merge_and_quantize(gemma_train, base, tmp_path):
    adapter = make_adapter(gemma_train, base, tmp_path / "adapter", dora=False)
    other = tmp_path / "other"
    run(gemma_train, "init", "--config", "tiny-moe", "--out", other, "--dtype", "f32", "--text-only")
    other_adapter = make_adapter(gemma_train, other, tmp_path / "other-adapter", dora=False)
    out = tmp_path / "out"
    before = sorted(os.listdir(tmp_path))

    merge = ["merge", "--model", base, "--out", out, "--adapter"]
    expect_error(gemma_train, merge + [other_adapter], "another base")
    no_leftovers(tmp_path, before)

    bad_rank = tmp_path / "bad-rank"
    bad_rank.mkdir()
    config = json.loads((adapter / "adapter_config.json").read_text())
    (bad_rank / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file(tensors, bad_rank / "adapter_model.safetensors", metadata={"format": "pt"})
    before = sorted(os.listdir(tmp_path))
    expect_error(gemma_train, merge + [bad_rank], "rank mismatch")
    no_leftovers(tmp_path, before)

    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "adapter_config.json").write_text(json.dumps(config))
    dropped = next(k for k in tensors if k.endswith("lora_B.weight"))
    save_file({k: v for k, v in tensors.items() if k != dropped}, missing / "adapter_model.safetensors",
              metadata={"format": "pt"})
    before = sorted(os.listdir(tmp_path))
    expect_error(gemma_train, merge + [missing], "missing tensor")
    no_leftovers(tmp_path, before)

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    expect_error(gemma_train, merge + [adapter], "already exists")
    expect_error(gemma_train, ["quantize", "--model", base, "--out", out], "already exists")
    assert os.listdir(out) == ["keep.txt"]

    # A base checkpoint with a tensor missing: quantize and merge refuse it before writing anything.
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(base):
        if not name.endswith(".safetensors"):
            (broken / name).write_bytes((base / name).read_bytes())
    weights = load_file(base / "model.safetensors")
    gone = next(k for k in weights if k.endswith("mlp.down_proj.weight"))
    save_file({k: v for k, v in weights.items() if k != gone}, broken / "model.safetensors",
              metadata={"format": "pt"})
    before = sorted(os.listdir(tmp_path))
    expect_error(gemma_train, ["quantize", "--model", broken, "--out", tmp_path / "q"], gone)
    expect_error(gemma_train, ["merge", "--model", broken, "--adapter", adapter, "--out", tmp_path / "m"], gone)
    no_leftovers(tmp_path, before)
    # Quantizing twice is refused.
    nf4 = tmp_path / "nf4"
    run(gemma_train, "quantize", "--model", base, "--out", nf4)
    expect_error(gemma_train, ["quantize", "--model", nf4, "--out", tmp_path / "nf4-again"], "already")
