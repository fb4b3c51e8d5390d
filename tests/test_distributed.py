"""Distribution-correctness of ObjectiveModel: one step on 2 replicas equals one step on 1 device.

Each test runs fresh subprocesses (device counts must be fixed before TF/JAX initialise) under its
own backend, so each runs once: TF ones when the suite runs under TensorFlow, JAX under JAX.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import only_backend

# The job: a tiny functional model with side data, a tapped layer, sample weights and a
# scheduled term, trained one SGD step on a global batch of 8 (MirroredStrategy: then one more on
# 7 samples, split 4 + 3), first on one device (reference), then under the distribution named by
# the mode. Prints a JSON line with weights and logs.
JOB = textwrap.dedent(
    """
    import json, os, sys
    mode = sys.argv[1]
    if mode == "jax":
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import numpy as np
    if mode != "jax":
        import tensorflow as tf
        if mode == "mirrored":
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
            strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        else:
            # Must exist before any other TF op runs in the process.
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras
    import losskit
    from keras import ops

    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 3)).astype("float32")
    T = rng.uniform(0.1, 0.9, size=(8, 1)).astype("float32")
    Y = (rng.uniform(size=8) > 0.5).astype("float32")
    W = rng.uniform(0.5, 2.0, size=8).astype("float32")

    def teacher_mse(t, p):
        return ops.mean((t - p) ** 2, axis=-1)

    def act(a):
        return ops.mean(a ** 2, axis=-1)

    def build():
        keras.utils.set_random_seed(1)
        inp = keras.Input((3,), name="features")
        h = keras.layers.Dense(4, activation="tanh", name="hidden")(inp)
        out = keras.layers.Dense(1, activation="sigmoid", name="out")(h)
        objective = losskit.Objective([
            losskit.Term(keras.losses.binary_crossentropy, name="bce"),
            losskit.Term(teacher_mse, t="x.teacher", p="pred", name="distill",
                         weight=losskit.schedules.Linear(0.5, 1.0, steps=10)),
            losskit.Term(act, a="layer.hidden", weight=0.1, name="act"),
        ])
        model = losskit.ObjectiveModel(keras.Model(inp, out), objective)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        return model

    def step(model):
        h = model.fit({"features": X, "teacher": T}, Y, sample_weight=W, batch_size=8,
                      epochs=1, shuffle=False, verbose=0)
        if mode == "mirrored":  # then a step on 7 samples: an uneven 4 + 3 split
            h = model.fit({"features": X[:7], "teacher": T[:7]}, Y[:7], sample_weight=W[:7],
                          batch_size=7, epochs=1, shuffle=False, verbose=0)
        return {"weights": [w.tolist() for w in model.inner.get_weights()],
                "logs": {k: v[-1] for k, v in h.history.items()}}

    reference = step(build())
    if mode == "jax":
        import jax
        replicas = len(jax.devices())
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        distributed = step(build())
    else:
        replicas = strategy.num_replicas_in_sync
        with strategy.scope():
            model = build()
        distributed = step(model)
    print("RESULT " + json.dumps({"replicas": replicas, "reference": reference,
                                  "distributed": distributed}))
    """
)


# Token-level: a small language model whose Dense head is trained through the fused
# cross-entropy as a Term (per-token values), on sequences padded unevenly across the two
# replicas (the second half of the batch is mostly padding). The Objective divides by the kept
# tokens of the global batch, so the step equals one device's.
# The start of a job run as `job.py MODE`: two devices for MODE, fixed before TensorFlow or JAX
# initialise ("jax", "model_parallel": two forced host devices; "mirrored": two logical CPUs and
# their `strategy`), then keras and losskit.
TWO_DEVICES = textwrap.dedent(
    """
    import json, os, sys
    mode = sys.argv[1]
    if mode in ("jax", "model_parallel"):
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import numpy as np
    if mode == "mirrored":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    import keras
    import losskit
    from keras import ops
    """
)

JOB_TOKENS = TWO_DEVICES + textwrap.dedent(
    """
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 11, size=(4, 6)).astype("int32")
    labels = rng.integers(0, 11, size=(4, 6)).astype("int32")
    labels[2, 1:] = -100
    labels[3, 2:] = -100

    def build():
        keras.utils.set_random_seed(1)
        inp = keras.Input((6,), dtype="int32", name="tokens")
        x = keras.layers.Embedding(11, 5, name="embed")(inp)
        h = keras.layers.Dense(8, activation="tanh", name="h")(x)
        out = keras.layers.Dense(12, name="head")(h)  # even: sharded over 2 devices
        objective = losskit.Objective([losskit.Term(
            losskit.losses.fused_linear_cross_entropy, hidden="layer.h",
            kernel="var.head.kernel", bias="var.head.bias", labels="y", name="ce")])
        model = losskit.ObjectiveModel(keras.Model(inp, out), objective)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        return model

    def step(model):
        h = model.fit({"tokens": tokens}, labels, batch_size=4, epochs=1, shuffle=False,
                      verbose=0)
        return {"weights": [w.tolist() for w in model.inner.get_weights()],
                "logs": {k: v[-1] for k, v in h.history.items()}}

    reference = step(build())
    if mode == "jax":
        import jax
        replicas = len(jax.devices())
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        distributed = step(build())
    elif mode == "model_parallel":
        import jax
        replicas = len(jax.devices())
        mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], jax.devices())
        layout = keras.distribution.LayoutMap(mesh)
        layout["head/kernel"] = (None, "model")  # the vocabulary axis, split over 2 devices
        layout["head/bias"] = ("model",)
        keras.distribution.set_distribution(
            keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch"))
        model = build()
        kernel = model.inner.get_layer("head").kernel.value
        assert len(kernel.sharding.device_set) == 2, kernel.sharding
        distributed = step(model)
    else:
        replicas = strategy.num_replicas_in_sync
        with strategy.scope():
            model = build()
        distributed = step(model)
    print("RESULT " + json.dumps({"replicas": replicas, "reference": reference,
                                  "distributed": distributed}))
    """
)


def _env(backend, extra=None):
    env = dict(os.environ)
    env.update({"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(os.path.dirname(__file__), "..", "src"), env.get("PYTHONPATH", "")]
    )
    env.update(extra or {})
    return env


def _result(stdout, stderr):
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"job printed no result.\nstdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def _run(tmp_path, mode, backend, job=JOB, timeout=240):
    script = tmp_path / "job.py"
    script.write_text(job)
    proc = subprocess.run(
        [sys.executable, str(script), mode],
        env=_env(backend),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return _result(proc.stdout, proc.stderr)


def _assert_same_step(result, logs):
    assert result["replicas"] == 2
    ref, dist = result["reference"], result["distributed"]
    for a, b in zip(ref["weights"], dist["weights"]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=0, atol=1e-6)
    assert set(ref["logs"]) == logs
    for key, value in ref["logs"].items():
        assert abs(dist["logs"][key] - value) <= 1e-6, (key, value, dist["logs"][key])


def _assert_same(result):
    _assert_same_step(result, {"loss", "bce", "distill", "act", "distill_weight"})
    ref = result["reference"]
    # The logged total is the weighted sum of the logged terms.
    logs = ref["logs"]
    expected = logs["bce"] + logs["distill_weight"] * logs["distill"] + 0.1 * logs["act"]
    assert abs(logs["loss"] - expected) <= 1e-6


@only_backend("tensorflow")
def test_mirrored_strategy_two_cpus_equals_one_device(tmp_path):
    _assert_same(_run(tmp_path, "mirrored", "tensorflow"))


@only_backend("jax")
def test_jax_data_parallel_two_devices_equals_one_device(tmp_path):
    _assert_same(_run(tmp_path, "jax", "jax"))


@only_backend("tensorflow")
def test_mirrored_token_level_uneven_padding_equals_one_device(tmp_path):
    _assert_same_step(_run(tmp_path, "mirrored", "tensorflow", JOB_TOKENS), {"loss", "ce"})


@only_backend("jax")
def test_jax_data_parallel_token_level_uneven_padding_equals_one_device(tmp_path):
    _assert_same_step(_run(tmp_path, "jax", "jax", JOB_TOKENS), {"loss", "ce"})


@only_backend("jax")
def test_jax_model_parallel_vocabulary_sharded_head_equals_one_device(tmp_path):
    _assert_same_step(_run(tmp_path, "model_parallel", "jax", JOB_TOKENS), {"loss", "ce"})


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@only_backend("tensorflow")
def test_multi_worker_mirrored_two_workers_on_loopback_equals_one_device(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = _env("tensorflow", {"TF_CONFIG": json.dumps(config)})
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), "multiworker"],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=240))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail("MultiWorkerMirroredStrategy workers timed out")
    for stdout, stderr in outputs:
        _assert_same(_result(stdout, stderr))
