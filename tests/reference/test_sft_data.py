"""The SFT data pipeline against TRL 1.16: the same JSONL rows prepared by SFTTrainer's own
`_prepare_dataset` (tokenization, EOS, completion masks, labels, truncation, the drop of fully
masked rows, bfd packing) and by `gemma-train validate-data --dump` must give the same input_ids,
the same labels (-100 where our labels_mask is 0), after TRL's collator, and the same seq_lengths.

The preparation is SFTTrainer's method called on a stand-in for the trainer: it reads only
`_tokenizer`, `chat_template` and `completion_only_loss` from it, which SFTTrainer.__init__ sets as
below, so no model is built. The tokenizer is the bundled one with the official Gemma 4 template
that trl ships; `add_bos_token=True` as Gemma's base tokenizers set it (gemma-train always starts
plain text with <bos>, docs/data.md). assistant_only_loss is not here: TRL refuses it on Gemma 4
(tests/data/sft_data_test.cpp checks ours against a hand-built expectation)."""
import json
import shutil
import types

import pytest
from datasets import Dataset
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from conftest import REPO, official_template, run

TOKENIZER_DIR = REPO / "configs" / "tokenizer"
MAX_LENGTH = 48

LONG = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
TEXT_ROWS = [
    {"text": "Hello world"},
    {"text": "The model trains on the data, quickly."},
    {"text": LONG + " " + LONG},  # needs truncation
    {"text": "ends with its eos<eos>"},
    {"text": "a <|turn>user\nhi<turn|> rendered by hand"},  # control tokens written in text
]
PLAIN_COMPLETION_ROWS = [
    {"prompt": "The sky is", "completion": " blue."},
    {"prompt": "Hel", "completion": "lo world"},  # tokens merge across the boundary
    {"prompt": "Q: 2+2?\nA:", "completion": " 4"},
    {"prompt": LONG + " " + LONG, "completion": " end"},  # prompt fills max_length: dropped
    {"prompt": "short", "completion": " " + LONG + " " + LONG},  # completion truncated
]
CONV_COMPLETION_ROWS = [
    {"prompt": [{"role": "user", "content": "What color is the sky?"}],
     "completion": [{"role": "assistant", "content": "Blue."}]},
    {"prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "  Bye  "}],
     "completion": [{"role": "assistant", "content": "Bye!"}]},
    {"prompt": [{"role": "user", "content": "Count."}],
     "completion": [{"role": "assistant", "content": LONG}]},
]
MESSAGES_ROWS = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    {"messages": [{"role": "system", "content": " You are terse. "}, {"role": "user", "content": "Q1"},
                  {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
                  {"role": "assistant", "content": "A2"}]},
    {"messages": [{"role": "user", "content": LONG}, {"role": "assistant", "content": LONG}]},
    {"messages": [{"role": "developer", "content": "Rules."}, {"role": "user", "content": "x"},
                  {"role": "assistant", "content": "y"}]},
]
CASES = {"text": TEXT_ROWS, "plain_completion": PLAIN_COMPLETION_ROWS,
         "conversational_completion": CONV_COMPLETION_ROWS, "messages": MESSAGES_ROWS}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A model folder's text files (validate-data needs only the tokenizer) and TRL's tokenizer."""
    folder = tmp_path_factory.mktemp("sft") / "model"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_DIR / name, folder / name)
    template = official_template()
    (folder / "chat_template.jinja").write_text(template)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), add_bos_token=True)
    tokenizer.chat_template = template
    return folder, tokenizer


def trl_prepare(tokenizer, rows, **config):
    """SFTTrainer._prepare_dataset on `rows`, with the attributes SFTTrainer.__init__ would set."""
    args = SFTConfig(output_dir="/tmp/unused-sft-output", report_to=[], bf16=False, use_cpu=True, **config)
    dataset = Dataset.from_list(rows)
    sample = rows[0]
    completion_only = args.completion_only_loss
    if completion_only is None:
        completion_only = "prompt" in sample and "completion" in sample
    trainer = types.SimpleNamespace(_tokenizer=tokenizer, chat_template=None,
                                    completion_only_loss=completion_only)
    prepared = SFTTrainer._prepare_dataset(trainer, dataset, tokenizer, args, args.packing, None, "train")
    return [dict(row) for row in prepared]


def our_dump(gemma_train, model_dir, rows, tmp_path, recipe_training=None):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dump = tmp_path / "dump.jsonl"
    if recipe_training is None:
        proc = run(gemma_train, "validate-data", "--data", data, "--model", model_dir,
                   "--max-length", MAX_LENGTH, "--dump", dump, "--overwrite")
    else:
        recipe = tmp_path / "recipe.yaml"
        training = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in recipe_training.items())
        recipe.write_text(f"model:\n  name_or_path: {model_dir}\ndata:\n  train_files: {data}\n"
                          f"training:\n  output_dir: {tmp_path / 'out'}\n{training}")
        proc = run(gemma_train, "validate-data", "--recipe", recipe, "--dump", dump, "--overwrite")
    assert "0 bad" in proc.stdout, proc.stdout
    return [json.loads(line) for line in dump.read_text().splitlines()]


def labels_of(example):
    return [t if m else -100 for t, m in zip(example["input_ids"], example["labels_mask"])]


@pytest.mark.parametrize("case", sorted(CASES))
def test_prepared_examples_equal_trl(gemma_train, setup, tmp_path, case):
    model_dir, tokenizer = setup
    rows = CASES[case]
    expected = trl_prepare(tokenizer, rows, max_length=MAX_LENGTH)
    ours = our_dump(gemma_train, model_dir, rows, tmp_path)
    assert len(ours) == len(expected), [e["input_ids"] for e in expected]
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    for mine, theirs in zip(ours, expected):
        assert mine["input_ids"] == theirs["input_ids"], tokenizer.decode(theirs["input_ids"])
        assert labels_of(mine) == theirs["labels"], (mine["origin"], tokenizer.decode(theirs["input_ids"]))
        batch = collator([{"input_ids": theirs["input_ids"], "labels": theirs["labels"]}])
        assert labels_of(mine) == batch["labels"][0].tolist()
        assert mine["seq_lengths"] == [len(mine["input_ids"])]


def test_a_case_really_merges_across_the_boundary(setup):
    _, tokenizer = setup
    prompt = tokenizer("Hel")["input_ids"]
    full = tokenizer("Hello world<eos>")["input_ids"]
    assert full[:len(prompt)] != prompt  # so the common-prefix rule is exercised above


@pytest.mark.parametrize("case", ["text", "messages", "plain_completion"])
def test_bfd_packing_equals_trl(gemma_train, setup, tmp_path, case):
    model_dir, tokenizer = setup
    rows = CASES[case] * 3  # enough documents to share bins
    length = 40
    expected = trl_prepare(tokenizer, rows, max_length=length, packing=True, packing_strategy="bfd")
    ours = our_dump(gemma_train, model_dir, rows, tmp_path,
                    {"max_length": length, "packing": True, "packing_strategy": "bfd"})
    assert len(ours) == len(expected)
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    for mine, theirs in zip(ours, expected):
        assert mine["input_ids"] == theirs["input_ids"]
        assert mine["seq_lengths"] == theirs["seq_lengths"]
        batch = collator([{k: theirs[k] for k in ("input_ids", "labels", "seq_lengths")}])
        assert labels_of(mine) == batch["labels"][0].tolist()


def test_wrapped_packing_equals_trl(gemma_train, setup, tmp_path):
    model_dir, tokenizer = setup
    rows = TEXT_ROWS * 2
    expected = trl_prepare(tokenizer, rows, max_length=16, packing=True, packing_strategy="wrapped")
    ours = our_dump(gemma_train, model_dir, rows, tmp_path,
                    {"max_length": 16, "packing": True, "packing_strategy": "wrapped"})
    assert [m["input_ids"] for m in ours] == [e["input_ids"] for e in expected]
    assert [labels_of(m) for m in ours] == [e["labels"] for e in expected]


def test_validate_data_reports_bad_rows_and_exits_2(gemma_train, setup, tmp_path):
    model_dir, _ = setup
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "fine"}\n{"text": "fine"}\n{"text": 3}\n{oops\n\n'
                    + json.dumps({"text": LONG + " " + LONG}) + "\n")
    proc = run(gemma_train, "validate-data", "--data", data, "--model", model_dir, "--max-length", 8,
               check=False)
    assert proc.returncode == 2, proc.stderr
    out = proc.stdout
    assert f"{data}:2: duplicate row: the same content as {data}:1" in out
    assert f'{data}:3: "text" must be a string (found a number)' in out
    assert f"{data}:4: invalid JSON at column" in out
    assert f"{data}:6: " in out and "tokens, over max_length 8" in out
    assert "5 rows of text data, 2 bad" in out
    missing = run(gemma_train, "validate-data", "--data", tmp_path / "nope.jsonl", check=False)
    assert missing.returncode == 2 and "cannot open" in missing.stderr  # InputError: exit 2 as well
