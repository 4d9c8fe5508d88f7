"""envforge smoke test for TensorFlow: train a tiny model for real and report what works.

Run inside the target environment: `python tf_smoke.py [--device auto|cpu|cuda] [--distributed]`.
Prints one JSON report on stdout (see _harness.py). Uses TensorFlow's own ops (tf.function,
GradientTape), not Keras, so a broken Keras does not hide a working runtime or the reverse.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import _harness as h  # type: ignore[import-not-found]  # a sibling file, not envforge

COMPANIONS = ("keras", "tensorflow-io-gcs-filesystem", "tensorboard", "tf-keras", "numpy", "tensorflow-cpu")
LEARNING_RATE = 1e-2


class State:
    """What the checks learn and pass on: the module, and the device(s) the rest runs on."""

    def __init__(self) -> None:
        self.tf: Any = None
        self.device = "cpu"  # "cuda" or "cpu"
        self.devices: list[str] = []  # TensorFlow device strings: /GPU:0, /CPU:0
        self.logical_cpus = 1  # CPUs split into this many logical devices (for MirroredStrategy)


def check_import(smoke: h.Smoke, state: State) -> h.Outcome:
    start = time.perf_counter()
    import tensorflow as tf  # type: ignore[import-not-found,import-untyped]

    state.tf = tf
    seconds = time.perf_counter() - start
    build = dict(tf.sysconfig.get_build_info())
    versions = {"tensorflow": tf.__version__}
    versions.update(h.package_versions(COMPANIONS + tuple(smoke.args.report_version)))
    versions["tensorflow"] = tf.__version__
    smoke.info.update(version=tf.__version__, cuda=build.get("cuda_version"), cudnn=build.get("cudnn_version"),
                      cuda_build=bool(build.get("is_cuda_build")))
    data = {"versions": versions, "import_s": round(seconds, 3), "build_info": build}
    return h.Outcome(f"tensorflow {tf.__version__} ({'CUDA build' if build.get('is_cuda_build') else 'CPU build'})"
                     f" imported in {seconds:.1f} s", **data)


def check_devices(smoke: h.Smoke, state: State) -> h.Outcome:
    tf = state.tf
    physical = tf.config.list_physical_devices("GPU")
    gpus = []
    for index, device in enumerate(physical):
        details = tf.config.experimental.get_device_details(device)
        cap = details.get("compute_capability")
        gpus.append({"index": index, "name": details.get("device_name", device.name),
                     "arch": f"{cap[0]}.{cap[1]}" if cap else None})
    build = tf.sysconfig.get_build_info()
    data = {"accelerator": "rocm" if build.get("is_rocm_build") else "cuda", "gpus": gpus,
            "cuda": build.get("cuda_version"), "cudnn": build.get("cudnn_version"),
            "cuda_build": bool(build.get("is_cuda_build"))}
    use_gpu = bool(gpus) and smoke.args.device != "cpu"
    if smoke.args.distributed and not use_gpu:
        # MirroredStrategy needs several devices: split the CPU into logical ones, before the runtime starts.
        cpus = tf.config.list_physical_devices("CPU")
        state.logical_cpus = max(1, smoke.args.nproc or 2)
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(state.logical_cpus)])
    elif not use_gpu:
        # The tiny model runs fastest on one thread: hand-offs between threads cost more than its ops.
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if use_gpu:
        state.device = "cuda"
        state.devices = [f"/GPU:{g['index']}" for g in gpus]
        names = ", ".join(f"{g['name']} (sm_{(g['arch'] or '?').replace('.', '')})" for g in gpus)
        return h.Outcome(f"{len(gpus)} GPU(s): {names}; CUDA {data['cuda']}, cuDNN {data['cudnn']}", **data)
    state.device, state.devices = "cpu", ["/CPU:0"]
    if not gpus and not build.get("is_cuda_build"):
        why = f"tensorflow {tf.__version__} is a CPU-only build"
    elif not gpus:
        why = ("this CUDA build of TensorFlow found no GPU: its CUDA/cuDNN libraries did not load "
               "(pip install 'tensorflow[and-cuda]'), or no driver is visible (see the log above)")
    else:
        why = "--device cpu"
    data["no_gpu_reason"] = why
    if smoke.args.device == "cuda":
        raise h.Failed(f"TensorFlow sees no GPU: {why}", **data)
    return h.Outcome(f"no GPU visible to TensorFlow ({why}): running on CPU", **data)


class _NoTF32:
    def __init__(self, tf) -> None:
        self.tf = tf

    def __enter__(self) -> None:
        self.saved = self.tf.config.experimental.tensor_float_32_execution_enabled()
        self.tf.config.experimental.enable_tensor_float_32_execution(False)

    def __exit__(self, *exc: object) -> None:
        self.tf.config.experimental.enable_tensor_float_32_execution(self.saved)


def check_kernels(smoke: h.Smoke, state: State) -> h.Outcome:
    tf = state.tf
    a = tf.random.stateless_normal([128, 96], seed=[0, 1])
    b = tf.random.stateless_normal([96, 64], seed=[0, 2])
    x = tf.random.stateless_normal([2, 16, 16, 3], seed=[0, 3])  # NHWC
    w = tf.random.stateless_normal([3, 3, 3, 8], seed=[0, 4])  # HWIO
    with tf.device("/CPU:0"):
        mm_ref = _flat(tf.matmul(tf.cast(a, tf.float64), tf.cast(b, tf.float64)))
        conv_ref = _flat(tf.nn.conv2d(tf.cast(x, tf.float64), tf.cast(w, tf.float64), 1, "SAME"))
    per_device, failures = {}, []
    with _NoTF32(tf):
        for device in state.devices:
            with tf.device(device):
                mm = tf.matmul(a, b)
                conv = tf.nn.conv2d(x, w, 1, "SAME")
            placed = {mm.device, conv.device}
            if not all(p.upper().endswith(device.strip("/").upper()) for p in placed):
                failures.append(f"ops asked for {device} ran on {', '.join(sorted(placed))}")
            errors = {"matmul": h.relative_error(_flat(mm), mm_ref), "conv2d": h.relative_error(_flat(conv), conv_ref)}
            per_device[device] = errors
            failures += h.kernel_failures(device, errors)
    return h.kernel_outcome(per_device, failures, "cuDNN" if state.device == "cuda" else "CPU kernels", state.devices)


def _flat(tensor) -> list[float]:
    return [float(v) for v in tensor.numpy().reshape(-1)]


# --------------------------------------------------------------------------- the tiny model


def _make(tf, seed: int):
    """Weights (conv 3x3x1x8, dense 512x32, dense 32x2) and the synthetic data set."""
    def init(shape, fan_in, k):
        return tf.Variable(tf.random.stateless_normal(shape, seed=[seed, k]) * (2.0 / fan_in) ** 0.5)

    params = [init([3, 3, 1, 8], 9, 1), tf.Variable(tf.zeros([8])),
              init([8 * 8 * 8, 32], 512, 2), tf.Variable(tf.zeros([32])),
              init([32, 2], 32, 3), tf.Variable(tf.zeros([2]))]
    inputs = tf.random.stateless_normal([64, 8, 8, 1], seed=[seed, 10])
    # A rule the model can learn: is the top half of the image brighter than the bottom half?
    labels = tf.cast(tf.reduce_sum(inputs[:, :4], axis=[1, 2, 3]) > tf.reduce_sum(inputs[:, 4:], axis=[1, 2, 3]),
                     tf.int32)
    return params, inputs, labels


def _forward(tf, params, inputs, dtype=None):
    if dtype is not None:  # mixed precision: compute in the low dtype, keep float32 master weights
        params = [tf.cast(p, dtype) for p in params]
        inputs = tf.cast(inputs, dtype)
    conv_w, conv_b, w1, b1, w2, b2 = params
    hidden = tf.nn.relu(tf.nn.conv2d(inputs, conv_w, 1, "SAME") + conv_b)
    hidden = tf.reshape(hidden, [tf.shape(hidden)[0], -1])
    hidden = tf.nn.relu(tf.matmul(hidden, w1) + b1)
    return tf.matmul(hidden, w2) + b2


def _make_step(tf, lr: float, dtype=None, loss_scale: float = 1.0):
    """A tf.function training step (Adam, written out: no Keras), returning (loss, logits dtype)."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    @tf.function
    def step(params, moments, inputs, labels, t):
        with tf.GradientTape() as tape:
            logits = _forward(tf, params, inputs, dtype)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=tf.cast(logits, tf.float32)))
            scaled = loss * loss_scale
        grads = tape.gradient(scaled, params)
        for param, grad, (m, v) in zip(params, grads, moments):
            grad = tf.cast(grad, tf.float32) / loss_scale
            m.assign(beta1 * m + (1 - beta1) * grad)
            v.assign(beta2 * v + (1 - beta2) * grad * grad)
            m_hat = m / (1 - beta1 ** t)
            v_hat = v / (1 - beta2 ** t)
            param.assign_sub(lr * m_hat / (tf.sqrt(v_hat) + eps))
        return loss, logits.dtype == (dtype or tf.float32)

    return step


