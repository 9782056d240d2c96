"""AdamW8bit against bitsandbytes 0.50.2's CPU `bnb.optim.AdamW8bit` (qlora-formats.md §2.2), and
AdamW against torch.optim.AdamW: after the same gradient sequence the parameters and the state
bytes (state1, state2, absmax1, absmax2) must be equal. The C++ side is tests/optim/
adamw_8bit_driver, whose path comes in GEMMA_ADAMW8BIT_DRIVER (tests/CMakeLists.txt sets it)."""
import os
import subprocess

import pytest

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")
safetensors_torch = pytest.importorskip("safetensors.torch")

STEPS = 10
# Ragged and exact blocks of 256, tensors just below / at / above min_8bit_size = 4096.
SHAPES = {
    "layers.0.lora_A.weight": (97, 131),  # 12707: 8-bit, ragged last block
    "layers.0.lora_B.weight": (64, 64),  # 4096: 8-bit (the threshold is strict <)
    "layers.1.lora_A.weight": (4095,),  # 32-bit state
    "layers.1.lora_B.weight": (3, 5),  # 32-bit state
    "layers.2.wide.weight": (301, 257),  # 8-bit, many blocks
}


@pytest.fixture(scope="module")
def driver():
    path = os.environ.get("GEMMA_ADAMW8BIT_DRIVER")
    if not path or not os.path.exists(path):
        pytest.skip("GEMMA_ADAMW8BIT_DRIVER not set (the reference ctest entries set it)")
    return path


def make_problem(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    params = {n: torch.randn(s, generator=g).to(dtype) for n, s in SHAPES.items()}
    grads = []
    for step in range(STEPS):
        scale = 10.0 ** (step % 4 - 2)  # moments at several scales
        grads.append({n: (torch.randn(s, generator=g) * scale).to(dtype) for n, s in SHAPES.items()})
        grads[-1]["layers.0.lora_A.weight"][:5] = 0  # exact zeros in one block
    grads[3]["layers.2.wide.weight"].zero_()  # an all-zero gradient
    return params, grads


def run_driver(driver, tmp_path, params, grads, *flags):
    tensors = {f"param.{n}": t.contiguous() for n, t in params.items()}
    for step, gs in enumerate(grads):
        tensors.update({f"grad.{step}.{n}": t.contiguous() for n, t in gs.items()})
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    safetensors_torch.save_file(tensors, str(src))
    proc = subprocess.run([driver, src, dst, "--steps", str(len(grads)), *map(str, flags)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return safetensors_torch.load_file(str(dst))


def run_bnb(params, grads, lr, wd):
    ps = {n: torch.nn.Parameter(t.clone()) for n, t in params.items()}
    opt = bnb.optim.AdamW8bit(list(ps.values()), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    for gs in grads:
        for n, p in ps.items():
            p.grad = gs[n].clone()
        opt.step()
    return ps, opt


def describe(ours, theirs):
    if ours.dtype == torch.uint8:
        return f"{int((ours != theirs).sum())} of {ours.numel()} codes differ"
    return f"max |diff| {float((ours.float() - theirs.float()).abs().max()):.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adamw8bit_equals_bitsandbytes_cpu(driver, tmp_path, dtype, wd):
    params, grads = make_problem(dtype, seed=11)
    lr = 1e-2
    ours = run_driver(driver, tmp_path, params, grads, "--lr", lr, "--weight-decay", wd)
    ps, opt = run_bnb(params, grads, lr, wd)
    for name, p in ps.items():
        state = opt.state[p]
        eight_bit = p.numel() >= 4096
        assert (state["state1"].dtype == torch.uint8) == eight_bit
        keys = ["state1", "state2"] + (["absmax1", "absmax2"] if eight_bit else [])
        assert f"state.{name}.absmax1" in ours if eight_bit else f"state.{name}.absmax1" not in ours
        for key in keys:
            mine, bnbs = ours[f"state.{name}.{key}"], state[key]
            assert mine.dtype == bnbs.dtype and mine.shape == bnbs.shape, (name, key)
            assert torch.equal(mine, bnbs), f"{name}.{key}: {describe(mine, bnbs)}"
        assert int(ours[f"state.{name}.step"][0]) == state["step"] == STEPS
        mine = ours[f"param.{name}"]
        assert mine.dtype == dtype
        assert torch.equal(mine, p.data), f"{name}: {describe(mine, p.data)}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_adamw_equals_torch_optim(driver, tmp_path, dtype):
    params, grads = make_problem(dtype, seed=12)
    lr, wd = 3e-3, 0.05
    ours = run_driver(driver, tmp_path, params, grads, "--optimizer", "adamw", "--lr", lr,
                      "--weight-decay", wd)
    ps = {n: torch.nn.Parameter(t.clone()) for n, t in params.items()}
    opt = torch.optim.AdamW(list(ps.values()), lr=lr, weight_decay=wd, foreach=False)
    for gs in grads:
        for n, p in ps.items():
            p.grad = gs[n].clone()
        opt.step()
    for name, p in ps.items():
        assert torch.equal(ours[f"param.{name}"], p.data), name
        assert torch.equal(ours[f"state.{name}.exp_avg"], opt.state[p]["exp_avg"]), name
        assert torch.equal(ours[f"state.{name}.exp_avg_sq"], opt.state[p]["exp_avg_sq"]), name


def test_paged_adamw8bit_gives_the_same_bytes(driver, tmp_path):
    params, grads = make_problem(torch.float32, seed=13)
    params["big"] = torch.randn(400, 260)  # >= 100,000 elements: state in a file mapping
    for gs in grads:
        gs["big"] = torch.randn(400, 260)
    plain = run_driver(driver, tmp_path, params, grads[:3])
    paged = run_driver(driver, tmp_path, params, grads[:3], "--paged", 1)
    assert plain.keys() == paged.keys()
    for key in plain:
        assert torch.equal(plain[key], paged[key]), key
