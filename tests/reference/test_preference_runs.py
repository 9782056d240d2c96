"""Whole DPO and KTO runs of the binary with QLoRA (NF4 base, paged 8-bit AdamW, activation
checkpointing) on the demo preference rows: a DPO run killed with SIGKILL after a checkpoint and
resumed ends with the uninterrupted run's adapter, byte for byte, and its losses; a precomputed
reference gives the on-the-fly run's losses; the demo recipe (recipes/demo-dpo.yaml) learns to
prefer the right capital; bad input is one message naming the file, line or key, exit 2."""
import json
import shutil
import subprocess

import pytest

from conftest import REPO, run
from test_cli import expect_error
from test_sft_training import small_model
from test_training_runs import start_run, wait_for

STEPS = 6


def preference_rows():
    lines = (REPO / "recipes" / "data" / "demo-capitals-preference.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:24]]


@pytest.fixture(scope="module")
def setup(gemma_train, tmp_path_factory):
    root = tmp_path_factory.mktemp("preference-runs")
    model = small_model(gemma_train, root / "model", seed=7, dtype="bf16", text_only=False)
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in preference_rows()))
    return root, model, data


def recipe(root, model, data, out, name="r.yaml", method="dpo", **training):
    values = {"method": method, "learning_rate": 2e-3, "per_device_train_batch_size": 4,
              "gradient_accumulation_steps": 2, "max_steps": STEPS, "warmup_steps": 1,
              "lr_scheduler_type": "cosine", "optim": "paged_adamw_8bit", "gradient_checkpointing": "true",
              "bf16": "false", "max_length": 64, "logging_steps": 1, "save_steps": 2, "seed": 11,
              "output_dir": out}
    values.update(training)
    body = "\n".join(f"  {k}: {v}" for k, v in values.items())
    path = root / name
    path.write_text(f"""model:
  name_or_path: {model}
  dtype: float32
  load_in_4bit: true
  bnb_4bit_use_double_quant: true
  bnb_4bit_compute_dtype: float32
peft:
  r: 8
  lora_alpha: 16
  lora_dropout: 0.1
  target_modules: all-linear
data:
  train_files: {data}
training:
{body}
""")
    return path


def losses(out):
    return [(m["step"], m["loss"]) for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "loss" in m]


@pytest.fixture(scope="module")
def uninterrupted(gemma_train, setup):
    root, model, data = setup
    out = root / "straight"
    run(gemma_train, "--recipe", recipe(root, model, data, out, "straight.yaml"))
    return out


def test_a_killed_dpo_run_resumes_to_the_same_adapter(gemma_train, setup, uninterrupted):
    root, model, data = setup
    out = root / "killed"
    r = recipe(root, model, data, out, "killed.yaml")
    log = root / "killed.log"
    proc = start_run(gemma_train, r, log)
    wait_for(out / "checkpoint-2" / "trainer_state.json", proc, log)
    proc.kill()
    proc.wait(timeout=60)
    assert not (out / "adapter_model.safetensors").exists()
    run(gemma_train, "--recipe", r, "--set", f"training.resume_from_checkpoint={out / 'checkpoint-2'}")
    assert (out / "adapter_model.safetensors").read_bytes() == \
        (uninterrupted / "adapter_model.safetensors").read_bytes()
    assert losses(out) == losses(uninterrupted)
    assert [s for s, _ in losses(out)] == list(range(1, STEPS + 1))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("rewards/accuracies" in m for m in metrics if "loss" in m)


def test_a_precomputed_reference_gives_the_on_the_fly_losses(gemma_train, setup, uninterrupted):
    root, model, data = setup
    out = root / "precomputed"
    proc = run(gemma_train, "--recipe", recipe(root, model, data, out, "pre.yaml", precompute_ref_log_probs="true"))
    assert "reference log-probs (train): 24/24" in proc.stderr
    ours, straight = losses(out), losses(uninterrupted)
    assert [s for s, _ in ours] == [s for s, _ in straight]
    for (_, a), (_, b) in zip(ours, straight):
        assert abs(a - b) <= 1e-5 * abs(b), (a, b)
    # Resumed from its checkpoint, the run reads the cache instead of a second pass.
    proc = run(gemma_train, "--recipe", root / "pre.yaml", "--set", "training.resume_from_checkpoint=true",
               "--set", "training.max_steps=8", "--set", "training.overwrite_output_dir=true", check=False)
    assert "was saved by a run with max_steps" in proc.stderr  # another max_steps: refused, as for SFT
    (out / "adapter_model.safetensors").unlink()
    proc = run(gemma_train, "--recipe", root / "pre.yaml", "--set",
               f"training.resume_from_checkpoint={out / 'checkpoint-4'}")
    assert "reference log-probs from" in proc.stderr and "reference log-probs (train)" not in proc.stderr
    assert losses(out) == ours
    # What the values depend on changed (here max_length): they are computed again.
    proc = run(gemma_train, "--recipe", root / "pre.yaml", "--set", "training.max_length=48",
               "--set", "training.max_steps=1", "--set", "training.overwrite_output_dir=true")
    assert "reference log-probs (train): 24/24" in proc.stderr
    assert json.loads((out / "ref_logps.json").read_text())["key"]["max_length"] == 48


