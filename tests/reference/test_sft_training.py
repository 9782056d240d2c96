"""SFT training against TRL 1.16 + PEFT 0.21.2 on a small random Gemma 4: from the same adapter, on
the same rows (plain text, prompt/completion, and conversations: messages and conversational
prompt/completion; one batch holding every row, so the sampler's order cannot matter), in float32
with 32-bit AdamW, our first step's loss and grad_norm and the adapter after three steps equal
TRL's SFTTrainer run; packed (bfd, padding-free) batches give the loss of unpacked ones."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, official_template, run

trl = pytest.importorskip("trl")

ROWS_TEXT = [
    {"text": "The river runs past the old mill and into the valley."},
    {"text": "Seven boats sailed at dawn; three came back before noon."},
    {"text": "A short one."},
    {"text": "def add(a, b):\n    return a + b\n"},
    {"text": " ".join(["Longer rows are cut to max_length tokens, keeping the start."] * 6)},
    {"text": "Numbers like 1234 and 56.78 are split into digits."},
]
ROWS_COMPLETION = [
    {"prompt": "The capital of France is", "completion": " Paris."},
    {"prompt": "Two plus two equals", "completion": " four, as everyone knows."},
    {"prompt": "Translate 'cat' to French:", "completion": " chat"},
    {"prompt": "Write a haiku about rain.\n", "completion": "Soft rain on the roof\nthe garden drinks in silence\nclouds move to the east"},
]
# Conversations in the official Gemma 4 template that trl ships (as tests/reference/test_sft_data.py
# uses it): system turns, multi-turn ones, and rows over MAX_LENGTH (both sides keep their start;
# the third completion row keeps 2 of its completion tokens).
ROWS_MESSAGES = [
    {"messages": [{"role": "system", "content": "Answer in one word."},
                  {"role": "user", "content": "The sky's color?"}, {"role": "assistant", "content": "Blue."}]},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                  {"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}]},
    {"messages": [{"role": "user", "content": "Write a line about rain."},
                  {"role": "assistant", "content": "Soft rain on the roof."}]},
    {"messages": [{"role": "system", "content": "You are a patient teacher who explains things step by step."},
                  {"role": "user", "content": "Why do boats float on water?"},
                  {"role": "assistant", "content": "A boat pushes water aside; the water pushes back up with a force "
                                                   "equal to the weight it displaced, which holds the boat up."}]},
]
ROWS_CONV_COMPLETION = [
    {"prompt": [{"role": "user", "content": "The capital of France?"}],
     "completion": [{"role": "assistant", "content": "Paris."}]},
    {"prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Two plus two?"}],
     "completion": [{"role": "assistant", "content": "Four."}]},
    {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Translate 'cat' to French."}],
     "completion": [{"role": "assistant", "content": "Chat."}]},
    {"prompt": [{"role": "user", "content": "A haiku about rain."}],
     "completion": [{"role": "assistant",
                     "content": "Soft rain on the roof\nthe garden drinks in silence\nclouds move to the east"}]},
]
MAX_LENGTH = 48
LR = 1e-3


def small_model(gemma_train, out, seed=5, dtype="f32", text_only=True):
    """configs/tiny-e2b.json (PLE, KV sharing, sliding and full layers) with the bundled
    tokenizer's 4096-token vocabulary, in the HF layout with the tokenizer files."""
    config = json.loads((REPO / "configs" / "tiny-e2b.json").read_text())
    text = config.get("text_config", config)
    text["vocab_size"] = 4096
    text["vocab_size_per_layer_input"] = 4096
    config_file = out.parent / f"{out.name}-config.json"
    config_file.write_text(json.dumps(config))
    run(gemma_train, "init", "--config", config_file, "--out", out, "--dtype", dtype, "--seed", seed,
        *(["--text-only"] if text_only else []))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((REPO / "configs" / "tokenizer" / name).read_bytes())
    return out


