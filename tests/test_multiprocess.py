"""Real multi-process runs: 2 local processes (127.0.0.1 only) joined by `jax.distributed`.

Each process is a fresh interpreter running `tests/multiprocess_worker.py` (float32, CPU,
gloo collectives). A P-process run must be *one* data-parallel run: its params equal a
one-process run of the same global batch, every epoch is logged once, checkpoints are
written, and a killed peer gives a clear error in bounded time, after which a resumed
run completes the same training.
"""

import json
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from tests import multiprocess_worker

pytestmark = pytest.mark.integration  # the integration tier: pytest -m integration (see README)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 240


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(options: dict, log_path: str) -> subprocess.Popen:
  return multiprocess_worker.start(options, log_path)


def _log_tail(path: str, lines: int = 30) -> str:
  with open(path) as f:
    kept = [line for line in f if not line.startswith("    @")]
  return "".join(kept[-lines:])


def _run(tmp_path, name: str, num_processes: int, devices: int, **options) -> list[dict]:
  """Runs a job to completion; returns each process's final params."""
  port = _free_port()
  procs, logs, outs = [], [], []
  for pid in range(num_processes):
    out = str(tmp_path / f"{name}_{pid}.npz")
    log = str(tmp_path / f"{name}_{pid}.log")
    opts = {"devices": devices, "num_processes": num_processes, "process_id": pid, "port": port,
            "workdir": str(tmp_path / name), "out": out, **options}
    procs.append(_start(opts, log))
    logs.append(log)
    outs.append(out)
  for rc, log in zip(_wait_all(procs, logs, name), logs):
    assert rc == 0, f"{name}: exit {rc}\n{_log_tail(log)}"
  return [multiprocess_worker.load_params(out) for out in outs]


def _wait_all(procs: list, logs: list[str], name: str) -> list[int]:
  """The exit codes of `procs`; the test fails (every process killed) if one hangs."""
  codes = []
  for proc, log in zip(procs, logs):
    try:
      codes.append(proc.wait(TIMEOUT_S))
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
        p.wait()
      pytest.fail(f"{name}: a process hung:\n{_log_tail(log)}")
  return codes


def _assert_params_close(a: dict, b: dict, atol: float):
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, err_msg=key)