def test_a_kto_run_trains_on_unpaired_pairs(gemma_train, setup):
    root, model, data = setup
    out = root / "kto"
    run(gemma_train, "--recipe", recipe(root, model, data, out, "kto.yaml", method="kto"))
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(metrics) == STEPS
    # TRL unpairs per 1000 pairs, chosen first, and KTO reads in order: 3 steps of 8 desirable
    # rows, then 3 of undesirable ones; a label's metrics appear only where it has rows.
    for m in metrics[:3]:
        assert "rewards/chosen" in m and "logps/chosen" in m and "rewards/rejected" not in m, m
    for m in metrics[3:]:
        assert "rewards/rejected" in m and "logits/rejected" in m and "rewards/chosen" not in m, m
    assert all(m["kl"] >= 0 and "entropy" in m and "rewards/margins" not in m for m in metrics)
    assert (out / "adapter_model.safetensors").exists()


def test_bad_preference_input_is_one_message(gemma_train, setup, tmp_path):
    root, model, data = setup
    out = tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    good = (REPO / "recipes" / "data" / "demo-capitals-preference.jsonl").read_text().splitlines()
    no_rejected = json.loads(good[1])
    del no_rejected["rejected"]
    bad.write_text(good[0] + "\n" + json.dumps(no_rejected) + "\n")
    expect_error(gemma_train, ["--recipe", recipe(tmp_path, model, bad, out)], f"{bad}:2: no \"rejected\" column")
    kto = tmp_path / "kto.jsonl"
    kto.write_text(json.dumps({"prompt": "a", "completion": " b", "label": True}) + "\n"
                   + json.dumps({"prompt": "a", "completion": " c", "label": "no"}) + "\n")
    expect_error(gemma_train, ["--recipe", recipe(tmp_path, model, kto, out, method="kto")],
                 f"{kto}:2: \"label\" must be true or false (found a string)")
    expect_error(gemma_train, ["--recipe", recipe(tmp_path, model, data, out, method="kto",
                                                  per_device_train_batch_size=1)],
                 "training.per_device_train_batch_size: expected more than 1 for KTO")
    expect_error(gemma_train, ["--recipe", recipe(tmp_path, model, data, out, loss_type="sigmod")],
                 "training.loss_type: expected one of sigmoid")
    expect_error(gemma_train, ["--recipe", recipe(tmp_path, model, data, out, loss_type="exo_pair")],
                 "label_smoothing")
    assert not out.exists()


def test_the_dpo_demo_recipe_learns(gemma_train, tmp_path):
    """recipes/demo-dpo.yaml as `scripts/demo.sh --dpo` runs it: rewards/accuracies ends above 0.5
    and rewards/margins grows from the first logged step to the last."""
    model = tmp_path / "demo-model"
    run(gemma_train, "init", "--config", "demo", "--out", model, "--seed", 0, "--dtype", "bf16")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(REPO / "configs" / "tokenizer" / name, model / name)
    out = tmp_path / "demo-dpo-run"
    proc = subprocess.run([gemma_train, "--recipe", REPO / "recipes" / "demo-dpo.yaml",
                           "--set", f"model.name_or_path={model}", "--set", f"training.output_dir={out}",
                           "--set",
                           f"data.train_files={REPO / 'recipes' / 'data' / 'demo-capitals-preference.jsonl'}"],
                          capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert logged[-1]["rewards/accuracies"] > 0.5, logged[-1]
    assert logged[-1]["rewards/margins"] > logged[0]["rewards/margins"] + 0.1, (logged[0], logged[-1])
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line]
    assert len(evals) >= 2 and "eval_rewards/margins" in evals[-1]
