"""`gemma-train export --format gguf` read back by gguf-py (the PyPI `gguf` package, llama.cpp's own
Python reader and converter library): the keys and types of gguf-gemma4.md §2, the tensors of §3
named by gguf-py's own GEMMA4 tensor map, and tensor data equal to the checkpoint as transformers
saved it (Q8_0 and BF16 bytes equal gguf-py's quantizers'; a PEFT adapter merged as peft merges it).
The tokenizer keys are compared with gguf-py's LlamaHfVocab and SpecialVocab, which the converter
uses."""
import json
import shutil
import subprocess
import types
import warnings

import gguf
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import Gemma4Config, Gemma4ForCausalLM, Gemma4ForConditionalGeneration, Gemma4TextConfig

from conftest import REPO, randomize, run

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

N_TOKENS = 450  # tokens kept from configs/tokenizer; the models have 512 embedding rows
ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
}
COMMON = dict(vocab_size=512, hidden_size=64, num_attention_heads=2, head_dim=32, global_head_dim=64,
              final_logit_softcapping=30.0, rope_parameters=ROPE, max_position_embeddings=2048,
              bos_token_id=2, eos_token_id=1, pad_token_id=0)
KINDS = {
    # PLE + KV sharing + double-wide MLP; llama.cpp's KV-reuse layout (S-2 sliding, S-1 full)
    "e2b_like": dict(COMMON, num_hidden_layers=6, num_key_value_heads=1, intermediate_size=96,
                     layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
                                  "sliding_attention", "full_attention"],
                     sliding_window=5, hidden_size_per_layer_input=16, vocab_size_per_layer_input=512,
                     num_kv_shared_layers=2, use_double_wide_mlp=True),
    # K = V full layers with their own KV head count
    "31b_like": dict(COMMON, num_hidden_layers=4, num_key_value_heads=2, num_global_key_value_heads=1,
                     attention_k_eq_v=True, intermediate_size=128, sliding_window=4,
                     layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                     hidden_size_per_layer_input=0, use_bidirectional_attention="vision"),
    # MoE (experts and router); an expert width of 48, so ffn_down_exps rows are not whole Q8_0 blocks
    "moe_like": dict(COMMON, num_hidden_layers=3, num_key_value_heads=2, num_global_key_value_heads=1,
                     attention_k_eq_v=True, intermediate_size=64, sliding_window=6, hidden_size_per_layer_input=0,
                     enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=48,
                     layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
}
DEFAULTS = dict(num_kv_shared_layers=0, use_double_wide_mlp=False, num_global_key_value_heads=None,
                enable_moe_block=False, rms_norm_eps=1e-6)


def settings(kind):
    """A kind's settings with transformers' defaults (read from the dict: transformers' per-layer
    config object refuses global reads of some of them)."""
    return types.SimpleNamespace(**{**DEFAULTS, **KINDS[kind]})


DTYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
          "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}
CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}<|turn>{{ m['role'] }}\n{{ m['content'] }}<turn|>\n{% endfor %}"


