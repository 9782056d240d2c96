"""SFT throughput and peak memory: gemma-train vs TRL SFTTrainer + PEFT (+ bitsandbytes), on the CPU.

Entry point: bench/compare_trl_sft.sh (it runs this file with the project's .venv/bin/python).

    compare_trl_sft.py drive [--work DIR] [--wait-max S] [--warmup N] [--steps N] [--threads N]
        builds the two models and the data, waits for a quiet machine, runs each stack in a child
        process of its own (ours: build/gemma-train train; TRL: this file's `trl` command) and
        prints one table: model, stack, tokens/s, peak RSS, ratio.
    compare_trl_sft.py trl --model DIR --data F --out JSON --steps N --threads N [...]
        the TRL side of one run (the driver calls it).

Both stacks run the same QLoRA SFT on the same model folder and data: NF4 double-quant base with
float32 compute (--dtype bfloat16: bf16 on both sides), LoRA r=16 alpha=32 on all-linear with dropout 0, paged_adamw_8bit, gradient
checkpointing, bf16 off unless --dtype bfloat16, batch 4, max_length 512, no packing, seed 42, logging every step,
warm-up + measured + 1 steps. Throughput = tokens trained in the measured steps (each stack's own
`num_tokens`: non-padding input tokens) / wall time from the end of the last warm-up step to the
end of the last measured step (the extra last step keeps the final checkpoint/adapter write out of
the measurement). Peak memory = the child's max RSS (wait4's rusage).
"""
import argparse
import json
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = REPO / "build" / "gemma-train"

# Settings shared by both stacks. The demo keeps recipes/demo.yaml's optimisation settings.
COMMON = dict(r=16, lora_alpha=32, lora_dropout=0.0, batch=4, max_length=512, seed=42,
              optim="paged_adamw_8bit")
DEMO_TRAIN = dict(learning_rate=3.0e-3, lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.0,
                  max_grad_norm=1.0)


# ---------------------------------------------------------------------------------------------
# The TRL side (a child process of its own).
# ---------------------------------------------------------------------------------------------
def trl_main(a):
    import resource

    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch
    torch.set_num_threads(a.threads)
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import (AutoConfig, AutoTokenizer, BitsAndBytesConfig, Gemma4ForCausalLM,
                              TrainerCallback)
    import bitsandbytes
    import peft
    import transformers
    import trl
    from trl import SFTConfig, SFTTrainer

    t_start = time.time()
    # gemma-train init writes the multimodal layout (model.language_model.*); the text model is
    # what is trained on both sides, so load Gemma4ForCausalLM with the keys mapped.
    cfg = AutoConfig.from_pretrained(a.model).text_config
    kwargs = dict(config=cfg, key_mapping={r"^model\.language_model\.": "model."}, dtype=getattr(torch, a.dtype),
                  device_map="cpu")
    if a.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, a.dtype))
    model = Gemma4ForCausalLM.from_pretrained(a.model, **kwargs)
    n_4bit = sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit")

    # Gemma base tokenizers add <bos>; gemma-train always starts plain text with it (docs/data.md).
    tokenizer = AutoTokenizer.from_pretrained(a.model, add_bos_token=True)
    if a.chat_template:
        tokenizer.chat_template = pathlib.Path(a.chat_template).read_text()
    dataset = load_dataset("json", data_files=a.data, split="train")

    max_steps = a.warmup + a.steps + 1
    extra = json.loads(a.train_args) if a.train_args else {}
    args = SFTConfig(
        output_dir=a.output_dir, per_device_train_batch_size=a.batch, gradient_accumulation_steps=1,
        max_steps=max_steps, optim=a.optim, gradient_checkpointing=True, bf16=a.dtype == "bfloat16",
        max_length=a.max_length, packing=False, logging_steps=1, save_strategy="no", report_to="none",
        seed=a.seed, use_cpu=True, dataloader_num_workers=0, **extra)
    lora = LoraConfig(r=a.r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")

    stamps = []  # (step, time after the step's log, cumulative num_tokens)

    class Stamp(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                stamps.append((state.global_step, time.time(), logs.get("num_tokens"), logs["loss"]))

    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora, callbacks=[Stamp()])
    t_train = time.time()
    trainer.train()
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    optimizer_name = f"{type(opt).__module__}.{type(opt).__name__}"
    if hasattr(opt, "args") and hasattr(opt.args, "optim_bits"):
        optimizer_name += f" (optim_bits {opt.args.optim_bits}, is_paged {getattr(opt, 'is_paged', None)})"
    n_lora = sum(1 for n, _ in trainer.model.named_modules() if n.endswith("lora_A"))
    result = dict(
        stamps=stamps, maxrss_self_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        load_and_setup_s=t_train - t_start, optimizer=optimizer_name, linear4bit_modules=n_4bit,
        lora_modules=n_lora,
        trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        versions=dict(torch=torch.__version__, transformers=transformers.__version__, trl=trl.__version__,
                      peft=peft.__version__, bitsandbytes=bitsandbytes.__version__),
        torch_threads=torch.get_num_threads())
    pathlib.Path(a.out).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# The driver.
# ---------------------------------------------------------------------------------------------
def log(msg):
    print(f"[compare] {msg}", flush=True)


def run_child(cmd, env, stdout_cb=None):
    """Runs cmd, streams its stdout (merged with stderr) line by line with a timestamp to
    stdout_cb, returns (returncode, max RSS in KiB from wait4, tail of the output)."""
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, cwd=REPO, text=True, bufsize=1)
    tail = []
    for line in proc.stdout:
        now = time.time()
        line = line.rstrip("\n")
        tail = (tail + [line])[-40:]
        if stdout_cb:
            stdout_cb(now, line)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss, tail


