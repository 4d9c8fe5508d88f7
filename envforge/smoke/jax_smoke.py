"""envforge smoke test for JAX: train a tiny model for real and report what works.

Run inside the target environment: `python jax_smoke.py [--device auto|cpu|cuda] [--distributed]`.
Prints one JSON report on stdout (see _harness.py). Needs only jax and jaxlib (and numpy, which
jax depends on): the optimizer is written out, not taken from optax.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any

import _harness as h  # type: ignore[import-not-found]  # a sibling file, not envforge

COMPANIONS = ("jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt",
              "jax-rocm7-plugin", "flax", "optax", "numpy", "ml-dtypes")
LEARNING_RATE = 1e-2


class State:
    """What the checks learn and pass on: the module, and the device(s) the rest runs on."""

    def __init__(self) -> None:
        self.jax: Any = None
        self.device = "cpu"  # "cuda" or "cpu"
        self.devices: list[Any] = []  # jax Device objects


def check_import(smoke: h.Smoke, state: State) -> h.Outcome:
    start = time.perf_counter()
    import jax  # type: ignore[import-not-found]
    import jaxlib  # type: ignore[import-not-found]

    state.jax = jax
    seconds = time.perf_counter() - start
    versions = h.package_versions(COMPANIONS + tuple(smoke.args.report_version))
    versions.update(jax=jax.__version__, jaxlib=getattr(jaxlib, "__version__", versions.get("jaxlib")))
    cuda, cudnn = _cuda_versions()
    smoke.info.update(version=jax.__version__, cuda=cuda, cudnn=cudnn)
    data = {"versions": versions, "import_s": round(seconds, 3), "cuda": cuda, "cudnn": cudnn}
    plugins = ", ".join(f"{k} {v}" for k, v in versions.items() if "plugin" in k)
    return h.Outcome(f"jax {jax.__version__}, jaxlib {versions['jaxlib']}" + (f", {plugins}" if plugins else "")
                     + f" imported in {seconds:.1f} s", **data)


def _numpy() -> Any:
    """numpy, which jax depends on (host-side data and the float64 reference)."""
    import numpy  # type: ignore[import-not-found]

    return numpy


def _cuda_versions() -> tuple[str | None, str | None]:
    """CUDA runtime and cuDNN versions from the CUDA plugin that jaxlib loaded (None without one)."""
    try:
        # Private, but what jax's own version checks read.
        from jax._src.lib import cuda_versions  # type: ignore[import-not-found]
    except ImportError:
        return None, None
    if cuda_versions is None:
        return None, None
    try:
        runtime = cuda_versions.cuda_runtime_get_version()  # 12040 -> 12.4
        cudnn = cuda_versions.cudnn_get_version()  # 90100 -> 9.1.0
    except Exception:  # noqa: BLE001 - the plugin is there but its libraries did not load
        return None, None
    return (f"{runtime // 1000}.{runtime % 1000 // 10}",
            f"{cudnn // 10000}.{cudnn // 100 % 100}.{cudnn % 100}" if cudnn >= 10000 else str(cudnn))


def check_devices(smoke: h.Smoke, state: State) -> h.Outcome:
    jax = state.jax
    gpus, why = [], None
    try:
        found = jax.devices("gpu")
    except RuntimeError as exc:  # "Unknown backend: 'gpu' requested, but no platforms ... are present"
        found, why = [], h.describe_exception(exc)
    for index, device in enumerate(found):
        gpus.append({"index": index, "name": device.device_kind, "arch": getattr(device, "compute_capability", None),
                     "platform": device.platform})
    data = {"accelerator": "rocm" if any(d.platform == "rocm" for d in found) else "cuda", "gpus": gpus,
            "cuda": smoke.info.get("cuda"), "cudnn": smoke.info.get("cudnn"),
            "default_backend": jax.default_backend()}
    if gpus and smoke.args.device != "cpu":
        state.device, state.devices = "cuda", list(found)
        names = ", ".join(f"{g['name']} (sm_{str(g['arch'] or '?').replace('.', '')})" for g in gpus)
        return h.Outcome(f"{len(gpus)} GPU(s): {names}; CUDA {data['cuda']}, cuDNN {data['cudnn']}", **data)
    state.device, state.devices = "cpu", jax.devices("cpu")
    plugins = [k for k in h.package_versions(COMPANIONS) if "plugin" in k]
    if not gpus and not plugins:
        why = "jaxlib is CPU-only here: no jax CUDA plugin is installed (pip install 'jax[cuda12]')"
    elif gpus:
        why = "--device cpu"
    data["no_gpu_reason"] = why
    if smoke.args.device == "cuda":
        raise h.Failed(f"JAX sees no GPU: {why}", **data)
    return h.Outcome(f"no GPU visible to JAX ({why}): running on CPU", **data)


def _conv_reference(x, w):
    """3x3 'SAME' convolution (NCHW x OIHW) in float64 numpy: the CPU reference."""
    np = _numpy()

    n, c, height, width = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], height, width))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", padded[:, :, i:i + height, j:j + width], w[:, :, i, j])
    return out


def _conv(jax, x, w, precision=None):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                        precision=precision)


def check_kernels(smoke: h.Smoke, state: State) -> h.Outcome:
    np = _numpy()

    jax = state.jax
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((128, 96)).astype(np.float32), rng.standard_normal((96, 64)).astype(np.float32)
    x, w = rng.standard_normal((2, 3, 16, 16)).astype(np.float32), rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    mm_ref = (a.astype(np.float64) @ b.astype(np.float64)).reshape(-1).tolist()
    conv_ref = _conv_reference(x.astype(np.float64), w.astype(np.float64)).reshape(-1).tolist()
    highest = jax.lax.Precision.HIGHEST  # full float32: no TF32/bf16 passes on GPUs
    per_device, failures = {}, []
    for device in state.devices:
        da, db, dx, dw = (jax.device_put(v, device) for v in (a, b, x, w))
        mm = jax.numpy.matmul(da, db, precision=highest)
        conv = _conv(jax, dx, dw, precision=highest)
        placed = {str(d) for d in mm.devices()} | {str(d) for d in conv.devices()}
        if placed != {str(device)}:
            failures.append(f"ops asked for {device} ran on {', '.join(sorted(placed))}")
        errors = {"matmul": h.relative_error(np.asarray(mm).reshape(-1).tolist(), mm_ref),
                  "conv2d": h.relative_error(np.asarray(conv).reshape(-1).tolist(), conv_ref)}
        per_device[str(device)] = errors
        failures += h.kernel_failures(device, errors)
    return h.kernel_outcome(per_device, failures, "cuDNN" if state.device == "cuda" else "XLA CPU",
                            [str(d) for d in state.devices])


# --------------------------------------------------------------------------- the tiny model


def _make(jax, seed: int, device):
    """Weights and the synthetic data set, made with numpy on the host and put on `device`.

    jax.random would compile its generator (threefry) first: seconds on XLA's CPU backend, for no gain here.
    """
    np = _numpy()

    rng = np.random.default_rng(seed)

    def init(shape, fan_in):
        return (rng.standard_normal(shape) * (2.0 / fan_in) ** 0.5).astype(np.float32)

    params = {"conv_w": init((8, 1, 3, 3), 9), "conv_b": np.zeros(8, np.float32),
              "w1": init((8 * 8 * 8, 32), 512), "b1": np.zeros(32, np.float32),
              "w2": init((32, 2), 32), "b2": np.zeros(2, np.float32)}
    inputs = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    # A rule the model can learn: is the top half of the image brighter than the bottom half?
    labels = (inputs[:, 0, :4].sum(axis=(1, 2)) > inputs[:, 0, 4:].sum(axis=(1, 2))).astype(np.int32)
    return jax.device_put((params, inputs, labels), device)


def _zeros(jax, params):
    np = _numpy()

    return jax.device_put(jax.tree_util.tree_map(lambda p: np.zeros(p.shape, np.float32), params),
                          next(iter(jax.tree_util.tree_leaves(params)[0].devices())))


def _logits(jax, params, inputs, dtype=None):
    if dtype is not None:  # mixed precision: compute in the low dtype, keep float32 master weights
        params = jax.tree_util.tree_map(lambda p: p.astype(dtype), params)
        inputs = inputs.astype(dtype)
    hidden = jax.nn.relu(_conv(jax, inputs, params["conv_w"]) + params["conv_b"][None, :, None, None])
    hidden = hidden.reshape(hidden.shape[0], -1)
    hidden = jax.nn.relu(hidden @ params["w1"] + params["b1"])
    return hidden @ params["w2"] + params["b2"]


def _loss(jax, params, inputs, labels, dtype=None):
    jnp = jax.numpy
    log_probs = jax.nn.log_softmax(_logits(jax, params, inputs, dtype).astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


@functools.lru_cache(maxsize=None)
def _make_step(jax, dtype=None, loss_scale: float = 1.0):
    """A jitted Adam step (written out: no optax): (params, moments, inputs, labels, t, lr) -> (params, moments,
    loss). Cached, so training and the determinism runs share one compilation."""
    jnp = jax.numpy
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def step(params, moments, inputs, labels, t, lr):
        def scaled(p):
            loss = _loss(jax, p, inputs, labels, dtype)
            return loss * loss_scale, loss

        grads, loss = jax.grad(scaled, has_aux=True)(params)
        grads = jax.tree_util.tree_map(lambda g: g.astype(jnp.float32) / loss_scale, grads)
        m, v = moments
        m = jax.tree_util.tree_map(lambda m_, g: beta1 * m_ + (1 - beta1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v_, g: beta2 * v_ + (1 - beta2) * g * g, v, grads)
        params = jax.tree_util.tree_map(
            lambda p, m_, v_: p - lr * (m_ / (1 - beta1 ** t)) / (jnp.sqrt(v_ / (1 - beta2 ** t)) + eps),
            params, m, v)
        return params, (m, v), loss

    return jax.jit(step)


def train(jax, device, steps: int, lr: float, seed: int = 0):
    """Full-batch Adam on the synthetic set; returns (losses, seconds for steps 2..n, devices of the loss)."""
    params, inputs, labels = _make(jax, seed, device)
    moments = (_zeros(jax, params), _zeros(jax, params))
    step = _make_step(jax)
    losses = []
    start = time.perf_counter()
    loss: Any = None
    for index in range(steps):
        if index == 1:
            start = time.perf_counter()  # the first step pays for compilation
        params, moments, loss = step(params, moments, inputs, labels, float(index + 1), lr)
        losses.append(float(loss))
    return losses, time.perf_counter() - start, {str(d) for d in loss.devices()}


def check_training(smoke: h.Smoke, state: State) -> h.Outcome:
    steps = max(2, smoke.args.steps)
    device = state.devices[0]
    losses, seconds, placed = train(state.jax, device, steps, smoke.args.lr or LEARNING_RATE)
    if placed != {str(device)}:
        raise h.Failed(f"training asked for {device} ran on {', '.join(sorted(placed))}", placed=sorted(placed))
    return h.training_outcome(losses, steps, seconds, str(device))


def _bf16_supported(device) -> bool:
    arch = getattr(device, "compute_capability", None)
    if device.platform != "gpu" or not arch:
        return True
    return tuple(int(p) for p in str(arch).split(".")) >= (8, 0)  # bfloat16 tensor cores from Ampere on


def check_mixed_precision(smoke: h.Smoke, state: State) -> h.Outcome:
    jax = state.jax
    jnp = jax.numpy
    device = state.devices[0]
    bf16 = _bf16_supported(device)
    dtype, loss_scale = (jnp.bfloat16, 1.0) if bf16 else (jnp.float16, 1024.0)  # fp16 needs loss scaling
    label = "bfloat16" if bf16 else "float16"
    params, inputs, labels = _make(jax, 0, device)
    zeros = _zeros(jax, params)
    logits_dtype = jax.eval_shape(functools.partial(_logits, jax, dtype=dtype), params, inputs).dtype
    new, _, loss = _make_step(jax, dtype, loss_scale)(params, (zeros, zeros), inputs, labels, 1.0, LEARNING_RATE)
    value = float(loss)
    data = {"dtype": label, "loss": value, "device": str(device), "loss_scale": loss_scale}
    if logits_dtype != dtype:
        raise h.Failed(f"the {label} forward pass produced {logits_dtype}: the low-precision path did not engage",
                       **data)
    leaves_new, leaves_old = jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(params)
    finite = all(bool(jnp.isfinite(p).all()) for p in leaves_new)
    changed = any(bool((a != b).any()) for a, b in zip(leaves_new, leaves_old))
    return h.one_step_outcome(f"{label} training step", device, value, finite, changed, data)


def check_determinism(smoke: h.Smoke, state: State) -> h.Outcome:
    device = state.devices[0]
    switches = ["JAX defaults (no switch): XLA_FLAGS=" + os.environ.get("XLA_FLAGS", "")]
    first, second = (train(state.jax, device, h.DETERMINISM_STEPS, LEARNING_RATE, seed=1)[0] for _ in range(2))
    hint = (" (on GPUs, XLA_FLAGS=--xla_gpu_deterministic_ops=true makes XLA pick deterministic kernels)"
            if state.device == "cuda" else "")
    return h.same_losses([first, second], str(device), switches, hint)


def check_throughput(smoke: h.Smoke, state: State) -> h.Outcome:
    np = _numpy()

    jax = state.jax
    jnp = jax.numpy
    results = []
    highest = jax.lax.Precision.HIGHEST  # float32 as float32 (no TF32), as the other frameworks measure it
    devices = state.devices if state.device == "cuda" else state.devices[:1]
    for device in devices:
        gpu = state.device == "cuda"
        plan = [("fp32", jnp.float32, 256)]
        if gpu:
            low = ("bf16", jnp.bfloat16) if _bf16_supported(device) else ("fp16", jnp.float16)
            plan = [("fp32", jnp.float32, 4096), (*low, 8192)]
        row: dict[str, Any] = {"device": str(device)}
        if gpu:
            row["name"] = device.device_kind
        for label, dtype, n in plan:
            rng = np.random.default_rng(1)
            a, b = (jax.device_put(rng.standard_normal((n, n), dtype=np.float32), device).astype(dtype)
                    for _ in range(2))
            matmul = jax.jit(lambda x, y: jnp.matmul(x, y, precision=highest))
            matmul(a, b).block_until_ready()  # warm-up: compiles
            last: list[Any] = [None]
            iters, seconds = h.timed_rate(lambda: last.__setitem__(0, matmul(a, b)), 0.5 if gpu else 0.3, 5000,
                                          sync=lambda: last[0].block_until_ready())
            row[f"{label}_tflops"] = h.tflops(n, iters, seconds)
            row[f"{label}_size"] = n
        results.append(row)
    return h.Outcome(h.throughput_detail(results), devices=results, tf32=False)


def check_distributed(smoke: h.Smoke, state: State) -> h.Outcome:
    jax = state.jax
    jnp = jax.numpy
    devices = state.devices
    count = len(devices)
    summed = jax.pmap(lambda x: jax.lax.psum(x, "i"), axis_name="i", devices=devices)(jnp.arange(1.0, count + 1))
    expected = count * (count + 1) / 2
    values = [float(v) for v in summed]
    data = {"replicas": count, "devices": [str(d) for d in devices], "psum": values}
    if any(v != expected for v in values):
        raise h.Failed(f"psum disagrees: replicas got {values}, expected {expected}", **data)
    np = _numpy()

    # Host copies: pmap places one slice of each stacked array on each device.
    params, inputs, labels = jax.tree_util.tree_map(np.asarray, _make(jax, 0, devices[0]))
    rng = np.random.default_rng(7)
    shards = np.stack([inputs + 0.1 * rng.standard_normal(inputs.shape, dtype=np.float32) for _ in range(count)])

    def step(p, x):
        grads = jax.grad(lambda q: _loss(jax, q, x, labels))(p)
        grads = jax.lax.pmean(grads, "i")  # the all-reduce of data-parallel training
        return jax.tree_util.tree_map(lambda a, g: a - 0.05 * g, p, grads)

    replicated = jax.tree_util.tree_map(lambda p: np.stack([p] * count), params)
    parallel = jax.pmap(step, axis_name="i", devices=devices)
    steps = 3
    for _ in range(steps):
        replicated = parallel(replicated, shards)
    differ = [name for name, stacked in replicated.items()
              if any(bool((stacked[0] != stacked[i]).any()) for i in range(1, count))]
    if differ:
        raise h.Failed(f"replicas hold different weights after {steps} pmap steps ({', '.join(differ)})", **data)
    return h.Outcome(f"pmap over {count} device(s) ({', '.join(str(d) for d in devices)}): psum agrees "
                     f"({expected:g}); {steps} data-parallel steps left identical weights on every replica", **data)


def main() -> int:
    args = h.parse_args("jax")
    if args.distributed:
        # pmap needs several devices; on a CPU, XLA can present it as N. Read when the CPU backend starts.
        count = max(1, args.nproc or 2)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={count}").strip()
    smoke = h.Smoke("jax", args)
    state = State()
    checks = {"import": check_import, "devices": check_devices, "kernels": check_kernels,
              "training": check_training, "mixed_precision": check_mixed_precision,
              "determinism": check_determinism, "throughput": check_throughput, "distributed": check_distributed}
    return smoke.run_all(state, checks)


if __name__ == "__main__":
    sys.exit(main())
