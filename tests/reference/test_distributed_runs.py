"""Data-parallel runs over MPI (Open MPI's mpirun, through `gemma-train launch` and directly) on
the bundled demo model and recipes: two ranks of micro-batch b give the losses, metrics and final
adapter of one process of micro-batch 2b, for SFT and DPO, also over TCP. Failures, resume and
the launch command: test_distributed_failures.py."""
import json
import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, run

SFT_DATA = REPO / "recipes" / "data" / "demo-capitals.jsonl"
DPO_DATA = REPO / "recipes" / "data" / "demo-capitals-preference.jsonl"


def mpirun(*extra):
    """mpirun as `gemma-train launch` starts it on one machine (tests/reference runs as root in CI)."""
    line = ["mpirun"]
    if os.geteuid() == 0:
        line.append("--allow-run-as-root")
    return [*line, "--oversubscribe", "--bind-to", "none", *extra]


@pytest.fixture(scope="module")
def demo_model(gemma_train, tmp_path_factory):
    assert shutil.which("mpirun"), "mpirun not found: scripts/setup.sh installs Debian's openmpi-bin"
    model = tmp_path_factory.mktemp("dp") / "demo-model"
    run(gemma_train, "init", "--config", "demo", "--out", model, "--seed", 0, "--dtype", "bf16")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(REPO / "configs" / "tokenizer" / name, model / name)
    return model


def settings(model, out, method, batch, eval_batch, **extra):
    """The demo recipe's overrides for a short comparable run. Dropout off: each rank draws its own
    masks, so only a run without dropout can equal a single process. Adam's epsilon raised: with
    1e-8 a gradient element at rounding level (one of LoRA's many near-zero ones) moves by ±lr
    whichever its sign, which amplifies f32 rounding far beyond what the reduction does."""
    values = {"model.name_or_path": model, "training.output_dir": out,
              "data.train_files": SFT_DATA if method == "sft" else DPO_DATA,
              "training.per_device_train_batch_size": batch, "training.per_device_eval_batch_size": eval_batch,
              "training.gradient_accumulation_steps": 2, "training.max_steps": 4, "training.logging_steps": 1,
              "training.eval_steps": 2, "training.eval_on_start": "false", "training.save_steps": 100,
              "training.optim": "adamw_torch", "training.adam_epsilon": 1e-4, "peft.lora_dropout": 0,
              "training.report_to": "none", "export.merged": "false", "export.gguf": "false"}
    values.update(extra)
    args = ["--recipe", REPO / "recipes" / ("demo.yaml" if method == "sft" else "demo-dpo.yaml")]
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return [str(a) for a in args]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def close(a, b, rel):
    # The absolute term: rewards are beta times a difference of two log-probs near -60, whose f32
    # rounding (~4e-6 each) is all of a small reward's relative error.
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-5


def assert_same_run(one, two, names):
    """Step by step, two runs' logged values agree to f32 rounding (summed in another order): to
    1e-5 while the weights are the same (steps 1 and 2: the first step moves only lora_B, from
    zero), to 1e-3 once Adam has carried the rounding of earlier updates into the weights."""
    a, b = metrics(one), metrics(two)
    train_a = [m for m in a if "loss" in m]
    train_b = [m for m in b if "loss" in m]
    assert [m["step"] for m in train_a] == [m["step"] for m in train_b] == [1, 2, 3, 4]
    for x, y in zip(train_a, train_b):
        assert x["num_tokens"] == y["num_tokens"], (x, y)
        assert "all_reduce_bytes" in y and y["all_reduce_bytes"] > 0, y
        rel = 1e-5 if x["step"] <= 2 else 1e-3
        for name in names:
            assert close(x[name], y[name], rel), (x["step"], name, x[name], y[name])
    evals_a = [m for m in a if "eval_loss" in m]
    evals_b = [m for m in b if "eval_loss" in m]
    assert len(evals_a) == len(evals_b) == 2
    for x, y in zip(evals_a, evals_b):
        assert close(x["eval_loss"], y["eval_loss"], 1e-3), (x, y)
    adapter_a = load_file(one / "adapter_model.safetensors")
    adapter_b = load_file(two / "adapter_model.safetensors")
    assert adapter_a.keys() == adapter_b.keys()
    # The first two steps' gradients agree to the last digit; from the third on, Adam carries the
    # rounding of the updated weights forward (seen: 3e-4 of a tensor's norm after 4 steps).
    for key in adapter_a:
        a, b = adapter_a[key].double(), adapter_b[key].double()
        assert a.norm() > 0, key
        assert (a - b).norm() <= 2e-3 * a.norm(), (key, ((a - b).norm() / a.norm()).item())
        assert (a - b).abs().max() <= 1e-2 * a.abs().max(), key


SFT_METRICS = ("loss", "grad_norm", "learning_rate", "entropy", "mean_token_accuracy")
DPO_METRICS = ("loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/margins",
               "rewards/accuracies", "logps/chosen", "logits/chosen", "entropy", "mean_token_accuracy")


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_two_ranks_equal_one_process_of_the_global_batch(gemma_train, demo_model, tmp_path, method):
    one, two = tmp_path / "one", tmp_path / "two"
    # 8 eval rows: one global eval batch of 12 (6 per rank), split 4 and 4.
    run(gemma_train, *settings(demo_model, one, method, 8, 12))
    proc = run(gemma_train, "launch", "--nproc", 2, "--", *settings(demo_model, two, method, 4, 6))
    assert "[train]" in proc.stderr and proc.stderr.count("[train] 72 training") == 1, proc.stderr
    assert_same_run(one, two, SFT_METRICS if method == "sft" else DPO_METRICS)


def test_two_ranks_over_tcp(gemma_train, demo_model, tmp_path):
    """Open MPI's TCP transport forced (no shared memory between the ranks): the network path."""
    one, two = tmp_path / "one", tmp_path / "two"
    run(gemma_train, *settings(demo_model, one, "sft", 8, 12))
    proc = subprocess.run([*mpirun("-np", "2", "--mca", "btl", "tcp,self"), gemma_train,
                           *settings(demo_model, two, "sft", 4, 6)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(one, two, SFT_METRICS)