def _records(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def reference_fit(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("reference")
  return _run(tmp, "ref", 1, 1, trainer="fit", epochs=3)[0]


def test_two_processes_one_device_each_are_one_run(tmp_path, reference_fit):
  p0, p1 = _run(tmp_path, "two", 2, 1, trainer="fit", epochs=3)
  _assert_params_close(p0, p1, atol=0.0)  # both processes hold the same model
  _assert_params_close(p0, reference_fit, atol=1e-5)  # and it is the one-process model
  records = _records(str(tmp_path / "two" / "log.jsonl"))
  assert [r["epoch"] for r in records] == [1, 2, 3]  # one writer: each epoch once
  with open(tmp_path / "two" / "history.json") as f:
    assert [r["step"] for r in json.load(f)] == [8, 16, 24]
  steps = sorted(int(d) for d in os.listdir(tmp_path / "two" / "checkpoints") if d.isdigit())
  assert steps == [16, 24]  # keep_checkpoints=2


def test_two_processes_two_devices_each_are_one_run(tmp_path, reference_fit):
  p0, p1 = _run(tmp_path, "two_by_two", 2, 2, trainer="fit", epochs=3)
  _assert_params_close(p0, p1, atol=0.0)
  _assert_params_close(p0, reference_fit, atol=1e-5)


def test_sharded_path_over_two_processes_is_one_run(tmp_path, reference_fit):
  """parallelism="sharded": one jit program over a Mesh spanning both processes' devices."""
  p0, p1 = _run(tmp_path, "sharded", 2, 1, trainer="fit", epochs=2, parallelism="sharded")
  _assert_params_close(p0, p1, atol=0.0)
  assert [r["epoch"] for r in _records(str(tmp_path / "sharded" / "log.jsonl"))] == [1, 2]
  steps = sorted(int(d) for d in os.listdir(tmp_path / "sharded" / "checkpoints") if d.isdigit())
  assert steps == [8, 16]
  # resume it for the third epoch on 2 processes x 2 devices (a 4-device mesh): the one-process run
  q0, q1 = _run(tmp_path, "sharded", 2, 2, trainer="fit", epochs=3, parallelism="sharded", resume=True)
  _assert_params_close(q0, q1, atol=0.0)
  _assert_params_close(q0, reference_fit, atol=1e-5)
  assert [r["epoch"] for r in _records(str(tmp_path / "sharded" / "log.jsonl"))] == [1, 2, 3]


def test_fsdp_over_two_processes_is_one_run(tmp_path, reference_fit):
  """parallelism="fsdp": every kernel split between the two processes, gathered for checkpoints and records."""
  p0, p1 = _run(tmp_path, "fsdp", 2, 1, trainer="fit", epochs=2, parallelism="fsdp")
  _assert_params_close(p0, p1, atol=0.0)
  assert [r["epoch"] for r in _records(str(tmp_path / "fsdp" / "log.jsonl"))] == [1, 2]
  # resume it for the third epoch on 2 processes x 2 devices: each leaf split 4 ways
  q0, q1 = _run(tmp_path, "fsdp", 2, 2, trainer="fit", epochs=3, parallelism="fsdp", resume=True)
  _assert_params_close(q0, q1, atol=0.0)
  _assert_params_close(q0, reference_fit, atol=1e-5)
  assert [r["epoch"] for r in _records(str(tmp_path / "fsdp" / "log.jsonl"))] == [1, 2, 3]


def test_sharded_gan_two_processes_equal_one_process(tmp_path):
  (ref,) = _run(tmp_path, "gan_ref", 1, 1, trainer="gan", epochs=1)
  p0, p1 = _run(tmp_path, "gan_sharded", 2, 2, trainer="gan", epochs=1, parallelism="sharded")
  _assert_params_close(p0, p1, atol=0.0)
  _assert_params_close(p0, ref, atol=1e-5)


def test_gan_two_processes_equal_one_process(tmp_path):
  (ref,) = _run(tmp_path, "gan_ref", 1, 1, trainer="gan", epochs=1)
  p0, p1 = _run(tmp_path, "gan_two", 2, 1, trainer="gan", epochs=1)
  _assert_params_close(p0, p1, atol=0.0)
  _assert_params_close(p0, ref, atol=1e-5)
  assert [r["epoch"] for r in _records(str(tmp_path / "gan_two" / "log.jsonl"))] == [1]


@pytest.mark.parametrize("parallelism", ["pmap", "sharded"])
def test_rbm_two_processes_equal_one_process(tmp_path, parallelism):
  """dbn.fit_rbm (persistent CD-2 with a sparsity penalty on the global mean activation) over 2 real processes."""
  (ref,) = _run(tmp_path, "rbm_ref", 1, 1, trainer="rbm", epochs=2)
  p0, p1 = _run(tmp_path, "rbm_two", 2, 1, trainer="rbm", epochs=2, parallelism=parallelism)
  _assert_params_close(p0, p1, atol=0.0)
  _assert_params_close(p0, ref, atol=1e-5)
  assert [r["epoch"] for r in _records(str(tmp_path / "rbm_two" / "log.jsonl"))] == [1, 2]


def test_killed_peer_gives_clear_error_quickly_and_resume_completes(tmp_path):
  epochs = 30
  (reference,) = _run(tmp_path, "kill_ref", 1, 1, trainer="fit", epochs=epochs, checkpoint_every_steps=4)
  port = _free_port()
  workdir = str(tmp_path / "killed")
  common = {"devices": 1, "num_processes": 2, "port": port, "trainer": "fit", "epochs": epochs,
            "workdir": workdir, "checkpoint_every_steps": 4, "slow_report_s": 0.3}
  logs = [str(tmp_path / f"killed_{i}.log") for i in range(2)]
  procs = [_start({**common, "process_id": i, "out": str(tmp_path / f"killed_{i}.npz")}, logs[i]) for i in range(2)]
  log_path = os.path.join(workdir, "log.jsonl")
  deadline = time.time() + TIMEOUT_S
  while time.time() < deadline and not (os.path.exists(log_path) and len(_records(log_path)) >= 3):
    assert procs[0].poll() is None, _log_tail(logs[0])
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  try:
    rc = procs[0].wait(60)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    procs[0].wait()
    pytest.fail("the survivor hung after its peer was killed")
  finally:
    procs[1].wait(60)  # reap the killed peer
  elapsed = time.time() - killed_at
  assert rc == 1, _log_tail(logs[0])
  assert elapsed < 30, elapsed
  tail = _log_tail(logs[0])
  assert "PeerLostError: process 0 of 2 lost a peer process at step" in tail, tail
  assert "resume=True" in tail
  # Restart both processes with resume=True: the run completes and equals the uninterrupted one.
  p0, p1 = _run(tmp_path, "killed", 2, 1, trainer="fit", epochs=epochs, checkpoint_every_steps=4, resume=True)
  _assert_params_close(p0, p1, atol=0.0)
  _assert_params_close(p0, reference, atol=1e-5)
  assert [r["epoch"] for r in _records(log_path)] == list(range(1, epochs + 1))


def test_processes_given_different_workdirs_are_refused_by_name(tmp_path):
  """Each process names the argument that differs (it used to fail in a barrier with
  'sync_global_devices name mismatch')."""
  port = _free_port()
  procs, logs = [], []
  for pid in range(2):
    log = str(tmp_path / f"p{pid}.log")
    opts = {"devices": 1, "num_processes": 2, "process_id": pid, "port": port, "trainer": "fit", "epochs": 1,
            "workdir": str(tmp_path / f"workdir_{pid}"), "out": str(tmp_path / f"out_{pid}.npz")}
    procs.append(_start(opts, log))
    logs.append(log)
  for rc, log in zip(_wait_all(procs, logs, "different workdirs"), logs):
    assert rc != 0
    with open(log) as f:
      assert "workdir differs between processes" in f.read(), _log_tail(log)
  assert not (tmp_path / "workdir_0" / "log.jsonl").exists()
