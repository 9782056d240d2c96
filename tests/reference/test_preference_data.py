"""Preference data against TRL 1.16: the same JSONL rows prepared by DPOTrainer's and KTOTrainer's
own `_prepare_dataset` (implicit prompt extraction, EOS on plain completions, the chat template on
conversations, the common-prefix split, the drop of rows whose prompt fills max_length, KTO's
unpairing of preference rows and its KL rotation) and by `gemma-train validate-data --dump` must
give the same prompt and completion ids.

As in test_sft_data.py the preparation runs on a stand-in for the trainer (the attributes
`_prepare_dataset` reads, set as the trainers' __init__ sets them), so no model is built; the
tokenizer is the bundled one with `add_bos_token=True` and the official template trl ships."""
import json
import types

import pytest
from datasets import Dataset
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

from conftest import run
from test_sft_data import LONG, setup  # noqa: F401 (the module's tokenizer fixture)

MAX_LENGTH = 40

PLAIN_PAIRS = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    {"prompt": "Hel", "chosen": "lo world", "rejected": "p me"},  # tokens merge across the boundary
    {"prompt": "Q: 2+2?\nA:", "chosen": " 4<eos>", "rejected": " 5"},  # one already ends with eos
    {"prompt": LONG + " " + LONG, "chosen": " yes", "rejected": " no"},  # prompt fills max_length
    {"prompt": "short", "chosen": " " + LONG + " " + LONG, "rejected": " x"},  # truncated when batched
]
IMPLICIT_PAIRS = [
    {"chosen": "The capital of France is Paris.", "rejected": "The capital of France is Rome."},
    {"chosen": "Answer: yes", "rejected": "Answer: no"},  # the space moves to the completions
    {"chosen": "Héllo wörld", "rejected": "Héllo wèrld"},  # characters, not bytes
    {"chosen": "same start, longer", "rejected": "same start"},  # one a prefix of the other
]
CONV_PAIRS = [
    {"prompt": [{"role": "user", "content": "What color is the sky?"}],
     "chosen": [{"role": "assistant", "content": "Blue."}],
     "rejected": [{"role": "assistant", "content": "Green."}]},
    {"prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],
     "chosen": [{"role": "assistant", "content": "Bye!"}],
     "rejected": [{"role": "assistant", "content": "Stay."}]},
    {"prompt": [{"role": "user", "content": LONG}],
     "chosen": [{"role": "assistant", "content": LONG}],
     "rejected": [{"role": "assistant", "content": "No."}]},
]
IMPLICIT_CONV_PAIRS = [
    {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
     "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]},
    {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Name?"}, {"role": "assistant", "content": "Gemma"}],
     "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                  {"role": "user", "content": "Name?"}, {"role": "assistant", "content": "Bob"}]},
]
KTO_ROWS = [
    {"prompt": "The sky is", "completion": " blue.", "label": True},
    {"prompt": "The sky is", "completion": " green.", "label": False},
    {"prompt": "Hel", "completion": "lo", "label": True},
    {"prompt": LONG + " " + LONG, "completion": " x", "label": True},  # dropped
    {"prompt": "2+2=", "completion": " 5", "label": False},
]
KTO_CONV_ROWS = [
    {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}],
     "label": True},
    {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Go away"}],
     "label": False},
    {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}],
     "label": True},
]
DPO_CASES = {"plain": PLAIN_PAIRS, "implicit": IMPLICIT_PAIRS, "conversational": CONV_PAIRS,
             "implicit_conversational": IMPLICIT_CONV_PAIRS}


def trl_dpo(tokenizer, rows):
    args = DPOConfig(output_dir="/tmp/unused-dpo-output", report_to=[], bf16=False, use_cpu=True,
                     max_length=MAX_LENGTH)
    trainer = types.SimpleNamespace(_tokenizer=tokenizer)
    prepared = DPOTrainer._prepare_dataset(trainer, Dataset.from_list(rows), tokenizer, args, "train")
    return [dict(row) for row in prepared]


def trl_kto(tokenizer, rows, batch_size):
    args = KTOConfig(output_dir="/tmp/unused-kto-output", report_to=[], bf16=False, use_cpu=True,
                     max_length=MAX_LENGTH, per_device_train_batch_size=batch_size)
    trainer = types.SimpleNamespace(_tokenizer=tokenizer, calculate_KL=True, desirable_weight=1.0,
                                    undesirable_weight=1.0)
    prepared = KTOTrainer._prepare_dataset(trainer, Dataset.from_list(rows), tokenizer, args, "train")
    return [dict(row) for row in prepared]


