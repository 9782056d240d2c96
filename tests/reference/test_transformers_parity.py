"""gemma-train's logits against transformers' own Gemma 4 implementation, both ways:
checkpoints saved by transformers run in gemma-train, and checkpoints written by
`gemma-train init` load in transformers. f32, relative error < 1e-4."""
import warnings

import numpy as np
import pytest
import torch
import transformers
from transformers import Gemma4Config, Gemma4ForCausalLM, Gemma4ForConditionalGeneration, Gemma4TextConfig

from conftest import our_logits, randomize, relative_error

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
}
COMMON = dict(vocab_size=300, hidden_size=48, num_attention_heads=4, head_dim=12, global_head_dim=24,
              final_logit_softcapping=30.0, rope_parameters=ROPE, max_position_embeddings=2048)

# One small config of each kind, with numbers unlike the bundled tiny configs.
KINDS = {
    # PLE + KV sharing + double-wide MLP
    "e2b_like": dict(COMMON, num_hidden_layers=7, num_key_value_heads=1, intermediate_size=80,
                     layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
                                  "full_attention", "sliding_attention", "full_attention"],
                     sliding_window=5, hidden_size_per_layer_input=8, vocab_size_per_layer_input=300,
                     num_kv_shared_layers=3, use_double_wide_mlp=True),
    # K = V full layers with their own KV head count
    "31b_like": dict(COMMON, num_hidden_layers=6, num_key_value_heads=2, num_global_key_value_heads=1,
                     attention_k_eq_v=True, intermediate_size=96, sliding_window=4,
                     hidden_size_per_layer_input=0, use_bidirectional_attention="vision"),
    # MoE
    "moe_like": dict(COMMON, num_hidden_layers=4, num_key_value_heads=2, num_global_key_value_heads=1,
                     attention_k_eq_v=True, intermediate_size=64, sliding_window=6, hidden_size_per_layer_input=0,
                     enable_moe_block=True, num_experts=6, top_k_experts=2, moe_intermediate_size=24,
                     layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"]),
}


def hf_model(kind, multimodal, seed):
    text = Gemma4TextConfig(**KINDS[kind])
    if multimodal:
        model = Gemma4ForConditionalGeneration(Gemma4Config(text_config=text.to_dict()))
    else:
        model = Gemma4ForCausalLM(text)
    model = model.to(torch.float32).eval()
    randomize(model, seed)
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def ids_for(vocab, length, seed):
    return np.random.default_rng(seed).integers(0, vocab, size=length).tolist()


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("multimodal", [False, True], ids=["text_only", "multimodal"])
@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_transformers_checkpoint_runs_in_gemma_train(gemma_train, tmp_path, kind, multimodal, sharded):
    for seed in (1, 2):
        model = hf_model(kind, multimodal, seed)
        out = tmp_path / f"hf-{seed}"
        model.save_pretrained(out, max_shard_size="100KB" if sharded else "5GB")
        assert (out / "model.safetensors.index.json").exists() == sharded
        ids = ids_for(model.config.get_text_config().vocab_size, 23, seed)  # several sliding windows
        expected = hf_logits(model, ids)
        ours = our_logits(gemma_train, out, ids, tmp_path)
        assert relative_error(ours, expected) < 1e-4, (kind, seed)


@pytest.mark.parametrize("kind", ["e2b_like", "31b_like"])
@pytest.mark.parametrize("ours", ["sdpa", "eager"])
@pytest.mark.parametrize("theirs", ["sdpa", "eager"])
def test_either_attention_implementation_computes_what_transformers_computes(gemma_train, tmp_path, kind, ours,
                                                                              theirs):
    """`--attn-implementation` against transformers' attn_implementation of the same name and the
    other one, over several sliding windows (sliding and full masks, GQA): f32 to 1e-4."""
    model = hf_model(kind, False, 3)
    model.config._attn_implementation = theirs
    model.save_pretrained(tmp_path / "hf")
    ids = ids_for(model.config.vocab_size, 23, 3)
    expected = hf_logits(model, ids)
    got = our_logits(gemma_train, tmp_path / "hf", ids, tmp_path, attn_implementation=ours)
    assert relative_error(got, expected) < 1e-4, (kind, ours, theirs)


