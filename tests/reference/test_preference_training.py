"""DPO and KTO training against TRL 1.16 + PEFT 0.21.2 on a small random Gemma 4 (the
test_sft_training model): from the same adapter, whose B is random so the policy differs from
the reference, on the same rows (one batch holding every row, so the sampler's order cannot
matter), in float32 with 32-bit AdamW, as a text-only checkpoint (Gemma4ForCausalLM) and in the
multimodal layout (Gemma4ForConditionalGeneration on TRL's side). The first step's loss and every metric TRL logs, and the
adapter after three steps, equal TRL's run. The reference is the base (our `ref_model: base`,
TRL given the base model as ref_model) or the frozen starting adapter (`auto`, TRL's "ref" copy);
with precompute_ref_log_probs the cached values equal TRL's precomputed columns."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import official_template, run
from test_sft_training import small_model

trl = pytest.importorskip("trl")

MAX_LENGTH = 40
LR = 1e-3
PLAIN_PAIRS = [
    {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Rome."},
    {"prompt": "Two plus two equals", "chosen": " four.", "rejected": " five, as everyone knows."},
    {"prompt": "Translate 'cat' to French:", "chosen": " chat", "rejected": " chien"},
    {"prompt": "Write a haiku about rain.\n", "chosen": "Soft rain on the roof\nthe garden drinks in silence",
     "rejected": "Rain is wet."},
    {"prompt": " ".join(["A long prompt keeps its start."] * 5), "chosen": " yes, " * 10, "rejected": " no"},
]
CONV_PAIRS = [
    {"prompt": [{"role": "user", "content": "The capital of France?"}],
     "chosen": [{"role": "assistant", "content": "Paris."}],
     "rejected": [{"role": "assistant", "content": "Rome, I think."}]},
    {"prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Two plus two?"}],
     "chosen": [{"role": "assistant", "content": "Four."}],
     "rejected": [{"role": "assistant", "content": "Five."}]},
    {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Translate 'cat' to French."}],
     "chosen": [{"role": "assistant", "content": "Chat."}],
     "rejected": [{"role": "assistant", "content": "Chien."}]},
]
KTO_ROWS = [
    {"prompt": "The capital of France is", "completion": " Paris.", "label": True},
    {"prompt": "The capital of France is", "completion": " Rome.", "label": False},
    {"prompt": "Two plus two equals", "completion": " four.", "label": True},
    {"prompt": "Translate 'cat' to French:", "completion": " chien", "label": False},
    {"prompt": "Write a haiku about rain.\n", "completion": "Soft rain on the roof", "label": True},
]
DPO_METRICS = ("loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
               "rewards/margins", "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "entropy",
               "mean_token_accuracy")
KTO_METRICS = ("loss", "grad_norm", "learning_rate", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins",
               "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "entropy")


@pytest.fixture(scope="module", params=["text_only", "multimodal"])
def base(gemma_train, tmp_path_factory, request):
    root = tmp_path_factory.mktemp("preference")
    model = small_model(gemma_train, root / "base", text_only=request.param == "text_only")
    (model / "chat_template.jinja").write_text(official_template())
    adapter = root / "init-adapter"
    run(gemma_train, "adapter", "--model", model, "--out", adapter, "--r", 4, "--alpha", 8, "--init", "random",
        "--target-modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "--seed", 2)
    return model, adapter


def yaml_value(v):
    return json.dumps(v)


def ours(gemma_train, base, tmp_path, rows, method, training, steps=3):
    model, adapter = base
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ours"
    extra = "".join(f"  {k}: {yaml_value(v)}\n" for k, v in training.items())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""model:
  name_or_path: {model}
  dtype: float32
peft:
  adapter_name_or_path: {adapter}
data:
  train_files: {data}
training:
  method: {method}
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
  logging_steps: 1
  save_steps: 100
  seed: 42
  output_dir: {out}
{extra}""")
    proc = run(gemma_train, "--recipe", recipe)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return metrics, load_file(out / "adapter_model.safetensors"), out, proc


def trl_run(base, tmp_path, rows, method, config, steps=3, ref="base"):
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoTokenizer, Gemma4ForCausalLM
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    model_dir, adapter = base
    multimodal = json.loads((model_dir / "config.json").read_text())["architectures"] == [
        "Gemma4ForConditionalGeneration"]
    model_class = AutoModelForImageTextToText if multimodal else Gemma4ForCausalLM
    torch.manual_seed(0)
    model = model_class.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    ref_model = model_class.from_pretrained(model_dir, dtype=torch.float32) if ref == "base" else None
    tokenizer = AutoTokenizer.from_pretrained(model_dir, add_bos_token=True)  # as test_sft_training
    Config, Trainer = (DPOConfig, DPOTrainer) if method == "dpo" else (KTOConfig, KTOTrainer)
    args = Config(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(rows), max_steps=steps,
                  learning_rate=LR, lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.01,
                  max_grad_norm=1.0, gradient_checkpointing=False, bf16=False, max_length=MAX_LENGTH,
                  logging_steps=1, save_strategy="no", report_to="none", seed=42, use_cpu=True,
                  dataloader_num_workers=0, **config)
    trainer = Trainer(model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=tokenizer)
    prepared = trainer.train_dataset
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    state = {k.replace(".default", ""): v.detach().clone() for k, v in model.state_dict().items()
             if "lora_" in k and ".ref." not in k}
    return logs, state, prepared