def wait_for_quiet(max_s, poll_s=15.0, threshold=1.0):
    t0 = time.time()
    while True:
        load = os.getloadavg()[0]
        if load < threshold:
            log(f"machine quiet: 1-min load average {load:.2f} after {time.time() - t0:.0f} s")
            return load, True
        if time.time() - t0 >= max_s:
            log(f"machine not quiet after {max_s:.0f} s (1-min load average {load:.2f}); measuring anyway")
            return load, False
        log(f"waiting for a quiet machine: 1-min load average {load:.2f} (>= {threshold})")
        time.sleep(poll_s)


def trl_chat_template():
    import trl
    folder = pathlib.Path(trl.__file__).parent / "chat_templates"
    for name in ("gemma4_v5.jinja", "gemma4_v4.jinja", "gemma4.jinja"):
        if (folder / name).exists():
            return folder / name
    raise SystemExit("the installed trl ships no Gemma 4 chat template")


def make_model(config, out, work):
    if out.exists():
        shutil.rmtree(out)
    subprocess.run([str(BIN), "init", "--config", str(config), "--out", str(out), "--dtype", "bf16",
                    "--seed", "0"], check=True, cwd=REPO)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(REPO / "configs" / "tokenizer" / name, out / name)


def bench_config(work):
    """configs/bench-100m.json with the bundled tokenizer's 4096-token vocabulary if it differs."""
    config = json.loads((REPO / "configs" / "bench-100m.json").read_text())
    text = config.get("text_config", config)
    if text.get("vocab_size") == 4096:
        return REPO / "configs" / "bench-100m.json", 4096
    original = text["vocab_size"]
    text["vocab_size"] = 4096
    if "vocab_size_per_layer_input" in text:
        text["vocab_size_per_layer_input"] = 4096
    path = work / "bench-100m-v4096.json"
    path.write_text(json.dumps(config, indent=2))
    return path, original


WORDS = ("the a river mill valley boat harbour morning evening light stone road village market bread "
         "farmer teacher child garden window door letter train station bridge tower winter summer rain "
         "wind cloud field forest hill lake city street lamp book table chair friend story song dog "
         "cat horse bird tree flower apple water fire").split()
VERBS = ("walks runs sails waits carries finds opens closes reads writes sings builds watches follows "
         "crosses paints remembers brings keeps leaves").split()
ADJ = "old quiet bright small long narrow warm cold green grey busy distant gentle heavy".split()


