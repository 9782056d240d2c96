"""DPO step time and throughput: gemma-train (reference on the fly, and precomputed) vs TRL
DPOTrainer + PEFT + bitsandbytes, on the CPU, side by side on the same model folders and data.

Entry point: bench/compare_trl_dpo.sh (it runs this file with the project's .venv/bin/python).

    compare_trl_dpo.py drive [--work DIR] [--wait-max S] [--warmup N] [--steps N] [--threads N]
    compare_trl_dpo.py trl --model DIR --data F --out JSON [...]   (the TRL side of one run)

Both stacks: NF4 double-quant base with float32 compute, LoRA r=16 alpha=32 on all-linear,
dropout off (DPO's disable_dropout), paged_adamw_8bit, gradient checkpointing, bf16 off, the
sigmoid loss with beta 0.1, the reference = the base with the adapter off, seed 42, logging every
step, warm-up + measured + 1 steps. Two setups: (a) the bundled demo model on the bundled
preference set (recipes/data/demo-capitals-preference.jsonl, conversational), batch 8, max_length
128; (b) bench-100m (vocab 4096) on generated plain preference rows (a ~150-token prompt, ~100-token
completions), batch 2, max_length 384. Throughput = tokens read in the measured steps (each stack's
num_tokens: the attention-mask sum over chosen and rejected rows) / the wall time of those steps;
the precomputed runs' reference pass happens before step 1 and is reported on its own.
The helpers (child processes, quiet-machine wait, the models) are compare_trl_sft.py's.
"""
import argparse
import json
import os
import pathlib
import random
import re
import shutil
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from compare_trl_sft import (ADJ, BIN, REPO, VERBS, WORDS, bench_config, log, make_model,  # noqa: E402
                             measure, run_child, trl_chat_template, wait_for_quiet)

COMMON = dict(r=16, lora_alpha=32, seed=42, optim="paged_adamw_8bit", beta=0.1, learning_rate=1e-4)
SETUPS = {"demo": dict(batch=8, max_length=128), "bench-100m": dict(batch=2, max_length=384)}


