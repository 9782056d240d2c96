"""Shared fixtures for the reference tests: they run the gemma-train binary and compare it with
the Python stack from PyPI (transformers) on small random models."""
import os
import pathlib
import subprocess

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def gemma_train():
    path = os.environ.get("GEMMA_TRAIN", str(REPO / "build" / "gemma-train"))
    if not os.path.exists(path):
        pytest.fail(f"gemma-train binary not found at {path}; build first (scripts/setup.sh)")
    return path


def official_template():
    """The Gemma 4 chat template trl ships (its newest revision), the reference for ours."""
    trl = pytest.importorskip("trl")
    folder = pathlib.Path(trl.__file__).parent / "chat_templates"
    for name in ("gemma4_v5.jinja", "gemma4_v4.jinja", "gemma4.jinja"):
        if (folder / name).exists():
            return (folder / name).read_text()
    pytest.skip("the installed trl ships no Gemma 4 chat template")


def run(binary, *args, check=True):
    proc = subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"gemma-train {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def our_logits(binary, model_dir, ids, tmp_path, dtype="f32", attn_implementation="sdpa"):
    out = tmp_path / f"logits-{os.getpid()}-{len(ids)}.bin"
    run(binary, "logits", "--model", model_dir, "--ids", ",".join(map(str, ids)), "--out", out, "--dtype", dtype,
        "--attn-implementation", attn_implementation, "--overwrite")
    data = np.fromfile(out, dtype="<f4")
    return data.reshape(len(ids), -1)


def relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def randomize(model, seed):
    """Non-trivial values everywhere: matrices ~ N(0, 0.1), vectors ~ 1 + N(0, 0.1)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(model.parameters()) + [b for n, b in model.named_buffers() if n.endswith("layer_scalar")]:
            noise = torch.randn(tensor.shape, generator=g, dtype=torch.float32)
            tensor.copy_(noise * 0.1 if tensor.dim() >= 2 else 1.0 + 0.1 * noise)
