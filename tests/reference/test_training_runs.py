"""Whole training runs of the binary on a small random Gemma 4 with QLoRA (NF4 base, LoRA with
dropout, paged 8-bit AdamW, activation checkpointing) on chat rows: a run killed with SIGKILL
after a checkpoint and resumed ends with the uninterrupted run's adapter, byte for byte; Ctrl-C
leaves a checkpoint that resumes; peft loads the final adapter onto transformers' Gemma 4 and
computes our logits; bad input is one message, exit 2, and nothing written."""
import json
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from conftest import REPO, run
from test_cli import expect_error
from test_peft_and_merge import IDS, hf_model, logits
from test_sft_training import small_model

STEPS = 9


def chat_rows():
    return [json.loads(line) for line in (REPO / "recipes" / "data" / "demo-capitals.jsonl").read_text().splitlines()][:40]


@pytest.fixture(scope="module")
def setup(gemma_train, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    model = small_model(gemma_train, root / "model", seed=7, dtype="bf16", text_only=False)
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows()))
    return root, model, data


def recipe(root, model, data, out, name="r.yaml", **training):
    values = {"learning_rate": 2e-3, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
              "max_steps": STEPS, "warmup_steps": 2, "lr_scheduler_type": "cosine", "optim": "paged_adamw_8bit",
              "gradient_checkpointing": "true", "bf16": "false", "max_length": 64, "assistant_only_loss": "true",
              "logging_steps": 1, "save_steps": 3, "seed": 11, "output_dir": out}
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


def start_run(gemma_train, recipe_path, log):
    """Starts a training run in the background; its output goes to a file (a pipe nobody reads
    while the test waits could fill and stall the run)."""
    with open(log, "w") as err:
        return subprocess.Popen([gemma_train, "--recipe", recipe_path], stdout=subprocess.DEVNULL, stderr=err)


def wait_for(path, proc, log, seconds=300):
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared: {log.read_text()}"
        assert time.time() - start < seconds
        time.sleep(0.01)


@pytest.fixture(scope="module")
def uninterrupted(gemma_train, setup):
    root, model, data = setup
    out = root / "straight"
    run(gemma_train, "--recipe", recipe(root, model, data, out, "straight.yaml"))
    return out


def test_a_killed_run_resumes_to_the_same_adapter(gemma_train, setup, uninterrupted):
    root, model, data = setup
    out = root / "killed"
    r = recipe(root, model, data, out, "killed.yaml")
    log = root / "killed.log"
    proc = start_run(gemma_train, r, log)
    wait_for(out / "checkpoint-3" / "trainer_state.json", proc, log)
    proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "adapter_model.safetensors").exists()
    run(gemma_train, "--recipe", r, "--set", f"training.resume_from_checkpoint={out / 'checkpoint-3'}")
    assert (out / "adapter_model.safetensors").read_bytes() == \
        (uninterrupted / "adapter_model.safetensors").read_bytes()
    # metrics.jsonl holds each step once, in order, as the uninterrupted run logged it.
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    losses = [(m["step"], m["loss"]) for m in steps if "loss" in m]
    assert losses == [(m["step"], m["loss"]) for m in straight if "loss" in m]
    assert [s for s, _ in losses] == list(range(1, STEPS + 1))


def test_ctrl_c_saves_a_checkpoint_that_resumes(gemma_train, setup, uninterrupted):
    root, model, data = setup
    out = root / "interrupted"
    r = recipe(root, model, data, out, "interrupted.yaml", save_steps=100)
    log = root / "interrupted.log"
    proc = start_run(gemma_train, r, log)
    metrics = out / "metrics.jsonl"
    start = time.time()
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() - start < 300, log.read_text()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=300)
    err = log.read_text()
    assert proc.returncode == 130, err
    saved = sorted(out.glob("checkpoint-*"))
    assert len(saved) == 1 and "interrupted at step" in err and "resume_from_checkpoint" in err
    assert (saved[0] / "adapter_model.safetensors").exists()
    run(gemma_train, "--recipe", r, "--set", "training.resume_from_checkpoint=true")
    assert (out / "adapter_model.safetensors").read_bytes() == \
        (uninterrupted / "adapter_model.safetensors").read_bytes()