def train(tf, device: str, steps: int, lr: float, seed: int = 0):
    """Full-batch Adam on the synthetic set; returns (losses, seconds for steps 2..n, device of the loss)."""
    with tf.device(device):
        params, inputs, labels = _make(tf, seed)
        moments = [(tf.Variable(tf.zeros_like(p)), tf.Variable(tf.zeros_like(p))) for p in params]
        step = _make_step(tf, lr)
        losses, placed = [], ""
        start = time.perf_counter()
        for index in range(steps):
            if index == 1:
                start = time.perf_counter()  # the first step pays for tracing
            loss, _ = step(params, moments, inputs, labels, tf.constant(float(index + 1)))
            losses.append(float(loss.numpy()))
            placed = loss.device
        return losses, time.perf_counter() - start, placed


def check_training(smoke: h.Smoke, state: State) -> h.Outcome:
    tf = state.tf
    steps = max(2, smoke.args.steps)
    device = state.devices[0]
    losses, seconds, placed = train(tf, device, steps, smoke.args.lr or LEARNING_RATE)
    if state.device == "cuda" and "GPU" not in placed.upper():
        raise h.Failed(f"training asked for {device} ran on {placed}: TensorFlow quietly trained on the CPU",
                       placed=placed)
    return h.training_outcome(losses, steps, seconds, device, placed=placed)


