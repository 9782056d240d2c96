"""Inputs with bounds: deep JSON, huge lines and prompts, ambiguous rows, invalid content parts,
tokenizer files checked before an export, a device as a config, and outputs replaced only with
--overwrite. Each is one line on stderr and exit 2, in seconds and bounded memory."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import run
from test_cli import demo, expect_error, tiny  # noqa: F401 (fixtures)

# The most a refused input may cost a command that has not loaded a model: well below what reading
# it whole and tokenizing it would. A command that loads the model first is held to the model's own
# footprint (measured by model_rss_mb) plus MODEL_SLACK_MB: two 64 MiB line buffers and change.
MAX_RSS_MB = 1024
MODEL_SLACK_MB = 256


# Runs a command as a child of this small process and writes "<exit status> <peak RSS KiB>".
# The indirection matters: Linux carries a process's peak RSS across exec, so a child forked
# straight from pytest (holding torch and models) would report pytest's peak, not its own.
MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def run_measured(gemma_train, args, timeout=60):
    """Runs gemma-train; returns (exit status, stderr, its own peak RSS in MiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        result, err_path = os.path.join(tmp, "result"), os.path.join(tmp, "stderr")
        with open(err_path, "w") as err:
            proc = subprocess.Popen([sys.executable, "-c", MEASURE, result, gemma_train, *map(str, args)],
                                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        with open(result) as f:
            code, rss_kib = (int(v) for v in f.read().split())
        with open(err_path) as f:
            return code, f.read(), rss_kib / 1024


def timed_error(gemma_train, args, needle, seconds=30, max_rss_mb=MAX_RSS_MB):
    """expect_error, also bounding the wall time and the command's peak memory."""
    start = time.monotonic()
    code, stderr, rss_mb = run_measured(gemma_train, args, timeout=seconds + 30)
    assert time.monotonic() - start < seconds
    assert code > 0, f"exit {code} (negative = killed by a signal): {stderr}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert needle in lines[0], lines[0]
    assert rss_mb < max_rss_mb, f"peak RSS {rss_mb:.0f} MiB, limit {max_rss_mb:.0f}"
    assert len(lines[0]) < 400, lines[0]
    return lines[0]


def model_rss_mb(gemma_train, demo, tmp_path):
    """Peak RSS of `generate --input` that loads the demo model and stops at a short bad line."""
    small = tmp_path / "small.jsonl"
    small.write_text("{\"neither\": 1}\n")
    code, stderr, rss_mb = run_measured(gemma_train, ["generate", "--model", demo, "--input", small,
                                                      "--output", tmp_path / "small-out.jsonl"])
    assert code == 2, stderr
    return rss_mb


def test_deep_json_is_refused_not_recursed_into(gemma_train, demo, tmp_path):
    deep = "{\"a\":" * 20000 + "1" + "}" * 20000
    messages = tmp_path / "deep.json"
    messages.write_text("[{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", \"tool_calls\": "
                        "[{\"function\": {\"name\": \"f\", \"arguments\": " + deep + "}}]}]")
    timed_error(gemma_train, ["tokenize", "--model", demo, "--messages", messages], "nested deeper than 128 levels")
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]})[:-1] +
                     ", \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": " +
                     deep + "}}]}")
    timed_error(gemma_train, ["generate", "--model", demo, "--messages", tools], "nested deeper than 128 levels",
                max_rss_mb=model_rss_mb(gemma_train, demo, tmp_path) + MODEL_SLACK_MB)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("{\"text\": \"a\"}\n{\"messages\": " + "[" * 30000 + "]" * 30000 + "}\n")
    proc = subprocess.run([gemma_train, "validate-data", "--data", str(rows), "--model", str(demo)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc
    assert "rows.jsonl:2: JSON nested deeper than 128 levels" in proc.stdout + proc.stderr


def test_huge_lines_and_prompts_are_refused_before_tokenizing(gemma_train, demo, tmp_path):
    huge = tmp_path / "huge.jsonl"
    with open(huge, "w") as f:  # 70 MB on one line: over the 64 MiB a row may have
        f.write("{\"prompt\": \"" + "a" * (70 << 20) + "\"}\n")
    limit = model_rss_mb(gemma_train, demo, tmp_path) + MODEL_SLACK_MB
    timed_error(gemma_train, ["generate", "--model", demo, "--input", huge, "--output", tmp_path / "o.jsonl"],
                "huge.jsonl:1: line longer than 64 MiB", max_rss_mb=limit)
    huge.unlink()
    long = tmp_path / "long.jsonl"
    with open(long, "w") as f:  # 8 MB: far more tokens than the demo model's 4096 positions
        f.write("{\"prompt\": \"" + "word " * ((8 << 20) // 5) + "\"}\n")
    line = timed_error(gemma_train, ["generate", "--model", demo, "--input", long, "--output", tmp_path / "o.jsonl"],
                       "long.jsonl:1: ", max_rss_mb=limit)
    assert "bytes, at least" in line and "longer than the model's context of 4096" in line
    assert not (tmp_path / "o.jsonl").exists()


def test_ambiguous_lines_and_invalid_parts_are_refused(gemma_train, demo, tmp_path):
    both = tmp_path / "both.jsonl"
    both.write_text("{\"prompt\": \"hi\"}\n{\"prompt\": \"a\", \"messages\": [{\"role\": \"user\", \"content\": \"b\"}]}\n")
    expect_error(gemma_train, ["generate", "--model", demo, "--input", both, "--output", tmp_path / "o.jsonl"],
                 "both.jsonl:2: both \"prompt\" and \"messages\"")
    parts = tmp_path / "parts.json"
    parts.write_text(json.dumps([{"role": "user", "content": [{"type": "text", "text": "a"}, {"kind": "x"}]}]))
    expect_error(gemma_train, ["tokenize", "--model", demo, "--messages", parts],
                 "messages[0]: content[1] has no string \"type\"")
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    expect_error(gemma_train, ["tokenize", "--model", demo, "--messages", empty], "no messages")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}) + "\n" +
                    json.dumps({"messages": [{"role": "user", "content": [{"type": "audio_clip"}]},
                                             {"role": "assistant", "content": "c"}]}) + "\n")
    proc = subprocess.run([gemma_train, "validate-data", "--data", str(rows), "--model", str(demo)],
                          capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "rows.jsonl:1: both \"prompt\" and \"messages\"" in out, out
    assert "rows.jsonl:2: messages: messages[0]: content[0]: unknown part type \"audio_clip\"" in out, out


def test_export_checks_tokenizer_files_first(gemma_train, demo, tmp_path):
    bad_template = tmp_path / "template"
    shutil.copytree(demo, bad_template)
    (bad_template / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages {{ m.content }}")
    config = json.loads((bad_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bad_template / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / "m.gguf"
    expect_error(gemma_train, ["export", "--format", "gguf", "--model", bad_template, "--out", out],
                 "opens \"{%\" at byte 16 and never closes it")
    bad_normalizer = tmp_path / "normalizer"
    shutil.copytree(demo, bad_normalizer)
    tok = json.loads((bad_normalizer / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "Lowercase"}
    (bad_normalizer / "tokenizer.json").write_text(json.dumps(tok))
    want = expect_error(gemma_train, ["tokenize", "--model", bad_normalizer, "--text", "a"], "normalizer")
    got = expect_error(gemma_train, ["export", "--format", "gguf", "--model", bad_normalizer, "--out", out],
                       "normalizer")
    assert got == want
    assert not out.exists()


def test_a_device_as_config_is_refused(gemma_train, tiny, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    (model / "config.json").unlink()
    (model / "config.json").symlink_to("/dev/zero")  # read only: /dev is never written
    timed_error(gemma_train, ["info", "--model", model], "config.json: not a regular file", seconds=10)


def test_a_fifo_as_weights_is_refused_without_blocking(gemma_train, tiny, tmp_path):
    """Opening a FIFO for reading waits for a writer: the weights file is refused before that."""
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    (model / "model.safetensors").unlink()
    os.mkfifo(model / "model.safetensors")
    timed_error(gemma_train, ["info", "--model", model], "model.safetensors: not a regular file", seconds=10)


def test_paths_the_file_system_refuses_are_input_errors(gemma_train, demo, tmp_path):
    """A name over the file system's limit (ENAMETOOLONG) is the user's to mend: exit 2, naming it."""
    long_name = tmp_path / ("a" * 300 + ".gguf")
    start = time.monotonic()
    line = expect_error(gemma_train, ["export", "--format", "gguf", "--model", demo, "--out", long_name],
                        "File name too long")  # the line names the path, so it is longer than most
    assert time.monotonic() - start < 30
    assert "aaaa" in line and not any(tmp_path.iterdir())  # nothing written beside it


def test_outputs_are_replaced_only_with_overwrite(gemma_train, tiny, demo, tmp_path):
    out = tmp_path / "logits.bin"
    out.write_bytes(b"previous")
    expect_error(gemma_train, ["logits", "--model", tiny, "--ids", "1,2", "--out", out], "--overwrite")
    assert out.read_bytes() == b"previous"
    run(gemma_train, "logits", "--model", tiny, "--ids", "1,2", "--out", out, "--overwrite")
    assert out.stat().st_size > len(b"previous")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("{\"prompt\": \"hi\"}\n")
    completions = tmp_path / "c.jsonl"
    completions.write_text("keep\n")
    expect_error(gemma_train, ["generate", "--model", demo, "--input", prompts, "--output", completions,
                               "--max-new-tokens", "1"], "--overwrite")
    assert completions.read_text() == "keep\n"
    assert not [p for p in tmp_path.iterdir() if ".gemma-tmp-" in p.name]