def make_text_data(path, rows=64, sentences=120, seed=7):
    """English-like rows, each far longer than 512 tokens of the bundled tokenizer."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(rows):
            out = []
            for _ in range(sentences):
                out.append(f"The {rng.choice(ADJ)} {rng.choice(WORDS)} {rng.choice(VERBS)} the "
                           f"{rng.choice(ADJ)} {rng.choice(WORDS)} near the {rng.choice(WORDS)}.")
            f.write(json.dumps({"text": " ".join(out)}) + "\n")


def validate(data, model, kind=None):
    cmd = [str(BIN), "validate-data", "--data", str(data), "--model", str(model), "--max-length", "512"]
    if kind:
        cmd += ["--kind", kind]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    summary = [l for l in lines if not re.match(r"^\S+:\d+: ", l)]
    notes = len(lines) - len(summary)
    log(f"validate-data {data.name} (exit {p.returncode}; {notes} per-row notes, e.g. over-length rows):")
    for l in summary:
        print("    " + l, flush=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr)


def measure(stamps, warmup, steps):
    """stamps: {step: (time, cumulative num_tokens)} -> (tokens, seconds, tokens/s)."""
    first, last = warmup, warmup + steps
    if first not in stamps or last not in stamps:
        raise SystemExit(f"missing step stamps {first} or {last}: have {sorted(stamps)}")
    tokens = stamps[last][1] - stamps[first][1]
    seconds = stamps[last][0] - stamps[first][0]
    return tokens, seconds, tokens / seconds


def run_ours(name, recipe, sets, work, a, env):
    out_dir = work / f"ours-{name}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cmd = [BIN, "train", "--recipe", recipe, "--threads", a.threads,
           "--set", f"training.output_dir={out_dir}"] + [x for s in sets for x in ("--set", s)]
    log(f"ours {name}: " + " ".join(str(c) for c in cmd))
    times = {}

    def cb(now, line):
        m = re.match(r"^step (\d+)/\d+ ", line)
        if m:
            times[int(m.group(1))] = now
        print("    " + line, flush=True)

    load = os.getloadavg()[0]
    rc, maxrss, tail = run_child(cmd, env, cb)
    if rc != 0:
        raise SystemExit(f"gemma-train failed ({rc}):\n" + "\n".join(tail))
    metrics = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines()]
    stamps = {m["step"]: (times[m["step"]], m["num_tokens"]) for m in metrics
              if "num_tokens" in m and m["step"] in times}
    tokens, seconds, tps = measure(stamps, a.warmup, a.steps)
    peak_alloc = max((m.get("peak_memory_bytes", 0) for m in metrics), default=0)
    return dict(tokens=tokens, seconds=seconds, tps=tps, maxrss_kb=maxrss, load=load,
                losses=[m["loss"] for m in metrics if "loss" in m], peak_memory_bytes=peak_alloc)


def run_trl(name, model, data, work, a, env, chat_template=None, train_args=None):
    out = work / f"trl-{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, pathlib.Path(__file__).resolve(), "trl", "--model", model, "--data", data,
           "--out", out, "--output-dir", work / f"trl-{name}", "--warmup", a.warmup, "--steps", a.steps,
           "--threads", a.threads, "--optim", a.optim]
    if not a.load_in_4bit:
        cmd.append("--no-4bit")
    cmd += ["--dtype", a.dtype]
    if chat_template:
        cmd += ["--chat-template", chat_template]
    if train_args:
        cmd += ["--train-args", json.dumps(train_args)]
    log(f"trl {name}: " + " ".join(str(c) for c in cmd))

    def cb(now, line):
        if "it/s]" in line or "s/it]" in line or "Loading weights" in line:
            return  # tqdm redraws
        print("    " + line[-300:], flush=True)

    load = os.getloadavg()[0]
    rc, maxrss, tail = run_child(cmd, env, cb)
    if rc != 0 or not out.exists():
        raise SystemExit(f"the TRL run failed ({rc}):\n" + "\n".join(tail))
    r = json.loads(out.read_text())
    stamps = {s: (t, n) for s, t, n, _ in r["stamps"]}
    tokens, seconds, tps = measure(stamps, a.warmup, a.steps)
    return dict(tokens=tokens, seconds=seconds, tps=tps, maxrss_kb=maxrss, load=load,
                losses=[l for *_, l in r["stamps"]], maxrss_self_kb=r["maxrss_self_kb"],
                optimizer=r["optimizer"], linear4bit_modules=r["linear4bit_modules"],
                lora_modules=r["lora_modules"], trainable_params=r["trainable_params"],
                versions=r["versions"], torch_threads=r["torch_threads"])


def drive(a):
    work = pathlib.Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               HF_DATASETS_CACHE=str(work / "hf-datasets-cache"))
    max_steps = a.warmup + a.steps + 1

    # (a) the bundled demo model.
    demo = work / "demo-model"
    make_model("demo", demo, work)
    # (b) bench-100m with the bundled tokenizer's vocabulary.
    config, original_vocab = bench_config(work)
    log(f"bench-100m: vocab_size {original_vocab} in configs/bench-100m.json"
        + ("" if original_vocab == 4096 else f"; using {config} with vocab_size 4096"))
    bench = work / "bench-100m-model"
    make_model(config, bench, work)
    text_data = work / "text-512.jsonl"
    make_text_data(text_data)
    chat_data = REPO / "recipes" / "data" / "demo-capitals.jsonl"
    validate(chat_data, demo)
    validate(text_data, bench)

    load_after_wait, quiet = wait_for_quiet(a.wait_max)

    common_sets = [
        f"training.max_steps={max_steps}", "training.logging_steps=1", "training.logging_first_step=true",
        "training.eval_strategy=no", "training.eval_on_start=false", f"training.save_steps={max_steps + 100}",
        f"training.per_device_train_batch_size={COMMON['batch']}", f"training.max_length={COMMON['max_length']}",
        "training.gradient_accumulation_steps=1", "training.packing=false", "training.gradient_checkpointing=true",
        f"training.bf16={'true' if a.dtype == 'bfloat16' else 'false'}", f"training.optim={a.optim}", f"training.seed={COMMON['seed']}",
        "training.report_to=none", "training.overwrite_output_dir=true",
        f"peft.r={COMMON['r']}", f"peft.lora_alpha={COMMON['lora_alpha']}", f"peft.lora_dropout={COMMON['lora_dropout']}",
        "peft.target_modules=all-linear", "export.merged=false", "export.gguf=false",
        f"model.load_in_4bit={'true' if a.load_in_4bit else 'false'}", "model.bnb_4bit_use_double_quant=true",
        f"model.bnb_4bit_compute_dtype={a.dtype}", f"model.dtype={a.dtype}", "model.device=cpu",
        f"training.gradient_checkpointing_save_matmuls={'true' if a.save_matmuls else 'false'}"]

    # Ours on the demo: recipes/demo.yaml with overrides. assistant_only_loss off on both sides
    # (TRL refuses it on Gemma 4: its template has no {% generation %} markers; docs/data.md).
    demo_sets = [f"model.name_or_path={demo}", f"data.train_files={chat_data}", "data.eval_split=0",
                 "training.assistant_only_loss=false"] + common_sets
    # Ours on bench-100m: a recipe of its own with the same training values.
    recipe = work / "bench-100m-sft.yaml"
    recipe.write_text(f"""# written by bench/compare_trl_sft.py
