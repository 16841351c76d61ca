"""One process of a multi-process `train.fit` / `gan.fit_gan` / `dbn.fit_rbm` run, for tests/test_multiprocess.py.

Run as `python -m tests.multiprocess_worker JSON` with a JSON dict of options. It sets
the device count, joins the job through `jax.distributed.initialize` (127.0.0.1 only)
when `num_processes > 1`, trains, and writes its final params to `out`.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(options: dict, log_path: str) -> subprocess.Popen:
  """Starts a worker process (float32, its own device count) logging to `log_path`.

  The parent's handle on the log is closed once the child holds it, so no file is left open.
  """
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  with open(log_path, "w") as log:
    return subprocess.Popen([sys.executable, "-m", "tests.multiprocess_worker", json.dumps(options)], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def load_params(path) -> dict:
  """The params a worker saved (closing the archive)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  with np.load(path) as archive:
    return dict(archive)


def run_killed_and_resumed(tmp_path, options: dict, kills: int = 3, max_delay_s: float = 0.5,
                           timeout_s: float = 240) -> tuple[dict, dict]:
  """The same run twice: once uninterrupted, once SIGKILLed `kills` times and resumed each time.

  Each kill comes a random 0..`max_delay_s` seconds after the run's next epoch record.
  Returns (uninterrupted params, killed-and-resumed params); the killed run's workdir is
  `tmp_path / "killed"`.
  """
  import signal  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel

  import numpy as np  # pylint: disable=import-outside-toplevel

  from sparsejax import records  # pylint: disable=import-outside-toplevel

  def finish(proc, log_path):
    assert proc.wait(timeout_s) == 0, open(log_path).read()[-3000:]  # noqa: SIM115

  full_log = str(tmp_path / "full.log")
  finish(start({**options, "workdir": str(tmp_path / "full"), "out": str(tmp_path / "full.npz")}, full_log), full_log)
  workdir = str(tmp_path / "killed")
  records_path = os.path.join(workdir, "log.jsonl")
  rng = np.random.default_rng(0)
  for attempt in range(kills + 1):
    log_path = str(tmp_path / f"killed_{attempt}.log")
    proc = start({**options, "workdir": workdir, "out": str(tmp_path / "killed.npz"), "resume": attempt > 0}, log_path)
    if attempt == kills:
      finish(proc, log_path)
      break
    seen = len(records.read_jsonl(records_path)) if os.path.exists(records_path) else 0
    deadline = time.time() + 120
    while time.time() < deadline and (not os.path.exists(records_path) or
                                      len(records.read_jsonl(records_path)) < seen + 1):
      time.sleep(0.01)
    time.sleep(float(rng.uniform(0.0, max_delay_s)))
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
  return load_params(tmp_path / "full.npz"), load_params(tmp_path / "killed.npz")


def main(options: dict) -> None:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={options['devices']}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax  # pylint: disable=import-outside-toplevel
  if options["num_processes"] > 1:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{options['port']}",
                               num_processes=options["num_processes"], process_id=options["process_id"],
                               initialization_timeout=60, heartbeat_timeout_seconds=options.get("heartbeat", 100))
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  from sparsejax import activity, data, dbn, gan, train, transforms  # pylint: disable=import-outside-toplevel
  from sparsejax.models import MLP, dcgan  # pylint: disable=import-outside-toplevel

  x, y = data.load("digits", "train")
  x, y = x[:512], y[:512]
  if options["trainer"] == "fit":
    lr = 0.05
    tx = optax.chain(optax.sgd(lr, momentum=0.9), transforms.integrated_tl1(1e-3, lr, a=0.5))
    config = train.TrainConfig(epochs=options["epochs"], batch_size=64, eval_batch_size=100, progress=False,
                               num_devices=options.get("num_devices", 0),
                               parallelism=options.get("parallelism", "pmap"),
                               checkpoint_every_steps=options.get("checkpoint_every_steps", 0))
    slow = options.get("slow_report_s", 0.0)

    def report(params):
      if slow:
        import time  # pylint: disable=import-outside-toplevel
        time.sleep(slow)
      return {"nonzero": int(sum(int(np.count_nonzero(np.asarray(p))) for p in jax.tree.leaves(params)))}

    result = train.fit(MLP((32, 10)), tx, (x, y), (x[:250], y[:250]), config, options["workdir"],
                       resume=options.get("resume", False), report_fn=report)
    params = result.state.params
  elif options["trainer"] == "rbm":
    import functools  # pylint: disable=import-outside-toplevel
    config = dbn.RBMConfig(epochs=options["epochs"], batch_size=64, k=2, persistent=True, progress=False,
                           num_devices=options.get("num_devices", 0), parallelism=options.get("parallelism", "pmap"),
                           checkpoint_every_steps=options.get("checkpoint_every_steps", 0), log_every_steps=3)
    penalty = functools.partial(activity.local_global, lambda_local=3.0, lambda_global=0.005)
    result = dbn.fit_rbm(x, 48, optax.sgd(0.1, momentum=0.5), config, options["workdir"], hidden_penalty=penalty,
                         eval_data=x[:100], resume=options.get("resume", False))
    params = result.params
  else:
    images = np.asarray(data.load("digits", "train")[0][:128], np.float32)
    images = np.pad(images, ((0, 0), (10, 10), (10, 10), (0, 0)))  # 28x28, values in [0, 1]
    images = images / max(float(images.max()), 1.0)
    g, d = dcgan.dcgan_28(width=8, axis_name="batch")
    config = gan.GANConfig(epochs=options["epochs"], batch_size=32, latent_dim=16, progress=False,
                           log_every_steps=2, parallelism=options.get("parallelism", "pmap"))
    result = gan.fit_gan(g, d, optax.adam(2e-4, b1=0.5), optax.adam(2e-4, b1=0.5), images, config,
                         options["workdir"], resume=options.get("resume", False))
    params = {"g": result.state.g_params, "d": result.state.d_params}
  flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
  np.savez(options["out"], **flat)
  print("done", flush=True)


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