def trl_main(a):
    import resource

    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch
    torch.set_num_threads(a.threads)
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoConfig, AutoTokenizer, BitsAndBytesConfig, Gemma4ForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    cfg = AutoConfig.from_pretrained(a.model).text_config
    model = Gemma4ForCausalLM.from_pretrained(
        a.model, config=cfg, key_mapping={r"^model\.language_model\.": "model."}, dtype=torch.float32,
        device_map="cpu", quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32))
    tokenizer = AutoTokenizer.from_pretrained(a.model, add_bos_token=True)
    if a.chat_template:
        tokenizer.chat_template = pathlib.Path(a.chat_template).read_text()
    dataset = load_dataset("json", data_files=a.data, split="train")
    args = DPOConfig(
        output_dir=a.output_dir, per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
        max_steps=a.warmup + a.steps + 1, optim=COMMON["optim"], gradient_checkpointing=True, bf16=False,
        max_length=a.max_length, logging_steps=1, save_strategy="no", report_to="none", seed=COMMON["seed"],
        use_cpu=True, dataloader_num_workers=0, beta=COMMON["beta"], learning_rate=COMMON["learning_rate"],
        precompute_ref_log_probs=a.precompute)
    lora = LoraConfig(r=COMMON["r"], lora_alpha=COMMON["lora_alpha"], lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    stamps = []

    class Stamp(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                stamps.append((state.global_step, time.time(), logs.get("num_tokens"), logs["loss"]))

    t0 = time.time()
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora, callbacks=[Stamp()])
    setup_s = time.time() - t0
    trainer.train()
    pathlib.Path(a.out).write_text(json.dumps(dict(
        stamps=stamps, setup_s=setup_s, maxrss_self_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        versions=dict(torch=torch.__version__, trl=sys.modules["trl"].__version__))))


def make_preference_data(path, rows=48, seed=7):
    rng = random.Random(seed)

    def sentences(n):
        return " ".join(f"The {rng.choice(ADJ)} {rng.choice(WORDS)} {rng.choice(VERBS)} the "
                        f"{rng.choice(WORDS)}." for _ in range(n))

    with open(path, "w") as f:
        for _ in range(rows):
            f.write(json.dumps({"prompt": sentences(20), "chosen": " " + sentences(12),
                                "rejected": " " + sentences(12)}) + "\n")


def run_ours(name, model, data, work, a, env, setup, precompute):
    out_dir = work / f"ours-{name}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    recipe = work / f"{name}.yaml"
    recipe.write_text(f"""# written by bench/compare_trl_dpo.py
model:
  name_or_path: {model}
  dtype: float32
  load_in_4bit: true
  bnb_4bit_use_double_quant: true
  bnb_4bit_compute_dtype: float32
peft:
  r: {COMMON['r']}
  lora_alpha: {COMMON['lora_alpha']}
  target_modules: all-linear
data:
  train_files: {data}
training:
  method: dpo
  beta: {COMMON['beta']}
  learning_rate: {COMMON['learning_rate']}
  per_device_train_batch_size: {setup['batch']}
  max_steps: {a.warmup + a.steps + 1}
  optim: {COMMON['optim']}
  gradient_checkpointing: true
  bf16: false
  max_length: {setup['max_length']}
  logging_steps: 1
  save_steps: 1000
  seed: {COMMON['seed']}
  ref_model: base
  precompute_ref_log_probs: {'true' if precompute else 'false'}
  output_dir: {out_dir}
""")
    cmd = [BIN, "train", "--recipe", recipe, "--threads", a.threads]
    log(f"ours {name}: " + " ".join(str(c) for c in cmd))
    times = {}
    marks = {}

    def cb(now, line):
        m = re.match(r"^step (\d+)/\d+ ", line)
        if m:
            times[int(m.group(1))] = now
        if "reference log-probs" in line and "ref_start" not in marks:
            marks["ref_start"] = now
        if line.startswith("[train] reference log-probs") or "training pairs" in line:
            marks.setdefault("data", now)
        print("    " + line[-200:], flush=True)

    load = os.getloadavg()[0]
    start = time.time()
    rc, maxrss, tail = run_child(cmd, env, cb)
    if rc != 0:
        raise SystemExit(f"gemma-train failed ({rc}):\n" + "\n".join(tail))
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    stamps = {m["step"]: (times[m["step"]], m["num_tokens"]) for m in metrics
              if "num_tokens" in m and m["step"] in times}
    tokens, seconds, tps = measure(stamps, a.warmup, a.steps)
    ref_s = (times[1] - marks["ref_start"]) if precompute and "ref_start" in marks and 1 in times else None
    return dict(tokens=tokens, seconds=seconds, tps=tps, step_s=seconds / a.steps, maxrss_kb=maxrss, load=load,
                wall_s=time.time() - start, ref_pass_s=ref_s,
                losses=[m["loss"] for m in metrics if "loss" in m])


def run_trl(name, model, data, work, a, env, setup, precompute, chat_template=None):
    out = work / f"trl-{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, pathlib.Path(__file__).resolve(), "trl", "--model", model, "--data", data,
           "--out", out, "--output-dir", work / f"trl-{name}", "--warmup", a.warmup, "--steps", a.steps,
           "--threads", a.threads, "--batch", setup["batch"], "--max-length", setup["max_length"]]
    if precompute:
        cmd.append("--precompute")
    if chat_template:
        cmd += ["--chat-template", chat_template]
    log(f"trl {name}: " + " ".join(str(c) for c in cmd))

    def cb(now, line):
        if "it/s]" in line or "s/it]" in line or "Loading weights" in line:
            return
        print("    " + line[-200:], flush=True)

    load = os.getloadavg()[0]
    start = time.time()
    rc, maxrss, tail = run_child(cmd, env, cb)
    if rc != 0 or not out.exists():
        raise SystemExit(f"the TRL run failed ({rc}):\n" + "\n".join(tail))
    r = json.loads(out.read_text())
    stamps = {s: (t, n) for s, t, n, _ in r["stamps"]}
    tokens, seconds, tps = measure(stamps, a.warmup, a.steps)
    return dict(tokens=tokens, seconds=seconds, tps=tps, step_s=seconds / a.steps, maxrss_kb=maxrss, load=load,
                wall_s=time.time() - start, setup_s=r["setup_s"], losses=[l for *_, l in r["stamps"]],
                versions=r["versions"])