@pytest.mark.parametrize("config", ["tiny-e2b", "tiny-31b", "tiny-moe"])
@pytest.mark.parametrize("text_only", [False, True], ids=["multimodal", "text_only"])
def test_gemma_train_checkpoint_loads_in_transformers(gemma_train, tmp_path, config, text_only):
    from conftest import run
    for seed in (3, 4):
        out = tmp_path / f"ours-{seed}"
        run(gemma_train, "init", "--config", config, "--out", out, "--seed", seed, "--dtype", "f32",
            "--shard-size", "1", *(["--text-only"] if text_only else []))
        cls = Gemma4ForCausalLM if text_only else Gemma4ForConditionalGeneration
        model, info = cls.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
        assert not info["missing_keys"], info["missing_keys"]
        assert not info["mismatched_keys"], info["mismatched_keys"]
        ids = ids_for(model.config.get_text_config().vocab_size, 21, seed)
        expected = hf_logits(model.eval(), ids)
        ours = our_logits(gemma_train, out, ids, tmp_path)
        assert relative_error(ours, expected) < 1e-4, (config, seed)


def _first_tensor(value):
    return value[0] if isinstance(value, (tuple, list)) else value


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_trace_names_the_steps_transformers_computes(gemma_train, tmp_path, kind):
    """`logits --trace` dumps each named step of one layer; the steps with a module of their own in
    transformers (norms, attention, the whole layer) equal what forward hooks there capture."""
    from safetensors.numpy import load_file
    from conftest import run
    model = hf_model(kind, False, 5)
    out = tmp_path / "hf"
    model.save_pretrained(out)
    ids = ids_for(model.config.vocab_size, 13, 5)
    layer_index = 2
    layer = model.model.layers[layer_index]
    captured = {}

    def keep(name):
        return lambda module, args, output: captured.__setitem__(name, _first_tensor(output).detach().numpy())

    def keep_input(module, args, kwargs):
        captured["layer_in"] = (args[0] if args else kwargs["hidden_states"]).detach().numpy()

    hooks = [layer.register_forward_pre_hook(keep_input, with_kwargs=True),
             layer.input_layernorm.register_forward_hook(keep("attn_norm")),
             layer.self_attn.register_forward_hook(keep("attn_out")),
             layer.pre_feedforward_layernorm.register_forward_hook(keep("ffn_norm")),
             layer.post_feedforward_layernorm.register_forward_hook(keep("ffn_post_norm")),
             layer.register_forward_hook(keep("layer_out"))]
    hf_logits(model, ids)
    for h in hooks:
        h.remove()

    trace = tmp_path / "trace"
    run(gemma_train, "logits", "--model", out, "--ids", ",".join(map(str, ids)), "--out", tmp_path / "l.bin",
        "--trace", trace, "--trace-layer", layer_index)
    steps = load_file(str(trace / "trace.safetensors"))
    order = (trace / "steps.txt").read_text().split()
    assert order[0] == f"layers.{layer_index}.layer_in" and order[-1] == f"layers.{layer_index}.layer_out"
    assert set(order) == set(steps) and all(name.startswith(f"layers.{layer_index}.") for name in order)
    for name, expected in captured.items():
        ours = steps[f"layers.{layer_index}.{name}"]
        assert ours.shape == expected.shape, name
        assert relative_error(ours, expected) < 1e-4, (kind, name)
    # A wrong step would be named: perturbing nothing, every traced step is finite and non-zero.
    assert all(np.isfinite(v).all() and np.abs(v).max() > 0 for v in steps.values())