def check_mixed_precision(smoke: h.Smoke, state: State) -> h.Outcome:
    tf = state.tf
    device = state.devices[0]
    bf16 = _bf16_supported(tf, 0) if state.device == "cuda" else True
    dtype, loss_scale = (tf.bfloat16, 1.0) if bf16 else (tf.float16, 1024.0)  # fp16 needs loss scaling
    label = "bfloat16" if bf16 else "float16"
    with tf.device(device):
        params, inputs, labels = _make(tf, 0)
        moments = [(tf.Variable(tf.zeros_like(p)), tf.Variable(tf.zeros_like(p))) for p in params]
        before = [p.numpy().copy() for p in params]
        try:
            loss, low = _make_step(tf, LEARNING_RATE, dtype, loss_scale)(params, moments, inputs, labels,
                                                                          tf.constant(1.0))
        except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as exc:
            if state.device == "cpu" and "kernel" in str(exc).lower():
                reason = h.describe_exception(exc)
                raise h.Skipped(f"TensorFlow has no {label} kernels for this CPU: {reason}") from None
            raise
    value = float(loss.numpy())
    data = {"dtype": label, "loss": value, "device": device, "loss_scale": loss_scale}
    if not bool(low):
        raise h.Failed(f"the {label} forward pass produced another dtype: the low-precision path did not engage",
                       **data)
    changed = any((b != p.numpy()).any() for b, p in zip(before, params))
    finite = all(bool(tf.reduce_all(tf.math.is_finite(p))) for p in params)
    return h.one_step_outcome(f"{label} training step", device, value, finite, changed, data)


def _bf16_supported(tf, gpu_index: int) -> bool:
    """bfloat16 tensor cores come with Ampere (compute capability 8.0); older GPUs get float16."""
    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[gpu_index])
    return tuple(details.get("compute_capability") or (0, 0)) >= (8, 0)


def check_determinism(smoke: h.Smoke, state: State) -> h.Outcome:
    tf = state.tf
    device = state.devices[0]
    switches = ["tf.config.experimental.enable_op_determinism()"]
    tf.config.experimental.enable_op_determinism()
    try:
        runs = [train(tf, device, h.DETERMINISM_STEPS, LEARNING_RATE, seed=1)[0] for _ in range(2)]
    except tf.errors.OpError as exc:
        op = h.nondeterministic_op(str(exc)) or getattr(getattr(exc, "op", None), "type", None)
        if op or "determinis" in str(exc).lower():
            raise h.Failed(f"{op or 'an op'} has no deterministic implementation on {device}: "
                           f"{h.describe_exception(exc)}", op=op, switches=switches) from None
        raise
    finally:
        disable = getattr(tf.config.experimental, "disable_op_determinism", None)
        if disable is not None:
            disable()
    return h.same_losses(runs, device, switches)


