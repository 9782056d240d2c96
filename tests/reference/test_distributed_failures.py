"""Data-parallel runs that fail, resume or are launched: an error on rank 1 only (a bad data
file), rank 1 killed with SIGKILL or hung (SIGSTOP) end the job non-zero within 10 s, naming the
rank, with no process left; a 2-rank run resumed from its checkpoint continues exactly, and a
resume with another world size continues at the same sample; `launch --dry-run` and the
torchrun-style variables. The helpers and the demo model are test_distributed_runs.py's."""
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import run
from test_distributed_runs import SFT_DATA, demo_model, metrics, mpirun, settings  # noqa: F401


def processes_of(marker):
    """The pids whose command line names `marker` (a run's unique output folder)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def rank_pid(marker, rank):
    for pid in processes_of(marker):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"OMPI_COMM_WORLD_RANK={rank}".encode() in f.read().split(b"\0"):
                    return pid
        except OSError:
            pass
    return None


def test_bad_data_on_rank_one_stops_every_rank(gemma_train, demo_model, tmp_path):
    rows = SFT_DATA.read_text().splitlines()
    rows[4] = rows[4][: len(rows[4]) // 2]  # a row cut in half
    bad = tmp_path / "shard-1.jsonl"
    bad.write_text("\n".join(rows) + "\n")
    out = tmp_path / "bad-shard-run"
    good = settings(demo_model, out, "sft", 4, 6)
    start = time.time()
    proc = subprocess.run([*mpirun("-np", "1"), gemma_train, *good, ":", "-np", "1", gemma_train, *good,
                           "--set", f"data.train_files={bad}"], capture_output=True, text=True, timeout=60)
    elapsed = time.time() - start
    assert proc.returncode != 0
    assert elapsed < 10, elapsed
    assert "[rank 1]" in proc.stderr and f"{bad}:5" in proc.stderr, proc.stderr
    assert proc.stderr.count("gemma-train: error:") == 1, proc.stderr
    assert not processes_of(str(out))
    assert not (out / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_rank_one_killed_or_hung_ends_the_job(gemma_train, demo_model, tmp_path, how):
    """SIGKILL: mpirun sees rank 1 die and ends rank 0. SIGSTOP (a hung rank): rank 0's collective
    waits training.ddp_timeout (3 s here) and its watchdog ends it, naming itself."""
    out = tmp_path / "killed-run"
    log = tmp_path / "killed.log"
    with open(log, "w") as err:
        launch = subprocess.Popen([gemma_train, "launch", "--nproc", "2", "--",
                                   *settings(demo_model, out, "sft", 4, 6,
                                             **{"training.max_steps": 500, "training.ddp_timeout": 3})],
                                  stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + 300
        while not ((out / "metrics.jsonl").exists() and '"loss"' in (out / "metrics.jsonl").read_text()):
            assert launch.poll() is None, log.read_text()
            assert time.time() < deadline
            time.sleep(0.05)
        victim = rank_pid(str(out), 1)
        assert victim is not None
        os.kill(victim, getattr(signal, how))
        killed = time.time()
        code = launch.wait(timeout=30)
        elapsed = time.time() - killed
    finally:
        if launch.poll() is None:
            launch.kill()
    assert code != 0
    assert elapsed < 10, elapsed
    text = log.read_text()
    if how == "SIGKILL":
        assert "rank 1" in text, text
    else:
        assert "[rank 0] " in text and "waited 3 s for the other ranks (training.ddp_timeout)" in text, text
    time.sleep(0.5)
    assert not processes_of(str(out)), "processes left behind"


def test_two_rank_resume_continues_exactly(gemma_train, demo_model, tmp_path):
    """With the demo's dropout and paged 8-bit AdamW: each rank's RNG state and the data position
    come back from the checkpoint, so the resumed run's steps are the uninterrupted run's, bit for bit."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    demo = {"peft.lora_dropout": 0.05, "training.optim": "paged_adamw_8bit", "training.adam_epsilon": 1e-8,
            "training.max_steps": 6, "training.save_steps": 3, "training.eval_steps": 3,
            "training.overwrite_output_dir": "false"}
    run(gemma_train, "launch", "--nproc", 2, "--", *settings(demo_model, full, "sft", 4, 6, **demo))
    checkpoint = full / "checkpoint-3"
    assert (checkpoint / "rng_state_0.safetensors").exists() and (checkpoint / "rng_state_1.safetensors").exists()
    resumed.mkdir()
    shutil.copytree(checkpoint, resumed / "checkpoint-3")
    run(gemma_train, "launch", "--nproc", 2, "--",
        *settings(demo_model, resumed, "sft", 4, 6, **demo, **{"training.resume_from_checkpoint": "true"}))
    assert (full / "adapter_model.safetensors").read_bytes() == (resumed / "adapter_model.safetensors").read_bytes()
    steps = lambda out: [(m["step"], m["loss"], m["grad_norm"]) for m in metrics(out) if "loss" in m]
    assert steps(resumed) == steps(full)

    # One process continues the 2-rank checkpoint at the same sample (16 per step there, 8 here).
    single = tmp_path / "single"
    single.mkdir()
    shutil.copytree(checkpoint, single / "checkpoint-3")
    proc = run(gemma_train, *settings(demo_model, single, "sft", 4, 6, **demo,
                                      **{"training.resume_from_checkpoint": "true"}))
    assert "run of 2 ranks, this one has 1: it continues at the same sample (epoch 0, sample 48 of 72)" in proc.stderr
    assert (single / "adapter_model.safetensors").exists()


def test_launch_builds_the_mpirun_line(gemma_train):
    proc = run(gemma_train, "launch", "--nproc", 4, "--hosts", "node1:2,node2:2", "--mpi-args=--mca btl tcp,self",
               "--dry-run", "--", "--recipe", "r.yaml", "--set", "training.seed=1")
    words = proc.stdout.split()
    assert words[:3] == ["mpirun", "-np", "4"]
    assert ("--allow-run-as-root" in words) == (os.geteuid() == 0)
    assert words[words.index("--host") + 1] == "node1:2,node2:2" and "--oversubscribe" not in words
    assert words[words.index("--bind-to") + 1] == "none"
    assert words[-4:] == ["--recipe", "r.yaml", "--set", "training.seed=1"] and "tcp,self" in words
    assert os.path.samefile(words[-5], gemma_train)
    for args, expected in [(["--nproc", "0", "--", "--recipe", "r.yaml"], "--nproc expects an integer"),
                           (["--nproc", "2"], "give the training's arguments after --"),
                           (["--nproc", "2", "--", "export", "--model", "m"], "runs the train command")]:
        bad = run(gemma_train, "launch", *args, check=False)
        assert bad.returncode == 2 and expected in bad.stderr, bad.stderr


def test_torchrun_variables(gemma_train, demo_model, tmp_path):
    """A torchrun-style launch of several processes is refused with how to launch over MPI (no
    MPI or NCCL rendezvous exists without an MPI launcher); a bad variable is named; a world of
    one is a plain single-process run."""
    recipe = settings(demo_model, tmp_path / "t", "sft", 4, 6, **{"training.max_steps": 1})
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    proc = subprocess.run([gemma_train, *recipe], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "gemma-train launch --nproc 2" in proc.stderr, proc.stderr
    env["RANK"] = "two"
    proc = subprocess.run([gemma_train, *recipe], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and 'RANK="two"' in proc.stderr, proc.stderr
    env.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    proc = subprocess.run([gemma_train, *recipe], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
