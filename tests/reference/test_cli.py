"""The gemma-train CLI on bad input: one line on stderr naming the problem, a non-zero exit, never a
crash (signal) or a hang; and the loader's peak memory."""
import json
import resource
import shutil
import struct
import subprocess

import numpy as np
import pytest

from conftest import REPO, run


@pytest.fixture(scope="module")
def tiny(gemma_train, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "model"
    run(gemma_train, "init", "--config", "tiny-31b", "--out", out, "--dtype", "f32", "--text-only")
    return out


def expect_error(gemma_train, args, needle):
    proc = subprocess.run([gemma_train, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert proc.returncode > 0, f"exit {proc.returncode} (negative = killed by a signal): {proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], lines[0]
    return lines[0]


def copy_with_weights(tiny, tmp_path, new_bytes):
    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    (bad / "model.safetensors").write_bytes(new_bytes)
    return bad


def logits_args(model, tmp_path):
    return ["logits", "--model", model, "--ids", "1,2,3", "--out", tmp_path / "out.bin"]


def test_truncated_safetensors(gemma_train, tiny, tmp_path):
    data = (tiny / "model.safetensors").read_bytes()
    bad = copy_with_weights(tiny, tmp_path, data[: len(data) // 2])
    expect_error(gemma_train, logits_args(bad, tmp_path), "out of range")
    assert not (tmp_path / "out.bin").exists()


def test_bad_header_length(gemma_train, tiny, tmp_path):
    data = (tiny / "model.safetensors").read_bytes()
    bad = copy_with_weights(tiny, tmp_path, struct.pack("<Q", 1 << 50) + data[8:])
    expect_error(gemma_train, logits_args(bad, tmp_path), "bad header length")


def rewrite_header(data, edit):
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    # keep the data section where it was relative to the header start by re-basing the offsets
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def test_overlapping_offsets(gemma_train, tiny, tmp_path):
    def edit(h):
        names = [k for k in h if k != "__metadata__"]
        a, b = names[0], names[1]
        size_b = h[b]["data_offsets"][1] - h[b]["data_offsets"][0]
        h[b]["data_offsets"] = [h[a]["data_offsets"][0], h[a]["data_offsets"][0] + size_b]
    bad = copy_with_weights(tiny, tmp_path, rewrite_header((tiny / "model.safetensors").read_bytes(), edit))
    expect_error(gemma_train, logits_args(bad, tmp_path), "overlapping")


def test_dtype_shape_size_mismatch(gemma_train, tiny, tmp_path):
    def edit(h):
        name = next(k for k in h if k.endswith("norm.weight"))
        h[name]["shape"] = [h[name]["shape"][0] + 1]
    bad = copy_with_weights(tiny, tmp_path, rewrite_header((tiny / "model.safetensors").read_bytes(), edit))
    expect_error(gemma_train, logits_args(bad, tmp_path), "but data_offsets span")


def test_config_missing_required_field(gemma_train, tiny, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    config = json.loads((bad / "config.json").read_text())
    del config["num_attention_heads"]
    (bad / "config.json").write_text(json.dumps(config))
    line = expect_error(gemma_train, logits_args(bad, tmp_path), "\"num_attention_heads\" is missing")
    assert "config.json" in line


def test_bad_flags_and_ids(gemma_train, tiny, tmp_path):
    expect_error(gemma_train, ["logits", "--model", tiny, "--ids", "1,x", "--out", tmp_path / "o"], "--ids")
    expect_error(gemma_train, ["logits", "--model", tiny, "--ids", "1,99999", "--out", tmp_path / "o"],
                 "outside the vocabulary")
    expect_error(gemma_train, ["logits", "--model", tiny, "--idz", "1"], "unknown flag --idz")
    expect_error(gemma_train, ["logits", "--model", tiny, "--ids", "1", "--out", tmp_path / "o", "--dtype", "f8"],
                 "--dtype expects f32|bf16")
    expect_error(gemma_train, ["init", "--config", "nope", "--out", tmp_path / "x"], "not a bundled config")
    expect_error(gemma_train, ["init", "--config", "tiny-31b", "--out", tiny], "already exists")
    expect_error(gemma_train, ["info", "--model", tmp_path / "missing"], "config.json")


def test_info_reports_counts(gemma_train, tmp_path):
    out = tmp_path / "e2b"
    run(gemma_train, "init", "--config", "tiny-e2b", "--out", out, "--dtype", "f32")
    text = run(gemma_train, "info", "--model", out).stdout
    assert "PLE 49152" in text and "embeddings 32768" in text, text
    assert "6 ignored" in text and "KV-shared" in text, text


def child_peak_rss_kb(args):
    """Peak RSS of one child run, from wait4's rusage."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = __import__("os").wait4(proc.pid, 0)
    assert status == 0, args
    return usage.ru_maxrss


def test_loading_peak_memory_stays_near_model_size(gemma_train, tmp_path):
    """Streaming load: peak RSS while loading a ~130 MB f32 checkpoint stays below baseline + 1.5x
    the model (a load that held file and model at once, or built the model twice, would need 2x)."""
    out = tmp_path / "bench"
    run(gemma_train, "init", "--config", "bench-100m", "--out", out, "--dtype", "f32")
    model_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    baseline = child_peak_rss_kb([gemma_train, "info", "--model", str(out)]) * 1024
    peak = child_peak_rss_kb([gemma_train, "logits", "--model", str(out), "--ids", "1,2,3,4",
                              "--out", str(tmp_path / "o.bin"), "--threads", "1"]) * 1024
    growth = peak - baseline
    print(f"model {model_bytes / 1e6:.0f} MB, baseline {baseline / 1e6:.0f} MB, peak {peak / 1e6:.0f} MB")
    assert growth < 1.5 * model_bytes, f"load grew RSS by {growth / 1e6:.0f} MB for a {model_bytes / 1e6:.0f} MB model"


@pytest.fixture(scope="module")
def demo(gemma_train, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "model"
    run(gemma_train, "init", "--config", "demo", "--out", out, "--dtype", "f32")
    for f in (REPO / "configs" / "tokenizer").iterdir():
        shutil.copy(f, out / f.name)
    return out


def test_generate_bad_input(gemma_train, demo, tmp_path):
    no_tok = tmp_path / "no_tok"
    shutil.copytree(demo, no_tok)
    (no_tok / "tokenizer.json").unlink()
    (no_tok / "tokenizer.model").unlink()
    expect_error(gemma_train, ["generate", "--model", no_tok, "--prompt", "hi"], "no tokenizer.json or tokenizer.model")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(demo, corrupt)
    (corrupt / "tokenizer.json").write_text("{\"model\": {\"type\": \"BPE\", \"vocab\": ")
    expect_error(gemma_train, ["generate", "--model", corrupt, "--prompt", "hi"], "tokenizer.json: not valid JSON")
    bad_role = tmp_path / "role.json"
    bad_role.write_text(json.dumps([{"role": "robot", "content": "hi"}]))
    expect_error(gemma_train, ["generate", "--model", demo, "--messages", bad_role], "unknown role \"robot\"")
    order = tmp_path / "order.json"
    order.write_text(json.dumps([{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]))
    expect_error(gemma_train, ["generate", "--model", demo, "--messages", order], "must come first")
    orphan = tmp_path / "orphan.json"
    orphan.write_text(json.dumps([{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]))
    expect_error(gemma_train, ["generate", "--model", demo, "--messages", orphan], "must follow an assistant")
    expect_error(gemma_train, ["generate", "--model", demo, "--prompt", "word " * 5000],
                 "longer than the model's context")
    expect_error(gemma_train, ["generate", "--model", demo, "--prompt", "x", "--top-p", "2"], "--top-p")
    expect_error(gemma_train, ["generate", "--model", demo], "exactly one of --prompt")
    bad_jsonl = tmp_path / "in.jsonl"
    bad_jsonl.write_text("{\"prompt\": \"ok\"}\n{\"nope\": 1}\n")
    expect_error(gemma_train, ["generate", "--model", demo, "--input", bad_jsonl, "--output", tmp_path / "o.jsonl"],
                 "in.jsonl:2")
    assert not (tmp_path / "o.jsonl").exists()


def test_chat_keeps_a_conversation(gemma_train, demo):
    proc = subprocess.run([gemma_train, "chat", "--model", str(demo), "--temperature", "0", "--max-new-tokens", "5"],
                          input="Hello\nAnd again\n/exit\n", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("model> ") == 2, proc.stdout


def test_logits_with_an_adapter(gemma_train, tiny, tmp_path):
    """A PEFT-layout adapter folder (written here by hand) changes the logits; a rank mismatch is refused."""
    from safetensors.torch import load_file, save_file
    import torch
    from conftest import our_logits
    base = load_file(tiny / "model.safetensors")
    tensors = {}
    g = torch.Generator().manual_seed(0)
    for key, w in base.items():
        if key.endswith("self_attn.q_proj.weight"):
            stem = "base_model.model." + key[: -len(".weight")]
            tensors[stem + ".lora_A.weight"] = torch.randn(4, w.shape[1], generator=g) * 0.1
            tensors[stem + ".lora_B.weight"] = torch.randn(w.shape[0], 4, generator=g) * 0.1
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file(tensors, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
              "target_modules": ["q_proj"], "bias": "none", "use_dora": False, "use_rslora": False}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    ids = [2, 5, 9, 11]
    plain = our_logits(gemma_train, tiny, ids, tmp_path)
    out = tmp_path / "with.bin"
    run(gemma_train, "logits", "--model", tiny, "--ids", "2,5,9,11", "--out", out, "--adapter", adapter)
    with_adapter = np.fromfile(out, dtype="<f4").reshape(plain.shape)
    assert np.abs(with_adapter - plain).max() > 1e-3
    config["r"] = 8
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    expect_error(gemma_train, ["logits", "--model", tiny, "--ids", "1,2", "--out", tmp_path / "x.bin", "--adapter",
                               adapter], "rank mismatch")


RECIPE = """model:
  name_or_path: {model}
  load_in_4bit: true
peft:
  r: 8
  lora_alpha: 16
data:
  train_files: train.jsonl
training:
  method: sft
  output_dir: {out}
  {lr_key}: 1e-4
"""


def test_train_reads_the_recipe_before_anything_else(gemma_train, tmp_path):
    """`gemma-train --recipe R` is the train command: a misspelt key or a bad --set is one line
    naming file:line:column (or the --set) and the nearest key; --print-config prints a recipe
    that reads back to itself; a recipe naming no model folder stops before anything is written."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(model=tmp_path / "m", out=tmp_path / "run", lr_key="learnig_rate"))
    expect_error(gemma_train, ["--recipe", recipe], f"{recipe}:12:3: unknown key training.learnig_rate "
                                                     "(did you mean training.learning_rate?)")
    recipe.write_text(RECIPE.format(model=tmp_path / "m", out=tmp_path / "run", lr_key="learning_rate"))
    expect_error(gemma_train, ["train", "--recipe", recipe, "--set", "training.max_steps=x"],
                 "--set training.max_steps=x: training.max_steps: expected an integer")
    printed = run(gemma_train, "--recipe", recipe, "--set", "training.max_steps=10", "--print-config").stdout
    assert "max_steps: 10" in printed and "learning_rate: 0.0001" in printed.replace("1e-04", "0.0001")
    again = tmp_path / "again.yaml"
    again.write_text(printed)
    assert run(gemma_train, "--recipe", again, "--print-config").stdout == printed
    expect_error(gemma_train, ["--recipe", recipe],
                 f"model.name_or_path {tmp_path / 'm'} is not a model folder (no config.json there)")
    assert not (tmp_path / "run").exists()


def test_outputs_that_must_not_be_replaced(gemma_train, demo, tiny, tmp_path):
    """An output that is an input, a symlink, a FIFO or an existing export is refused before any
    work, with one line naming it; what was there stays as it was. A full stdout is an error."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("{\"prompt\": \"hi\"}\n")
    expect_error(gemma_train, ["generate", "--model", demo, "--input", prompts, "--output", prompts],
                 "also an input")
    assert prompts.read_text() == "{\"prompt\": \"hi\"}\n"
    precious = tmp_path / "precious.bin"
    precious.write_bytes(b"keep")
    link = tmp_path / "link.bin"
    link.symlink_to(precious)
    expect_error(gemma_train, ["logits", "--model", tiny, "--ids", "1,2", "--out", link], "symbolic link")
    assert link.is_symlink() and precious.read_bytes() == b"keep"
    fifo = tmp_path / "fifo"
    __import__("os").mkfifo(fifo)
    expect_error(gemma_train, ["logits", "--model", tiny, "--ids", "1,2", "--out", fifo], "not a regular file")
    expect_error(gemma_train, ["logits", "--model", tiny, "--ids", "1,2", "--out", tiny / "config.json"],
                 "also an input")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"older export")
    expect_error(gemma_train, ["export", "--format", "gguf", "--model", tiny, "--out", gguf], "already exists")
    assert gguf.read_bytes() == b"older export"
    with open("/dev/full", "w") as full:
        proc = subprocess.run([gemma_train, "info", "--model", str(tiny)], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    assert proc.returncode == 2, proc
    assert "stdout: write failed" in proc.stderr, proc.stderr
    assert not [p for p in tmp_path.iterdir() if ".gemma-tmp-" in p.name]


def test_flag_values_are_bounded(gemma_train, tiny):
    expect_error(gemma_train, ["info", "--model", tiny, "--threads", "100000"], "from 1 to 1024")
    expect_error(gemma_train, ["logits", "--model", tiny, "--ids", "1", "--out", "--threads", "1"],
                 "--out needs a value, found the flag \"--threads\"")


def input_error_line(gemma_train, args):
    """The one stderr line of an InputError (exit 2), which must come within a few seconds."""
    proc = subprocess.run([gemma_train, *map(str, args)], capture_output=True, text=True, timeout=15)
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert len(lines[0]) < 400, lines[0]
    return lines[0]


def test_config_sizes_and_tensor_shapes_are_checked_before_use(gemma_train, tiny, tmp_path):
    """A config.json size no model has (hidden_size 2**40) is one InputError naming the key from
    `info` and `logits`, before anything is sized from it; a tensor whose shape disagrees with
    config.json is one from `info` too, naming the tensor, as loading it for `logits` is."""
    config = json.loads((tiny / "config.json").read_text())
    huge = tmp_path / "huge"
    shutil.copytree(tiny, huge)
    (huge / "config.json").write_text(json.dumps({**config, "hidden_size": 2**40}))
    for args in (["info", "--model", huge], logits_args(huge, tmp_path)):
        line = input_error_line(gemma_train, args)
        assert "config.json" in line and "key \"hidden_size\"" in line and str(2**40) in line, line
    assert not (tmp_path / "out.bin").exists()

    wide = tmp_path / "wide"
    shutil.copytree(tiny, wide)
    inter = config["intermediate_size"]
    (wide / "config.json").write_text(json.dumps({**config, "intermediate_size": inter + 2}))
    line = input_error_line(gemma_train, ["info", "--model", wide])
    assert line.endswith(f"tensor \"model.layers.0.mlp.gate_proj.weight\" has shape "
                         f"[{inter}, {config['hidden_size']}], expected [{inter + 2}, {config['hidden_size']}]"), line
    line = input_error_line(gemma_train, logits_args(wide, tmp_path))
    assert "mlp." in line and f"expected [{inter + 2}, " in line, line


# ---- Target regexes through RE2, and adapter_config.json keys gemma-train does not implement.

def test_catastrophic_target_regex_finishes(gemma_train, tiny, tmp_path):
    """A pattern a backtracking engine takes exponential time on (std::regex, Python's re) is
    matched by RE2 in time linear in each module path: the command ends in seconds, saying no
    module matches; one RE2 cannot compile is refused naming the regex."""
    import time
    for pattern in ["(a+)+$", "([a-z_.0-9]+)+x", "(.*)*x"]:
        start = time.monotonic()
        expect_error(gemma_train, ["adapter", "--model", tiny, "--out", tmp_path / "a", "--target-regex", pattern],
                     "no module matches")
        assert time.monotonic() - start < 20, pattern
    line = expect_error(gemma_train, ["adapter", "--model", tiny, "--out", tmp_path / "a", "--target-regex",
                                      r"(q|k)_proj\.\1"], "cannot be used: invalid escape sequence")
    assert "no backreferences, lookarounds" in line, line
    assert "--target-regex: regular expression" in line, line  # named, and checked before loading
    assert not (tmp_path / "a").exists()


def peft_adapter_folder(gemma_train, tiny, out, **config):
    """A fresh gemma-train adapter folder whose adapter_config.json gets `config`'s keys."""
    run(gemma_train, "adapter", "--model", tiny, "--out", out, "--r", "4")
    path = out / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return out


def test_unsupported_adapter_config_keys_are_refused(gemma_train, tiny, tmp_path):
    adapter = peft_adapter_folder(gemma_train, tiny, tmp_path / "layers", layers_to_transform=[0])
    args = ["logits", "--model", tiny, "--ids", "1,2", "--out", tmp_path / "x.bin", "--adapter", adapter]
    proc = subprocess.run(list(map(str, [gemma_train, *args])), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc
    assert proc.stderr.strip() == (
        f"gemma-train: error: {adapter / 'adapter_config.json'}: key \"layers_to_transform\" is not supported (gemma-train applies "
        "the adapter to every matching layer); remove it or set it to null"), proc.stderr
    assert not (tmp_path / "x.bin").exists()
    for key, value in [("rank_pattern", {"q_proj": 8}), ("modules_to_save", ["lm_head"]), ("lora_bias", True),
                       ("init_lora_weights", "pissa")]:
        adapter = peft_adapter_folder(gemma_train, tiny, tmp_path / key, **{key: value})
        expect_error(gemma_train, ["logits", "--model", tiny, "--ids", "1,2", "--out", tmp_path / "x.bin",
                                   "--adapter", adapter], f"key \"{key}\"")
    # A string target_modules is RE2's too: a catastrophic one ends at once.
    adapter = peft_adapter_folder(gemma_train, tiny, tmp_path / "regex", target_modules="([a-z_.0-9]+)+x")
    expect_error(gemma_train, ["logits", "--model", tiny, "--ids", "1,2", "--out", tmp_path / "x.bin",
                               "--adapter", adapter], "no module matches")


def test_fan_in_fan_out_on_linear_layers_loads_as_peft_loads_it(gemma_train, tiny, tmp_path):
    """fan_in_fan_out is for GPT-2's Conv1D; on nn.Linear PEFT sets it back to false when it loads
    the adapter, so a config saying true gives PEFT's logits here too."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import Gemma4ForCausalLM
    from conftest import relative_error

    def base():
        return Gemma4ForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()

    torch.manual_seed(0)
    model = get_peft_model(base(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                              init_lora_weights=False))
    model.save_pretrained(tmp_path / "peft")
    path = tmp_path / "peft" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "fan_in_fan_out": True}))
    ids = [2, 5, 9, 11, 17, 3]
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base(), tmp_path / "peft")(input_ids=torch.tensor([ids])).logits[0]
    out = tmp_path / "ours.bin"
    run(gemma_train, "logits", "--model", tiny, "--ids", ",".join(map(str, ids)), "--out", out,
        "--dtype", "f32", "--adapter", tmp_path / "peft")
    ours = np.fromfile(out, dtype="<f4").reshape(len(ids), -1)
    assert relative_error(ours, expected.float().numpy()) < 1e-4
    plain = tmp_path / "plain.bin"
    run(gemma_train, "logits", "--model", tiny, "--ids", ",".join(map(str, ids)), "--out", plain, "--dtype", "f32")
    assert relative_error(ours, np.fromfile(plain, dtype="<f4").reshape(len(ids), -1)) > 1e-3  # it matters