def check_throughput(smoke: h.Smoke, state: State) -> h.Outcome:
    tf = state.tf
    results = []
    with _NoTF32(tf):
        for index, device in enumerate(state.devices):
            gpu = device.upper().startswith("/GPU")
            plan = [("fp32", tf.float32, 256)]
            if gpu:
                low = ("bf16", tf.bfloat16) if _bf16_supported(tf, index) else ("fp16", tf.float16)
                plan = [("fp32", tf.float32, 4096), (*low, 8192)]
            row: dict[str, Any] = {"device": device}
            if gpu:
                details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[index])
                row["name"] = details.get("device_name")
            for label, dtype, n in plan:
                with tf.device(device):
                    a = tf.cast(tf.random.stateless_normal([n, n], seed=[1, 1]), dtype)
                    b = tf.cast(tf.random.stateless_normal([n, n], seed=[1, 2]), dtype)
                    matmul = tf.function(lambda: tf.matmul(a, b))
                    matmul().numpy()  # warm-up: traces and picks the kernel
                    last: list[Any] = [None]
                    # Reading one element of the last product waits for the device's queue to drain.
                    iters, seconds = h.timed_rate(lambda: last.__setitem__(0, matmul()), 0.5 if gpu else 0.3, 5000,
                                                  sync=lambda: last[0][0, 0].numpy())
                row[f"{label}_tflops"] = h.tflops(n, iters, seconds)
                row[f"{label}_size"] = n
            results.append(row)
    return h.Outcome(h.throughput_detail(results), devices=results, tf32=False)


def check_distributed(smoke: h.Smoke, state: State) -> h.Outcome:
    tf = state.tf
    if state.device == "cuda":
        devices = state.devices
    else:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    replicas = strategy.num_replicas_in_sync

    def replica_sum():
        context = tf.distribute.get_replica_context()
        return context.all_reduce("sum", tf.cast(context.replica_id_in_sync_group + 1, tf.float32))

    summed = [float(v.numpy()) for v in
              strategy.experimental_local_results(tf.function(lambda: strategy.run(replica_sum))())]
    expected = replicas * (replicas + 1) / 2
    data = {"replicas": replicas, "devices": devices, "all_reduce": summed,
            "cross_device_ops": type(strategy.extended._cross_device_ops).__name__
            if getattr(strategy.extended, "_cross_device_ops", None) else None}
    if any(v != expected for v in summed):
        raise h.Failed(f"all_reduce disagrees: replicas got {summed}, expected {expected}", **data)
    with strategy.scope():
        params, inputs, labels = _make(tf, 0)

    def replica_grads():
        context = tf.distribute.get_replica_context()
        noisy = inputs + 0.1 * tf.random.stateless_normal(tf.shape(inputs), seed=[7, context.replica_id_in_sync_group])
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=_forward(tf, params, noisy)))
        return tape.gradient(loss, params)

    @tf.function
    def train_step():
        grads = strategy.run(replica_grads)
        for param, grad in zip(params, grads):
            param.assign_sub(0.05 * strategy.reduce("MEAN", grad, axis=None))

    steps = 3
    for _ in range(steps):
        train_step()
    copies = [[v.numpy() for v in strategy.experimental_local_results(p)] for p in params]
    differ = [i for i, c in enumerate(copies) if any((c[0] != other).any() for other in c[1:])]
    if differ:
        raise h.Failed(f"replicas hold different weights after {steps} MirroredStrategy steps "
                       f"(parameters {differ})", **data)
    return h.Outcome(f"MirroredStrategy over {replicas} replica(s) ({', '.join(devices)}): all_reduce agrees "
                     f"({expected:g}); {steps} steps left identical weights on every replica", **data)


def main() -> int:
    args = h.parse_args("tensorflow")
    smoke = h.Smoke("tensorflow", args)
    state = State()
    checks = {"import": check_import, "devices": check_devices, "kernels": check_kernels,
              "training": check_training, "mixed_precision": check_mixed_precision,
              "determinism": check_determinism, "throughput": check_throughput, "distributed": check_distributed}
    return smoke.run_all(state, checks)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's INFO lines only bury the report's context
    sys.exit(main())