@pytest.fixture(scope="module")
def base(gemma_train, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    model = small_model(gemma_train, root / "base")
    # The checkpoint's template: TRL's tokenizer renders conversations with it; gemma-train renders
    # them itself and reads the file only for the revision's empty-thought-channel variant.
    (model / "chat_template.jinja").write_text(official_template())
    adapter = root / "init-adapter"
    # B random as well, so the first step moves A too.
    run(gemma_train, "adapter", "--model", model, "--out", adapter, "--r", 4, "--alpha", 8, "--init", "random",
        "--target-modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "--seed", 2)
    return model, adapter


def ours(gemma_train, base, tmp_path, rows, *, packing=False, steps=3):
    model, adapter = base
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ours"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""model:
  name_or_path: {model}
  dtype: float32
peft:
  adapter_name_or_path: {adapter}
data:
  train_files: {data}
training:
  learning_rate: {LR}
  per_device_train_batch_size: {len(rows)}
  max_steps: {steps}
  lr_scheduler_type: constant
  optim: adamw_torch
  weight_decay: 0.01
  max_grad_norm: 1.0
  gradient_checkpointing: false
  bf16: false
  max_length: {MAX_LENGTH}
  packing: {str(packing).lower()}
  logging_steps: 1
  save_steps: 100
  seed: 42
  output_dir: {out}
""")
    run(gemma_train, "--recipe", recipe)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return metrics, load_file(out / "adapter_model.safetensors")


def trl_run(base, tmp_path, rows, *, packing=False, steps=3, dtype=torch.float32):
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoTokenizer, Gemma4ForCausalLM
    from trl import SFTConfig, SFTTrainer

    model_dir, adapter = base
    torch.manual_seed(0)
    model = Gemma4ForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter, is_trainable=True).to(dtype)
    # Gemma base tokenizers add <bos>; gemma-train always starts plain text with it (docs/data.md).
    # Conversations get theirs from the chat template alone: TRL tokenizes them through
    # apply_chat_template, which adds no special tokens, so the flag doubles no <bos> there (the
    # test checks the first ids).
    tokenizer = AutoTokenizer.from_pretrained(model_dir, add_bos_token=True)
    args = SFTConfig(output_dir=str(tmp_path / f"trl-{dtype}"), per_device_train_batch_size=len(rows), max_steps=steps,
                     learning_rate=LR, lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.01,
                     max_grad_norm=1.0, gradient_checkpointing=False, bf16=False, max_length=MAX_LENGTH,
                     packing=packing, logging_steps=1, save_strategy="no", report_to="none", seed=42,
                     use_cpu=True, dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    first = trainer.train_dataset[0]["input_ids"]
    assert first[0] == tokenizer.bos_token_id and first[1] != tokenizer.bos_token_id, first[:4]
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
    return logs, state


def close(a, b, rel=1e-4):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


ROWS = {"text": ROWS_TEXT, "completion": ROWS_COMPLETION, "messages": ROWS_MESSAGES,
        "conversational-completion": ROWS_CONV_COMPLETION}


@pytest.mark.parametrize("kind", ["text", "completion", "text-packed", "messages", "conversational-completion"])
def test_first_steps_equal_trl_sft(gemma_train, base, tmp_path, kind):
    rows = ROWS[kind.removesuffix("-packed")]
    packing = kind.endswith("packed")
    metrics, adapter = ours(gemma_train, base, tmp_path, rows, packing=packing)
    trl_logs, trl_state = trl_run(base, tmp_path, rows, packing=packing)
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    for key in ("loss", "grad_norm", "mean_token_accuracy", "entropy"):
        assert close(steps[0][key], trl_logs[0][key]), (key, steps[0][key], trl_logs[0][key])
    assert steps[0]["num_tokens"] == trl_logs[0]["num_tokens"]
    assert close(steps[0]["learning_rate"], trl_logs[0]["learning_rate"])
    # The adapter after three steps, tensor by tensor (PEFT's state-dict keys carry the adapter name).
    trl_by_key = {k.replace(".default", ""): v for k, v in trl_state.items()}
    assert set(adapter) == set(trl_by_key)
    # Relative to the adapter's norm. Float32's noise floor: TRL's own grad_norm and ours sit ~2e-5
    # on either side of a float64 computation, and Adam's normalised steps carry that noise to the
    # elements with the smallest gradients (near Adam's eps their first update differs by up to
    # lr), and three steps spread it. How far that goes depends on the rows and on the CPU's
    # summation order (the text rows: below 1e-4 on an AMD EPYC, 4e-4 on an Intel Xeon). So it is
    # then compared with TRL's run in float64: ours must be as close to that as TRL's own
    # float32 run is, as a whole and tensor by tensor (on the Xeon: 1.2e-3 and 1.3e-3 from it).
    def distance(a, b):
        diff = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a)
        return (diff / sum(float(t.double().pow(2).sum()) for t in b.values())) ** 0.5

    def tensor_error(a, b):
        return float((a.double() - b.double()).norm() / b.double().norm())

    to_trl = distance(adapter, trl_by_key)
    per_tensor = {k: tensor_error(t, trl_by_key[k]) for k, t in adapter.items()}
    if to_trl < 1e-4 and max(per_tensor.values()) < 1e-3:
        return
    _, trl64_state = trl_run(base, tmp_path, rows, packing=packing, dtype=torch.float64)
    exact = {k.replace(".default", ""): v for k, v in trl64_state.items()}
    ours_error, trl_error = distance(adapter, exact), distance(trl_by_key, exact)
    assert ours_error <= 1.5 * trl_error, (to_trl, ours_error, trl_error)
    for key, err in per_tensor.items():
        assert err < 1e-3 or tensor_error(adapter[key], exact[key]) <= 1.5 * tensor_error(
            trl_by_key[key], exact[key]), (key, err)


def test_packed_batches_give_the_unpacked_loss(gemma_train, base, tmp_path):
    """bfd packing restarts positions per document and never predicts across them, so one step on
    the packed rows sees the same per-token losses as on the padded rows."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    padded, _ = ours(gemma_train, base, tmp_path / "a", ROWS_TEXT, steps=1)
    packed, _ = ours(gemma_train, base, tmp_path / "b", ROWS_TEXT, packing=True, steps=1)
    assert close(padded[0]["loss"], packed[0]["loss"], 1e-5), (padded[0], packed[0])
    assert close(padded[0]["grad_norm"], packed[0]["grad_norm"], 1e-4)
    assert padded[0]["mean_token_accuracy"] == packed[0]["mean_token_accuracy"]
    assert math.isfinite(packed[0]["loss"])
