"""TensorBoard event files from io/tensorboard_events against the `tensorboard` package from PyPI:
its EventAccumulator (what `tensorboard --logdir` runs) reads our scalars back, and the file is
byte for byte what tensorboard's own protos and RecordWriter, and torch.utils.tensorboard's
SummaryWriter, write for the same scalars. The C++ side is tests/io/tensorboard_events_driver,
whose path comes in GEMMA_TB_DRIVER (tests/CMakeLists.txt sets it). Also `gemma-train plot`
on a TRL-shaped metrics.jsonl."""
import io
import json
import os
import re
import socket
import struct
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import run

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: E402
from tensorboard.summary.writer.record_writer import RecordWriter  # noqa: E402

# (tag, step, value, wall_time): several tags, step 0 (left out by proto3), a large step, a
# negative and a non-representable float32 value.
SCALARS = [
    ("train/loss", 0, 2.75, 1_700_000_000.25),
    ("train/learning_rate", 0, 2e-4, 1_700_000_000.25),
    ("train/loss", 10, 2.3140000000000001, 1_700_000_010.5),
    ("train/grad_norm", 10, 0.1, 1_700_000_010.5),
    ("eval/loss", 10, 2.5, 1_700_000_011.0),
    ("train/loss", 20, -1.0, 1_700_000_020.75),
    ("train/loss", 2**40, 1e-30, 1_700_000_030.0),
]


@pytest.fixture(scope="module")
def driver():
    path = os.environ.get("GEMMA_TB_DRIVER")
    if not path or not os.path.exists(path):
        pytest.skip("GEMMA_TB_DRIVER not set (the reference ctest entries set it)")
    return path


def write_with_driver(driver, logdir, scalars):
    args = [driver, str(logdir)]
    for tag, step, value, wall_time in scalars:
        args += [tag, str(step), repr(value), repr(wall_time)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def read_records(data):
    records, at = [], 0
    while at < len(data):
        (length,) = struct.unpack_from("<Q", data, at)
        records.append(data[at + 12:at + 12 + length])
        at += 16 + length
    return records


def test_event_accumulator_reads_our_scalars(driver, tmp_path):
    path = write_with_driver(driver, tmp_path / "logs", SCALARS)
    assert os.path.dirname(path) == str(tmp_path / "logs")
    name = os.path.basename(path)
    host = re.escape(socket.gethostname())
    assert re.fullmatch(rf"events\.out\.tfevents\.\d{{10}}\.{host}\.\d+\.0", name), name

    acc = EventAccumulator(str(tmp_path / "logs"))
    acc.Reload()
    tags = {tag for tag, *_ in SCALARS}
    assert set(acc.Tags()["scalars"]) == tags
    for tag in tags:
        want = [(s, v, w) for t, s, v, w in SCALARS if t == tag]
        got = acc.Scalars(tag)
        assert [e.step for e in got] == [s for s, _, _ in want]
        assert [e.value for e in got] == [float(np.float32(v)) for _, v, _ in want]
        assert [e.wall_time for e in got] == [w for _, _, w in want]


def test_file_is_byte_identical_to_tensorboards_writer(driver, tmp_path):
    path = write_with_driver(driver, tmp_path / "logs", SCALARS)
    ours = open(path, "rb").read()
    first = event_pb2.Event.FromString(read_records(ours)[0])
    assert first.file_version == "brain.Event:2"

    # tensorboard's EventFileWriter: the file_version event, then one Event per scalar.
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    writer.write(event_pb2.Event(wall_time=first.wall_time, file_version="brain.Event:2")
                 .SerializeToString())
    for tag, step, value, wall_time in SCALARS:
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
        writer.write(event_pb2.Event(wall_time=wall_time, step=step, summary=summary)
                     .SerializeToString())
    assert ours == buffer.getvalue()


def test_records_equal_torch_summary_writers(driver, tmp_path):
    torch_tb = pytest.importorskip("torch.utils.tensorboard")
    writer = torch_tb.SummaryWriter(log_dir=str(tmp_path / "torch"))
    for tag, step, value, wall_time in SCALARS:
        writer.add_scalar(tag, value, step, walltime=wall_time)
    writer.close()
    (theirs_name,) = os.listdir(tmp_path / "torch")
    theirs = read_records(open(tmp_path / "torch" / theirs_name, "rb").read())
    ours = read_records(open(write_with_driver(driver, tmp_path / "ours", SCALARS), "rb").read())
    # The first event carries each writer's own clock; every scalar event must match exactly.
    assert event_pb2.Event.FromString(theirs[0]).file_version == "brain.Event:2"
    assert ours[1:] == theirs[1:]


def test_plot_draws_trl_metrics(gemma_train, tmp_path):
    lines = []
    for step in range(1, 31):
        lines.append({"loss": 3.0 - step / 20, "grad_norm": 1.0, "learning_rate": 2e-4 * step / 30,
                      "epoch": step / 30, "step": step})
        if step % 10 == 0:
            lines.append({"eval_loss": 3.1 - step / 20, "eval_runtime": 0.5, "step": step})
    lines.append({"train_runtime": 10.0, "train_loss": 2.2, "step": 30})
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))

    proc = run(gemma_train, "plot", metrics, "--out", tmp_path / "loss.svg")
    assert proc.stdout.strip() == f"wrote {tmp_path / 'loss.svg'}"
    svg = ET.parse(tmp_path / "loss.svg").getroot()  # well-formed XML
    ns = {"s": "http://www.w3.org/2000/svg"}
    polylines = {p.get("class"): p.get("points").split() for p in svg.iterfind(".//s:polyline", ns)}
    assert {k: len(v) for k, v in polylines.items()} == {"loss": 30, "eval_loss": 3, "learning_rate": 30}

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"loss": 1.0, "step": 1}\n{"loss": 1.0}\n')
    proc = run(gemma_train, "plot", bad, "--out", tmp_path / "bad.svg", check=False)
    assert proc.returncode != 0
    assert f"{bad}:2" in proc.stderr and "step" in proc.stderr
    assert not (tmp_path / "bad.svg").exists()