def write_small_tokenizer(dst):
    """configs/tokenizer cut to its first N_TOKENS ids, with the merges that stay inside them."""
    tok = json.loads((REPO / "configs" / "tokenizer" / "tokenizer.json").read_text())
    vocab = {t: i for t, i in tok["model"]["vocab"].items() if i < N_TOKENS}
    tok["model"]["vocab"] = vocab
    tok["model"]["merges"] = [m for m in tok["model"]["merges"]
                              if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    tok["added_tokens"] = [a for a in tok["added_tokens"] if a["id"] < N_TOKENS]
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    shutil.copy(REPO / "configs" / "tokenizer" / "tokenizer_config.json", dst / "tokenizer_config.json")


def hf_model(kind, multimodal, seed=1):
    text = Gemma4TextConfig(**KINDS[kind])
    model = (Gemma4ForConditionalGeneration(Gemma4Config(text_config=text.to_dict())) if multimodal
             else Gemma4ForCausalLM(text))
    model = model.to(torch.float32).eval()
    randomize(model, seed)
    return model


_CHECKPOINTS = {}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(kind, multimodal, dtype) -> a folder saved by transformers, with the small tokenizer."""
    def make(kind, multimodal, dtype=torch.float32):
        key = (kind, multimodal, dtype)
        if key not in _CHECKPOINTS:
            out = tmp_path_factory.mktemp(kind) / "model"
            hf_model(kind, multimodal).to(dtype).save_pretrained(out)
            write_small_tokenizer(out)
            if kind == "e2b_like":
                (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
            _CHECKPOINTS[key] = out
        return _CHECKPOINTS[key]
    return make


def export(gemma_train, model, out, dtype=None, adapter=None):
    args = ["export", "--format", "gguf", "--model", model, "--out", out]
    if dtype:
        args += ["--dtype", dtype]
    if adapter:
        args += ["--adapter", adapter]
    proc = run(gemma_train, *args)
    assert proc.stdout.startswith(f"wrote {out} (gemma4 GGUF"), proc.stdout
    return gguf.GGUFReader(out)


def hf_tensors(model_dir):
    """The text decoder's tensors as transformers saved them, keyed the converter's way
    (`model.language_model.` stripped to `model.`), float32 numpy."""
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        for k, v in load_file(f).items():
            if k.startswith("model.language_model."):
                k = "model." + k[len("model.language_model."):]
            elif not k.startswith("model.layers.") and k.split(".")[1] not in (
                    "embed_tokens", "norm", "embed_tokens_per_layer", "per_layer_model_projection",
                    "per_layer_projection_norm"):
                continue  # vision / audio towers
            out[k] = v.float().numpy()
    return out


def expected_gguf_tensors(cfg, tensors):
    """GGUF name -> (values, numpy shape) by gguf-py's GEMMA4 name map, with the converter's
    renames (router.scale, per_expert_scale), the vocabulary cut and the synthesised rope_freqs;
    without the K/V of KV-shared layers."""
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA4, cfg.num_hidden_layers)
    first_shared = cfg.num_hidden_layers - cfg.num_kv_shared_layers
    out = {}
    for key, value in tensors.items():
        parts = key.split(".")
        if parts[1] == "layers":
            bid = int(parts[2])
            if bid >= first_shared and len(parts) > 4 and parts[4] in ("k_proj", "k_norm", "v_proj"):
                continue
            if key.endswith("router.scale"):
                out[f"blk.{bid}.ffn_gate_inp.scale"] = value
                continue
            if key.endswith("router.per_expert_scale"):
                out[f"blk.{bid}.ffn_down_exps.scale"] = value
                continue
        base = key[: -len(".weight")] if key.endswith(".weight") else key
        name = name_map.get_name(base)
        assert name is not None, key
        if name in ("token_embd", "per_layer_token_embd"):
            value = value[:N_TOKENS]
        out[name + ".weight"] = value
    d_full = cfg.global_head_dim
    rotated = int(d_full * cfg.rope_parameters["full_attention"]["partial_rotary_factor"] / 2)
    out["rope_freqs.weight"] = np.array([1.0] * rotated + [1e30] * (d_full // 2 - rotated), dtype=np.float32)
    return out


def converter_qtype(name, ne, dtype):
    """gguf-gemma4.md §3 "Dtypes" (the converter's prepare_tensors)."""
    if len(ne) <= 1 or name.endswith("_norm.weight") or name.endswith("ffn_gate_inp.weight") \
            or not name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    if dtype == "q8_0" and ne[0] % 32 != 0:
        return gguf.GGMLQuantizationType.F16  # gguf-py's QuantError fallback
    return DTYPES[dtype]


def fields(reader):
    return {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}


V = gguf.GGUFValueType


def expected_key_types(cfg, moe):
    arr = lambda t: [V.ARRAY, t]  # noqa: E731
    keys = {
        "general.architecture": [V.STRING], "general.type": [V.STRING], "general.name": [V.STRING],
        "general.file_type": [V.UINT32], "general.quantization_version": [V.UINT32],
        "gemma4.context_length": [V.UINT32], "gemma4.embedding_length": [V.UINT32],
        "gemma4.block_count": [V.UINT32],
        "gemma4.feed_forward_length": arr(V.INT32) if cfg.use_double_wide_mlp else [V.UINT32],
        "gemma4.attention.head_count": [V.UINT32],
        "gemma4.attention.head_count_kv": arr(V.INT32) if cfg.num_global_key_value_heads else [V.UINT32],
        "gemma4.attention.key_length": [V.UINT32], "gemma4.attention.value_length": [V.UINT32],
        "gemma4.attention.key_length_swa": [V.UINT32], "gemma4.attention.value_length_swa": [V.UINT32],
        "gemma4.attention.layer_norm_rms_epsilon": [V.FLOAT32],
        "gemma4.attention.sliding_window": [V.UINT32],
        "gemma4.attention.sliding_window_pattern": arr(V.BOOL),
        "gemma4.attention.shared_kv_layers": [V.UINT32],
        "gemma4.embedding_length_per_layer_input": [V.UINT32],
        "gemma4.rope.freq_base": [V.FLOAT32], "gemma4.rope.freq_base_swa": [V.FLOAT32],
        "gemma4.rope.dimension_count": [V.UINT32], "gemma4.rope.dimension_count_swa": [V.UINT32],
        "gemma4.final_logit_softcapping": [V.FLOAT32],
        "tokenizer.ggml.model": [V.STRING], "tokenizer.ggml.tokens": arr(V.STRING),
        "tokenizer.ggml.scores": arr(V.FLOAT32), "tokenizer.ggml.token_type": arr(V.INT32),
        "tokenizer.ggml.merges": arr(V.STRING),
        "tokenizer.ggml.bos_token_id": [V.UINT32], "tokenizer.ggml.eos_token_id": [V.UINT32],
        "tokenizer.ggml.unknown_token_id": [V.UINT32], "tokenizer.ggml.padding_token_id": [V.UINT32],
        "tokenizer.ggml.mask_token_id": [V.UINT32],
        "tokenizer.ggml.add_bos_token": [V.BOOL], "tokenizer.ggml.add_space_prefix": [V.BOOL],
    }
    if moe:
        keys.update({"gemma4.expert_count": [V.UINT32], "gemma4.expert_used_count": [V.UINT32],
                     "gemma4.expert_feed_forward_length": [V.UINT32]})
    return keys


@pytest.mark.parametrize("kind,multimodal", [("e2b_like", True), ("31b_like", False), ("moe_like", False)])
def test_keys_types_and_values(gemma_train, checkpoint, tmp_path, kind, multimodal):
    model = checkpoint(kind, multimodal)
    reader = export(gemma_train, model, tmp_path / "m.gguf", "f32")
    cfg = settings(kind)
    expected = expected_key_types(cfg, cfg.enable_moe_block)
    if kind == "e2b_like":
        expected["tokenizer.chat_template"] = [V.STRING]
    got = fields(reader)
    assert sorted(got) == sorted(expected)
    for key, types in expected.items():
        assert got[key].types == types, key

    value = lambda k: got[k].contents()  # noqa: E731
    assert value("general.architecture") == "gemma4"
    assert value("general.file_type") == 0
    assert value("gemma4.context_length") == cfg.max_position_embeddings
    assert value("gemma4.embedding_length") == cfg.hidden_size
    assert value("gemma4.block_count") == cfg.num_hidden_layers
    first_shared = cfg.num_hidden_layers - cfg.num_kv_shared_layers
    ffn = [cfg.intermediate_size * (2 if cfg.use_double_wide_mlp and i >= first_shared else 1)
           for i in range(cfg.num_hidden_layers)]
    assert value("gemma4.feed_forward_length") == (ffn if cfg.use_double_wide_mlp else ffn[0])
    swa = [t == "sliding_attention" for t in cfg.layer_types]
    assert value("gemma4.attention.sliding_window_pattern") == swa
    if cfg.num_global_key_value_heads:
        assert value("gemma4.attention.head_count_kv") == [
            cfg.num_key_value_heads if s else cfg.num_global_key_value_heads for s in swa]
    else:
        assert value("gemma4.attention.head_count_kv") == cfg.num_key_value_heads
    assert value("gemma4.attention.head_count") == cfg.num_attention_heads
    assert value("gemma4.attention.key_length") == value("gemma4.attention.value_length") == cfg.global_head_dim
    assert value("gemma4.attention.key_length_swa") == value("gemma4.attention.value_length_swa") == cfg.head_dim
    assert value("gemma4.rope.dimension_count") == cfg.global_head_dim
    assert value("gemma4.rope.dimension_count_swa") == cfg.head_dim
    assert value("gemma4.rope.freq_base") == 1e6 and value("gemma4.rope.freq_base_swa") == 1e4
    assert value("gemma4.attention.sliding_window") == cfg.sliding_window
    assert value("gemma4.attention.shared_kv_layers") == cfg.num_kv_shared_layers
    assert value("gemma4.embedding_length_per_layer_input") == cfg.hidden_size_per_layer_input
    assert np.isclose(value("gemma4.attention.layer_norm_rms_epsilon"), cfg.rms_norm_eps)
    assert value("gemma4.final_logit_softcapping") == 30.0
    if cfg.enable_moe_block:
        assert value("gemma4.expert_count") == cfg.num_experts
        assert value("gemma4.expert_used_count") == cfg.top_k_experts
        assert value("gemma4.expert_feed_forward_length") == cfg.moe_intermediate_size


def test_tokenizer_keys_match_gguf_py_vocab(gemma_train, checkpoint, tmp_path):
    model = checkpoint("e2b_like", True)
    got = fields(export(gemma_train, model, tmp_path / "m.gguf"))
    vocab = gguf.LlamaHfVocab(model)
    tokens = list(vocab.all_tokens())
    assert got["tokenizer.ggml.tokens"].contents() == [t.decode() for t, _, _ in tokens]
    assert len(tokens) == N_TOKENS
    assert got["tokenizer.ggml.scores"].contents() == [s for _, s, _ in tokens]
    # Token types as the converter computes them, except that every added token marked "special"
    # in tokenizer.json is CONTROL (transformers' all_special_ids only lists the named ones of
    # tokenizer_config.json, which would leave <|turn> NORMAL and unparsable in a chat template).
    added = json.loads((model / "tokenizer.json").read_text())["added_tokens"]
    special = {a["id"] for a in added if a["special"]}
    visible = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
               "<tool_response|>", '<|"|>'}
    want = []
    for i, (text, _, toktype) in enumerate(tokens):
        t = int(toktype)
        if i in special and t != gguf.TokenType.BYTE:
            t = gguf.TokenType.CONTROL
        if text.decode() in visible:
            t = gguf.TokenType.USER_DEFINED
        want.append(int(t))
    assert got["tokenizer.ggml.token_type"].contents() == want
    assert want[5] == gguf.TokenType.CONTROL and want[8] == gguf.TokenType.USER_DEFINED

    special_vocab = gguf.SpecialVocab(model, load_merges=True)
    assert got["tokenizer.ggml.merges"].contents() == special_vocab.merges
    assert len(special_vocab.merges) > 10
    names = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
             "pad": "padding_token_id", "mask": "mask_token_id"}
    assert sorted(special_vocab.special_token_ids) == sorted(names)
    for typ, tid in special_vocab.special_token_ids.items():
        assert got[f"tokenizer.ggml.{names[typ]}"].contents() == tid, typ
    assert got["tokenizer.ggml.model"].contents() == "gemma4"
    assert got["tokenizer.ggml.add_bos_token"].contents() is True
    assert got["tokenizer.ggml.add_space_prefix"].contents() is False
    assert got["tokenizer.chat_template"].contents() == special_vocab.chat_template == CHAT_TEMPLATE


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0", None])
@pytest.mark.parametrize("kind,multimodal", [("e2b_like", True), ("moe_like", False)])
def test_tensors_match_the_checkpoint(gemma_train, checkpoint, tmp_path, kind, multimodal, dtype):
    model = checkpoint(kind, multimodal)
    reader = export(gemma_train, model, tmp_path / "m.gguf", dtype)
    dtype = dtype or "bf16"  # the default, as the converter's "auto" picks for bf16 checkpoints
    assert fields(reader)["general.file_type"].contents() == FILE_TYPES[dtype]
    cfg = settings(kind)
    expected = expected_gguf_tensors(cfg, hf_tensors(model))
    assert sorted(t.name for t in reader.tensors) == sorted(expected)
    for t in reader.tensors:
        want = expected[t.name]
        ne = list(reversed(want.shape))
        assert [int(n) for n in t.shape] == ne, t.name
        assert t.data_offset % 32 == 0, t.name
        qtype = converter_qtype(t.name, ne, dtype)
        assert t.tensor_type == qtype, t.name
        if qtype == gguf.GGMLQuantizationType.F32:
            np.testing.assert_array_equal(t.data.reshape(want.shape), want, err_msg=t.name)
        elif qtype == gguf.GGMLQuantizationType.F16:
            np.testing.assert_array_equal(t.data.reshape(want.shape), want.astype(np.float16), err_msg=t.name)
        else:  # BF16 / Q8_0: the very bytes gguf-py's quantizer writes
            ref = gguf.quants.quantize(want.astype(np.float32), qtype)
            assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), ref.view(np.uint8).reshape(-1)), t.name
            back = gguf.quants.dequantize(np.asarray(t.data), qtype).reshape(want.shape)
            assert np.abs(back - want).max() <= np.abs(want).max() / 100, t.name