def our_dump(gemma_train, model_dir, rows, tmp_path, method=None, batch_size=8):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dump = tmp_path / "dump.jsonl"
    if method is None:
        proc = run(gemma_train, "validate-data", "--data", data, "--model", model_dir,
                   "--max-length", MAX_LENGTH, "--dump", dump, "--overwrite")
    else:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(f"model:\n  name_or_path: {model_dir}\ndata:\n  train_files: {data}\n"
                          f"training:\n  method: {method}\n  output_dir: {tmp_path / 'out'}\n"
                          f"  max_length: {MAX_LENGTH}\n  per_device_train_batch_size: {batch_size}\n")
        proc = run(gemma_train, "validate-data", "--recipe", recipe, "--dump", dump, "--overwrite")
    assert "0 bad" in proc.stdout, proc.stdout
    return proc.stdout, [json.loads(line) for line in dump.read_text().splitlines()]


@pytest.mark.parametrize("case", sorted(DPO_CASES))
def test_dpo_examples_equal_trl(gemma_train, setup, tmp_path, case):  # noqa: F811
    model_dir, tokenizer = setup
    rows = DPO_CASES[case]
    expected = trl_dpo(tokenizer, rows)
    _, ours = our_dump(gemma_train, model_dir, rows, tmp_path)
    assert len(ours) == len(expected)
    for mine, theirs in zip(ours, expected):
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            assert mine[key] == theirs[key], (mine["origin"], key, tokenizer.decode(theirs[key]))


def test_the_cases_exercise_the_rules(setup):  # noqa: F811
    model_dir, tokenizer = setup
    assert len(trl_dpo(tokenizer, PLAIN_PAIRS)) == len(PLAIN_PAIRS) - 1  # one prompt fills max_length
    prompt = tokenizer("Hel")["input_ids"]
    assert tokenizer("Hello world<eos>")["input_ids"][:len(prompt)] != prompt


@pytest.mark.parametrize("rows,batch_size", [(KTO_ROWS, 2), (KTO_CONV_ROWS, 3), (PLAIN_PAIRS, 3),
                                             (IMPLICIT_PAIRS, 3), (CONV_PAIRS, 4)],
                         ids=["unpaired", "conversational", "from_pairs", "from_implicit_pairs",
                              "from_conversational_pairs"])
def test_kto_examples_equal_trl(gemma_train, setup, tmp_path, rows, batch_size):  # noqa: F811
    model_dir, tokenizer = setup
    expected = trl_kto(tokenizer, rows, batch_size)
    _, ours = our_dump(gemma_train, model_dir, rows, tmp_path, method="kto", batch_size=batch_size)
    assert len(ours) == len(expected)
    for mine, theirs in zip(ours, expected):
        assert mine["label"] == theirs["label"], mine["origin"]
        for key in ("prompt_ids", "completion_ids"):
            assert mine[key] == theirs[key], (mine["origin"], key, tokenizer.decode(theirs[key]))
        assert mine["kl_completion_ids"] == theirs["KL_completion_ids"], mine["origin"]


def test_validate_data_reports_preference_faults(gemma_train, setup, tmp_path):  # noqa: F811
    model_dir, _ = setup
    rows = tmp_path / "pairs.jsonl"
    rows.write_text("\n".join([
        json.dumps({"prompt": "a", "chosen": " b", "rejected": " c"}),
        json.dumps({"prompt": "a", "chosen": " same", "rejected": " same"}),
        json.dumps({"prompt": "a", "chosen": "", "rejected": " c"}),
        json.dumps({"prompt": LONG + " " + LONG, "chosen": " b", "rejected": " c"}),
        json.dumps({"prompt": "a", "chosen": " b"}),
    ]) + "\n")
    proc = run(gemma_train, "validate-data", "--data", rows, "--model", model_dir, "--kind", "preference",
               "--max-length", MAX_LENGTH, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = proc.stdout
    assert f"{rows}:2: \"chosen\" and \"rejected\" are the same" in out
    assert f"{rows}:3: \"chosen\" is empty" in out
    assert f"{rows}:4: the prompt alone is" in out and "(the trainer drops this row)" in out
    assert f"{rows}:5: no \"rejected\" column" in out
    assert "5 rows of preference data, 3 bad" in out

    kto = tmp_path / "kto.jsonl"
    kto.write_text(json.dumps({"prompt": "a", "completion": " b", "label": "yes"}) + "\n"
                   + json.dumps({"prompt": "a", "completion": " b", "label": True}) + "\n")
    proc = run(gemma_train, "validate-data", "--data", kto, "--kind", "kto", check=False)
    assert proc.returncode == 2
    assert f"{kto}:1: \"label\" must be true or false (found a string)" in proc.stdout