def test_peft_loads_the_trained_adapter_and_computes_our_logits(gemma_train, setup, uninterrupted, tmp_path):
    from peft import PeftModel
    _, model, _ = setup
    ours = logits(gemma_train, model, tmp_path, "--adapter", uninterrupted)
    plain = logits(gemma_train, model, tmp_path)
    assert np.abs(ours - plain).max() > 1e-3  # training moved the model
    peft_model = PeftModel.from_pretrained(hf_model(model), uninterrupted).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.tensor([IDS])).logits[0].float().numpy()
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-4
    # The run's other outputs.
    assert (uninterrupted / "loss.svg").read_text().startswith("<")
    for name in ("adapter_config.json", "tokenizer.json", "checkpoint-9", "checkpoint-6"):
        assert (uninterrupted / name).exists(), name


def test_bad_input_is_one_message_and_writes_nothing(gemma_train, setup, tmp_path):
    root, model, data = setup
    out = tmp_path / "out"

    def refused(rows_text, needle, **training):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(rows_text)
        expect_error(gemma_train, ["--recipe", recipe(tmp_path, model, bad, out, **training)], needle)
        assert not out.exists()

    good = (REPO / "recipes" / "data" / "demo-capitals.jsonl").read_text().splitlines()
    refused(good[0] + "\n{\"messages\": [\n", f"{tmp_path / 'bad.jsonl'}:2")
    refused(good[0] + "\n" + good[1].replace('"user"', '"narrator"') + "\n", f"{tmp_path / 'bad.jsonl'}:2")
    refused("", "bad.jsonl")
    refused("\n".join(r.replace('"assistant"', '"user"') for r in good[:3]) + "\n", "bad.jsonl")
    # A misspelt key, a wrong type, a missing model folder.
    r = recipe(tmp_path, model, data, out, learnig_rate=1)
    expect_error(gemma_train, ["--recipe", r], "unknown key training.learnig_rate (did you mean training.learning_rate?)")
    r = recipe(tmp_path, model, data, out, max_steps="many")
    expect_error(gemma_train, ["--recipe", r], "training.max_steps: expected an integer")
    r = recipe(tmp_path, tmp_path / "no-model", data, out)
    expect_error(gemma_train, ["--recipe", r], "is not a model folder")
    assert not out.exists()
    # An existing non-empty output_dir is kept as it was.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    expect_error(gemma_train, ["--recipe", recipe(tmp_path, model, data, out)], "overwrite_output_dir")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_the_demo_recipe_learns(gemma_train, tmp_path):
    """recipes/demo.yaml as the README runs it (export left out, its first 40 steps): the eval
    loss is then at least 30% below the eval loss before the first step."""
    model = tmp_path / "demo-model"
    run(gemma_train, "init", "--config", "demo", "--out", model, "--seed", 0, "--dtype", "bf16")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(REPO / "configs" / "tokenizer" / name, model / name)
    out = tmp_path / "demo-run"
    proc = subprocess.run([gemma_train, "--recipe", REPO / "recipes" / "demo.yaml",
                           "--set", f"model.name_or_path={model}", "--set", f"training.output_dir={out}",
                           "--set", f"data.train_files={REPO / 'recipes' / 'data' / 'demo-capitals.jsonl'}",
                           "--set", "export.merged=false", "--set", "export.gguf=false",
                           # the first evaluation after eval_on_start: 40 of the demo's 120 steps
                           "--set", "training.max_steps=40"],
                          capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    evals = [json.loads(line)["eval_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "eval_loss" in line]
    assert len(evals) >= 2 and evals[-1] <= 0.7 * evals[0], evals
    assert (out / "runs").is_dir() and any((out / "runs").iterdir())
    assert (out / "loss.svg").exists()