def drive(a):
    work = pathlib.Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               HF_DATASETS_CACHE=str(work / "hf-datasets-cache"))
    demo = work / "demo-model"
    make_model("demo", demo, work)
    config, _ = bench_config(work)
    bench = work / "bench-100m-model"
    make_model(config, bench, work)
    demo_data = REPO / "recipes" / "data" / "demo-capitals-preference.jsonl"
    bench_data = work / "preference-text.jsonl"
    make_preference_data(bench_data)
    load_after_wait, quiet = wait_for_quiet(a.wait_max)
    template = trl_chat_template()
    results = {}
    for name, model, data in (("demo", demo, demo_data), ("bench-100m", bench, bench_data)):
        setup = SETUPS[name]
        results[(name, "gemma-train")] = run_ours(name, model, data, work, a, env, setup, False)
        results[(name, "gemma-train, precomputed")] = run_ours(name + "-pre", model, data, work, a, env, setup, True)
        results[(name, "TRL+PEFT")] = run_trl(name, model, data, work, a, env, setup, False,
                                              template if name == "demo" else None)
    print()
    log(f"1-min load average after the wait: {load_after_wait:.2f} ({'quiet' if quiet else 'not quiet'}); "
        "at the start of each run: " + ", ".join(f"{m}/{s} {r['load']:.2f}" for (m, s), r in results.items()))
    for (m, s), r in results.items():
        log(f"{m}/{s}: {r['tokens']} tokens in {r['seconds']:.2f} s over steps {a.warmup + 1}-{a.warmup + a.steps}; "
            f"losses {[round(x, 4) for x in r['losses']]}"
            + (f"; reference pass {r['ref_pass_s']:.1f} s" if r.get("ref_pass_s") else ""))
    print()
    print("| model | stack | s/step | tokens/s | peak RSS | tokens/s ratio (ours/TRL) |")
    print("|---|---|---|---|---|---|")
    for m in SETUPS:
        theirs = results[(m, "TRL+PEFT")]
        for s in ("gemma-train", "gemma-train, precomputed", "TRL+PEFT"):
            r = results[(m, s)]
            ratio = f"{r['tps'] / theirs['tps']:.2f}×" if s != "TRL+PEFT" else ""
            print(f"| {m} | {s} | {r['step_s']:.2f} | {r['tps']:.1f} | {r['maxrss_kb'] / 1024:.0f} MiB | {ratio} |")
    (work / "results.json").write_text(json.dumps({f"{m}/{s}": r for (m, s), r in results.items()}, indent=1))
    met = all(results[(m, "gemma-train")]["tps"] >= 1.5 * results[(m, "TRL+PEFT")]["tps"] for m in SETUPS)
    print()
    log(f"target (on-the-fly reference >= 1.5x TRL's tokens/s, both models): {'met' if met else 'not met'}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drive")
    d.add_argument("--work", default="/tmp/compare-trl-dpo")
    d.add_argument("--wait-max", type=float, default=600)
    d.add_argument("--warmup", type=int, default=2)
    d.add_argument("--steps", type=int, default=6)
    d.add_argument("--threads", type=int, default=2)
    t = sub.add_parser("trl")
    for flag in ("--model", "--data", "--out", "--output-dir"):
        t.add_argument(flag, required=True)
    t.add_argument("--warmup", type=int, default=2)
    t.add_argument("--steps", type=int, default=6)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--max-length", type=int, default=128)
    t.add_argument("--precompute", action="store_true")
    t.add_argument("--chat-template")
    a = p.parse_args()
    trl_main(a) if a.cmd == "trl" else drive(a)


if __name__ == "__main__":
    main()