def test_bf16_checkpoint_exports_its_own_bits(gemma_train, checkpoint, tmp_path):
    model = checkpoint("31b_like", False, torch.bfloat16)
    reader = export(gemma_train, model, tmp_path / "m.gguf", "bf16")
    raw = load_file(model / "model.safetensors")
    q = raw["model.layers.1.self_attn.q_proj.weight"]
    t = next(t for t in reader.tensors if t.name == "blk.1.attn_q.weight")
    assert t.tensor_type == gguf.GGMLQuantizationType.BF16
    assert np.array_equal(np.asarray(t.data).view(np.uint16).reshape(-1), q.view(torch.int16).numpy().view(np.uint16).reshape(-1))


def test_adapter_is_merged_as_peft_merges_it(gemma_train, checkpoint, tmp_path):
    from peft import LoraConfig, get_peft_model
    model_dir = checkpoint("e2b_like", False)
    peft_model = get_peft_model(hf_model("e2b_like", False), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = {k: v.float().numpy() for k, v in peft_model.merge_and_unload().state_dict().items()}
    reader = export(gemma_train, model_dir, tmp_path / "m.gguf", "f32", adapter=tmp_path / "adapter")
    cfg = settings("e2b_like")
    base = expected_gguf_tensors(cfg, hf_tensors(model_dir))
    want = expected_gguf_tensors(cfg, {k: v for k, v in merged.items() if k in hf_tensors(model_dir)})
    assert sorted(t.name for t in reader.tensors) == sorted(want)
    changed = 0
    for t in reader.tensors:
        got = t.data.reshape(want[t.name].shape)
        np.testing.assert_allclose(got, want[t.name], rtol=1e-5, atol=1e-6, err_msg=t.name)
        changed += not np.array_equal(got, base[t.name])
    assert changed >= 6 * 4  # every layer's q/o/gate/up/down at least


def expect_error(gemma_train, args, needle):
    proc = subprocess.run([gemma_train, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], lines[0]


def test_bad_input_is_one_line_and_leaves_nothing(gemma_train, checkpoint, tmp_path):
    model = checkpoint("31b_like", False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "m.gguf"
    base = ["export", "--format", "gguf", "--model", model, "--out", out]
    expect_error(gemma_train, base + ["--dtype", "q4_0"], "--dtype expects f32|f16|bf16|q8_0")
    expect_error(gemma_train, ["export", "--format", "onnx", "--model", model, "--out", out], "--format expects gguf")
    expect_error(gemma_train, ["export", "--model", model, "--out", out], "--format is required")
    expect_error(gemma_train, base + ["--shards", "2"], "unknown flag --shards")
    # An adapter made for another base (e2b_like has other shapes and layers).
    from peft import LoraConfig, get_peft_model
    other = get_peft_model(hf_model("e2b_like", False), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    other.save_pretrained(tmp_path / "other-adapter")
    proc = subprocess.run([gemma_train, *map(str, base + ["--adapter", tmp_path / "other-adapter"])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # A tokenizer that is not this model's.
    big = tmp_path / "big"
    shutil.copytree(model, big)
    shutil.copy(REPO / "configs" / "tokenizer" / "tokenizer.json", big / "tokenizer.json")
    expect_error(gemma_train, ["export", "--format", "gguf", "--model", big, "--out", out], "rows")
    assert list(out_dir.iterdir()) == []  # no file, no temporary left behind
    # An existing output is refused and kept.
    out.write_bytes(b"mine")
    expect_error(gemma_train, base, "already exists")
    assert out.read_bytes() == b"mine"


@pytest.mark.parametrize("kind,multimodal", [("e2b_like", True), ("31b_like", False), ("moe_like", False)])
def test_llama_cpp_computes_what_transformers_computes(gemma_train, checkpoint, tmp_path, kind, multimodal):
    """The file in llama.cpp itself (llama-cpp-python; not in scripts/setup.sh, as it builds
    llama.cpp from source: skipped when absent). f32 weights, f32 KV cache, no flash attention;
    what is left is llama.cpp's fp16 GELU table and fp32 sqrt(H) (gguf-gemma4.md §7). e2b_like has
    the KV-sharing layout llama.cpp assumes (layers S-2/S-1 sliding/full)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    model = checkpoint(kind, multimodal)
    export(gemma_train, model, tmp_path / "m.gguf", "f32")
    ids = np.random.default_rng(0).integers(3, N_TOKENS, size=19).tolist()
    with torch.no_grad():
        expected = hf_model(kind, multimodal)(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=64, n_batch=64, logits_all=True,
                          verbose=False, flash_attn=False, type_k=0, type_v=0)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    assert got.shape[1] == N_TOKENS
    expected = expected[:, :N_TOKENS]
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-2
    assert (got.argmax(1) == expected.argmax(1)).all()