model:
  name_or_path: {bench}
  dtype: {a.dtype}
  load_in_4bit: {'true' if a.load_in_4bit else 'false'}
  bnb_4bit_quant_type: nf4
  bnb_4bit_use_double_quant: true
  bnb_4bit_compute_dtype: {a.dtype}
  device: cpu
peft:
  r: {COMMON['r']}
  lora_alpha: {COMMON['lora_alpha']}
  lora_dropout: {COMMON['lora_dropout']}
  target_modules: all-linear
data:
  train_files: {text_data}
training:
  method: sft
  learning_rate: {DEMO_TRAIN['learning_rate']}
  lr_scheduler_type: {DEMO_TRAIN['lr_scheduler_type']}
  warmup_steps: {DEMO_TRAIN['warmup_steps']}
  weight_decay: {DEMO_TRAIN['weight_decay']}
  max_grad_norm: {DEMO_TRAIN['max_grad_norm']}
  output_dir: {work / 'ours-bench-100m'}
""")
    trl_args = dict(DEMO_TRAIN)
    template = trl_chat_template()

    results = {}
    results[("demo", "gemma-train")] = run_ours("demo", REPO / "recipes" / "demo.yaml", demo_sets, work, a, env)
    results[("demo", "TRL+PEFT")] = run_trl("demo", demo, chat_data, work, a, env, chat_template=template,
                                            train_args=trl_args)
    results[("bench-100m", "gemma-train")] = run_ours("bench-100m", recipe, common_sets, work, a, env)
    results[("bench-100m", "TRL+PEFT")] = run_trl("bench-100m", bench, text_data, work, a, env, train_args=trl_args)

    trl_info = results[("demo", "TRL+PEFT")]
    print()
    log(f"TRL side: optimizer {trl_info['optimizer']}, {trl_info['linear4bit_modules']} Linear4bit modules, "
        f"{trl_info['lora_modules']} LoRA modules, {trl_info['trainable_params']} trainable parameters, "
        f"torch threads {trl_info['torch_threads']}, versions {trl_info['versions']}")
    b = results[("bench-100m", "TRL+PEFT")]
    log(f"TRL side bench-100m: {b['linear4bit_modules']} Linear4bit, {b['lora_modules']} LoRA modules, "
        f"{b['trainable_params']} trainable parameters")
    log(f"1-min load average after the wait: {load_after_wait:.2f} ({'quiet' if quiet else 'not quiet'}); "
        f"at the start of each run: " + ", ".join(f"{m}/{s} {r['load']:.2f}" for (m, s), r in results.items()))
    for (m, s), r in results.items():
        extra = ""
        if "maxrss_self_kb" in r:
            extra = f"; RUSAGE_SELF maxrss {r['maxrss_self_kb'] / 1024:.0f} MiB"
        if r.get("peak_memory_bytes"):
            extra = f"; peak_memory_bytes (its allocator) {r['peak_memory_bytes'] / 2**20:.0f} MiB"
        log(f"{m}/{s}: {r['tokens']} tokens in {r['seconds']:.2f} s over steps {a.warmup + 1}-"
            f"{a.warmup + a.steps}; losses {[round(x, 4) for x in r['losses']]}{extra}")

    print()
    print(f"| model | stack | tokens/s | peak RSS | tokens/s ratio (ours/TRL) | peak RSS ratio (ours/TRL) |")
    print(f"|---|---|---|---|---|---|")
    for m in ("demo", "bench-100m"):
        ours, theirs = results[(m, "gemma-train")], results[(m, "TRL+PEFT")]
        for s, r in (("gemma-train", ours), ("TRL+PEFT", theirs)):
            ratio = (f"{ours['tps'] / theirs['tps']:.2f}×", f"{ours['maxrss_kb'] / theirs['maxrss_kb']:.2f}×") \
                if s == "gemma-train" else ("", "")
            print(f"| {m} | {s} | {r['tps']:.1f} | {r['maxrss_kb'] / 1024:.0f} MiB | {ratio[0]} | {ratio[1]} |")
    (work / "results.json").write_text(json.dumps({f"{m}/{s}": r for (m, s), r in results.items()}, indent=1))
    target = all(results[(m, "gemma-train")]["tps"] >= 1.5 * results[(m, "TRL+PEFT")]["tps"]
                 and results[(m, "gemma-train")]["maxrss_kb"] <= results[(m, "TRL+PEFT")]["maxrss_kb"]
                 for m in ("demo", "bench-100m"))
    print()
    log(f"target (>= 1.5x TRL's tokens/s at no more peak RSS, both models): {'met' if target else 'not met'}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drive")
    d.add_argument("--work", default="/tmp/compare-trl-sft")
    d.add_argument("--wait-max", type=float, default=600)
    d.add_argument("--warmup", type=int, default=2)
    d.add_argument("--steps", type=int, default=6)
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--optim", default=COMMON["optim"])
    d.add_argument("--no-4bit", dest="load_in_4bit", action="store_false")
    d.add_argument("--save-matmuls", action="store_true",
                   help="ours keeps the frozen matmuls' outputs for checkpointing's recomputation "
                        "(training.gradient_checkpointing_save_matmuls); TRL recomputes them")
    d.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="compute dtype on both sides (bfloat16: TRL's bf16=True as well)")
    t = sub.add_parser("trl")
    t.add_argument("--model", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--output-dir", required=True)
    t.add_argument("--warmup", type=int, default=2)
    t.add_argument("--steps", type=int, default=6)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--optim", default=COMMON["optim"])
    t.add_argument("--no-4bit", dest="load_in_4bit", action="store_false")
    t.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    t.add_argument("--chat-template")
    t.add_argument("--train-args")
    t.add_argument("--batch", type=int, default=COMMON["batch"])
    t.add_argument("--max-length", type=int, default=COMMON["max_length"])
    t.add_argument("--seed", type=int, default=COMMON["seed"])
    t.add_argument("--r", type=int, default=COMMON["r"])
    t.add_argument("--lora-alpha", type=int, default=COMMON["lora_alpha"])
    t.add_argument("--lora-dropout", type=float, default=COMMON["lora_dropout"])
    a = p.parse_args()
    if a.cmd == "trl":
        trl_main(a)
    else:
        drive(a)


if __name__ == "__main__":
    main()