def close(a, b, rel=1e-4, floor=1e-6):
    return abs(a - b) <= rel * max(abs(a), abs(b)) + floor


def assert_same_run(metrics, adapter, trl_logs, trl_state, names):
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    for name in names:
        assert close(steps[0][name], trl_logs[0][name]), (name, steps[0][name], trl_logs[0][name])
    assert steps[0]["num_tokens"] == trl_logs[0]["num_tokens"]
    for name in ("loss", "rewards/margins"):
        if name in names:
            assert close(steps[2][name], trl_logs[2][name], 1e-3, 1e-5), (name, steps[2][name], trl_logs[2][name])
    assert set(adapter) == set(trl_state)
    diff = sum(float((adapter[k].double() - trl_state[k].double()).pow(2).sum()) for k in adapter)
    norm = sum(float(t.double().pow(2).sum()) for t in trl_state.values())
    assert (diff / norm) ** 0.5 < 2e-4, (diff / norm) ** 0.5


DPO_CASES = {
    "sigmoid-plain": (PLAIN_PAIRS, {"loss_type": ["sigmoid"]}),
    "sigmoid-conversational": (CONV_PAIRS, {"loss_type": ["sigmoid"]}),
    "ipo": (PLAIN_PAIRS, {"loss_type": ["ipo"]}),
    "hinge-js": (CONV_PAIRS, {"loss_type": ["hinge"], "f_divergence_type": "js_divergence"}),
    "robust-smoothing": (PLAIN_PAIRS, {"loss_type": ["robust"], "label_smoothing": 0.1}),
    "sigmoid-sft-weights": (PLAIN_PAIRS, {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}),
    "wpo-ld": (PLAIN_PAIRS, {"loss_type": ["sigmoid"], "use_weighting": True, "ld_alpha": 0.5}),
    "aot-bco": (CONV_PAIRS, {"loss_type": ["aot", "bco_pair"]}),
}


@pytest.mark.parametrize("case", list(DPO_CASES))
def test_dpo_steps_equal_trl(gemma_train, base, tmp_path, case):
    rows, config = DPO_CASES[case]
    metrics, adapter, _, _ = ours(gemma_train, base, tmp_path, rows, "dpo", {**config, "ref_model": "base"})
    trl_logs, trl_state, _ = trl_run(base, tmp_path, rows, "dpo", config)
    assert_same_run(metrics, adapter, trl_logs, trl_state, DPO_METRICS)
    assert metrics[0]["rewards/margins"] != 0  # the policy is not the reference


def test_dpo_reference_is_the_frozen_starting_adapter_by_default(gemma_train, base, tmp_path):
    metrics, adapter, _, _ = ours(gemma_train, base, tmp_path, PLAIN_PAIRS, "dpo", {})
    trl_logs, trl_state, _ = trl_run(base, tmp_path, PLAIN_PAIRS, "dpo", {}, ref=None)
    assert metrics[0]["rewards/margins"] == 0 and metrics[0]["rewards/chosen"] == 0
    assert_same_run(metrics, adapter, trl_logs, trl_state, DPO_METRICS)


def test_precomputed_reference_equals_trl_columns_and_the_on_the_fly_run(gemma_train, base, tmp_path):
    config = {"loss_type": ["sigmoid"]}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    metrics, adapter, out, proc = ours(gemma_train, base, tmp_path / "a", PLAIN_PAIRS, "dpo",
                                       {**config, "ref_model": "base", "precompute_ref_log_probs": True})
    cache = json.loads((out / "ref_logps.json").read_text())
    _, _, prepared = trl_run(base, tmp_path, PLAIN_PAIRS, "dpo", {**config, "precompute_ref_log_probs": True})
    expected = list(zip(prepared["ref_chosen_logps"], prepared["ref_rejected_logps"]))
    assert len(cache["train"]) == len(expected)
    for (c, r), (tc, tr) in zip(cache["train"], expected):
        assert close(c, tc) and close(r, tr), ((c, r), (tc, tr))
    on_the_fly, fly_adapter, _, _ = ours(gemma_train, base, tmp_path / "b", PLAIN_PAIRS, "dpo",
                                         {**config, "ref_model": "base"})
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert all(close(a, b, 1e-5) for a, b in zip(losses, [m["loss"] for m in on_the_fly if "loss" in m]))
    # A second run with the same key reads the cache instead of computing it.
    proc = run(gemma_train, "--recipe", tmp_path / "a" / "recipe.yaml", "--set", "training.overwrite_output_dir=true")
    assert "reference log-probs from" in proc.stderr


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_steps_equal_trl(gemma_train, base, tmp_path, loss_type):
    config = {"loss_type": loss_type, "desirable_weight": 1.0, "undesirable_weight": 1.5}
    metrics, adapter, _, _ = ours(gemma_train, base, tmp_path, KTO_ROWS, "kto", {**config, "ref_model": "base"})
    trl_logs, trl_state, _ = trl_run(base, tmp_path, KTO_ROWS, "kto", config)
    names = KTO_METRICS if loss_type == "kto" else tuple(n for n in KTO_METRICS if n != "kl")
    assert_same_run(metrics, adapter, trl_logs, trl_state, names)
    if loss_type == "kto":
        assert metrics[0]["kl"] >= 0
