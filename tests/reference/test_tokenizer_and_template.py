"""The tokenizer and the chat template against the Python stack: ids of PyPI `tokenizers` on the
bundled tokenizer.json, and conversations rendered by transformers' apply_chat_template from the
official Gemma 4 chat template that the installed `trl` ships (trl/chat_templates/gemma4*.jinja)."""
import json
import shutil

import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from conftest import REPO, official_template, run

TOKENIZER_DIR = REPO / "configs" / "tokenizer"

CORPUS = [
    "Hello world", "The model trains on the data, quickly.", "  two leading spaces and   three inside",
    "trailing spaces   ", "line one\nline two\n\nline four\n", "tab\tseparated\tvalues",
    "numbers 0 12 345 6789 3.14159 -42 1e-9", "café naïve über Straße Ωmega αβγ привет", "日本語 中文 한국어 नमस्ते",
    "emoji 😀 🚀 👍🏽 and ʕ•ᴥ•ʔ ∑∫ ⟨x⟩ ☃", "def f(x):\n    return x * 2\n", "{\"key\": [1, 2, 3], \"ok\": true}",
    "\n\n\n", "    ", "a", "zqxj kvbw rare letters", "Mixed CASE and ÀÉÎÕÜ accents!?",
]

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "description": "How many days", "nullable": True},
        "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["city"]}}}]

CONVERSATIONS = {
    "system_multi_turn": dict(messages=[
        {"role": "system", "content": " You are terse. "}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "  How are you?  "}],
        add_generation_prompt=True),
    "developer_role": dict(messages=[{"role": "developer", "content": "Rules."}, {"role": "user", "content": "x"}]),
    "thinking_on": dict(messages=[{"role": "user", "content": "2+2?"}], enable_thinking=True,
                        add_generation_prompt=True),
    "thinking_off_history_stripped": dict(messages=[
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<|channel>thought\nhmm<channel|>A1"},
        {"role": "user", "content": "Q2"}], add_generation_prompt=True),
    "reasoning_after_last_user": dict(messages=[
        {"role": "user", "content": "Q"}, {"role": "assistant", "reasoning_content": "let me see", "content": "A"}]),
    "tool_declaration_call_response": dict(messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Paris", "days": 2, "tags": ["a", "b"]}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."}], tools=WEATHER),
    "pending_tool_call": dict(messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}}]}],
        tools=WEATHER, add_generation_prompt=True),
    "tool_response_then_prompt_thinking": dict(messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [{"id": "x", "type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "tool_call_id": "x", "content": "rain"}],
        tools=WEATHER, enable_thinking=True, add_generation_prompt=True),
}


@pytest.fixture(scope="module")
def hf_tokenizer():
    tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER_DIR / "tokenizer.json"), bos_token="<bos>",
                                  eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = official_template()
    return tok


@pytest.fixture(scope="module")
def model_dir(gemma_train, tmp_path_factory):
    """Tokenizer files beside a checkpoint, as in a downloaded model folder."""
    out = tmp_path_factory.mktemp("tok") / "model"
    run(gemma_train, "init", "--config", "demo", "--out", out, "--dtype", "f32")
    for f in TOKENIZER_DIR.iterdir():
        shutil.copy(f, out / f.name)
    return out


def ids_of(text):
    return [int(x) for x in text.strip().split(",") if x]


@pytest.mark.parametrize("loader", ["tokenizer.json", "tokenizer.model"])
def test_ids_equal_pypi_tokenizers(gemma_train, tmp_path, loader):
    reference = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(TOKENIZER_DIR / loader, folder / loader)
    for text in CORPUS:
        ours = ids_of(run(gemma_train, "tokenize", "--model", folder, "--text", text).stdout)
        assert ours == reference.encode(text, add_special_tokens=False).ids, text
        with_bos = ids_of(run(gemma_train, "tokenize", "--model", folder, "--text", text, "--bos").stdout)
        assert with_bos == [reference.token_to_id("<bos>")] + ours


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_rendered_conversations_equal_the_official_template(gemma_train, hf_tokenizer, model_dir, tmp_path, name):
    conv = CONVERSATIONS[name]
    kwargs = {k: v for k, v in conv.items() if k in ("enable_thinking",)}
    expected = hf_tokenizer.apply_chat_template(conv["messages"], tools=conv.get("tools"), tokenize=True,
                                                add_generation_prompt=conv.get("add_generation_prompt", False),
                                                return_dict=False, **kwargs)
    if isinstance(expected, dict):
        expected = expected["input_ids"]
    request = tmp_path / "messages.json"
    request.write_text(json.dumps(conv))
    ours = ids_of(run(gemma_train, "tokenize", "--model", model_dir, "--messages", request).stdout)
    assert ours == list(expected), hf_tokenizer.decode(expected)


def test_greedy_generate_is_the_argmax_chain_of_logits(gemma_train, model_dir, tmp_path):
    import numpy as np
    from conftest import our_logits
    prompt = ids_of(run(gemma_train, "tokenize", "--model", model_dir, "--text", "The model", "--bos").stdout)
    out = run(gemma_train, "generate", "--model", model_dir, "--prompt", "The model", "--raw", "--ids",
              "--temperature", "0", "--max-new-tokens", "8")
    generated = ids_of(out.stdout)
    assert len(generated) >= 1 and "decode" in out.stderr and "tokens/s" in out.stderr
    seq = list(prompt)
    for token in generated:
        logits = our_logits(gemma_train, model_dir, seq, tmp_path)
        assert token == int(np.argmax(logits[-1]))
        seq.append(token)
    no_cache = run(gemma_train, "generate", "--model", model_dir, "--prompt", "The model", "--raw", "--ids",
                   "--temperature", "0", "--max-new-tokens", "8", "--no-cache")
    assert ids_of(no_cache.stdout) == generated


def test_seeded_sampling_repeats(gemma_train, model_dir):
    args = ["generate", "--model", model_dir, "--prompt", "Hello", "--ids", "--temperature", "1.0",
            "--max-new-tokens", "12", "--seed", "5"]
    first = ids_of(run(gemma_train, *args).stdout)
    assert first == ids_of(run(gemma_train, *args).stdout)
    # --warmup runs the prompt once first, unprinted: the same draws, printed once, both speeds
    warm = run(gemma_train, *args, "--warmup")
    assert ids_of(warm.stdout) == first
    assert warm.stderr.count("tokens/s") == 2


def test_warmup_in_batch_mode_changes_no_completion(gemma_train, model_dir, tmp_path):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Hi", "a b c"]))
    outs = []
    for extra in ([], ["--warmup"]):
        out = tmp_path / f"out{len(extra)}.jsonl"
        run(gemma_train, "generate", "--model", model_dir, "--input", tmp_path / "in.jsonl", "--output", out,
            "--temperature", "1.0", "--seed", "3", "--max-new-tokens", "5", "--batch-size", "1", *extra)
        outs.append(out.read_text())
    assert outs[0] == outs[1] and outs[0].count("\n") == 2


def test_batched_generation_matches_single_prompts(gemma_train, model_dir, tmp_path):
    prompts = ["Hello there", "The quick model", "a"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    run(gemma_train, "generate", "--model", model_dir, "--input", tmp_path / "in.jsonl", "--output",
        tmp_path / "out.jsonl", "--temperature", "0", "--max-new-tokens", "6")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    for p, row in zip(prompts, rows):
        single = ids_of(run(gemma_train, "generate", "--model", model_dir, "--prompt", p, "--ids", "--temperature",
                            "0", "--max-new-tokens", "6").stdout)
        assert row["ids"] == single, p
