"""envforge smoke test for PyTorch: train a tiny model for real and report what works.

Run inside the target environment: `python torch_smoke.py [--device auto|cpu|cuda] [--distributed]`.
Prints one JSON report on stdout (see _harness.py). Needs only torch (numpy is not used).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

# cuBLAS needs a fixed workspace for deterministic matmuls on CUDA >= 10.2; it is read when the
# cuBLAS handle is created, so it is set before torch is imported.
# https://docs.nvidia.com/cuda/cublas/index.html#results-reproducibility
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import _harness as h  # type: ignore[import-not-found]  # noqa: E402  (a sibling file, not envforge)

COMPANIONS = ("torchvision", "torchaudio")
LEARNING_RATE = 1e-2


class State:
    """What the checks learn and pass on: the module, and the device(s) the rest runs on."""

    def __init__(self) -> None:
        self.torch: Any = None
        self.device = "cpu"  # "cuda" or "cpu"
        self.devices: list[str] = []  # cuda:0, cuda:1 ... or cpu


def check_import(smoke: h.Smoke, state: State) -> h.Outcome:
    start = time.perf_counter()
    import torch  # type: ignore[import-not-found]

    state.torch = torch
    seconds = time.perf_counter() - start
    versions = {"torch": torch.__version__}
    installed = h.package_versions(COMPANIONS + ("numpy", "triton") + tuple(smoke.args.report_version))
    problems = []
    for name in COMPANIONS:
        if name not in installed:
            continue
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", installed[name])
        except Exception as exc:  # noqa: BLE001 - e.g. torchvision built for another torch release
            problems.append(f"{name} {installed[name]} does not import: {h.describe_exception(exc)}")
    versions.update({k: v for k, v in installed.items() if k not in versions})
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    smoke.info.update(version=torch.__version__, cuda=torch.version.cuda, hip=getattr(torch.version, "hip", None),
                      cudnn=_cudnn_text(cudnn))
    data = {"versions": versions, "import_s": round(seconds, 3), "cuda": torch.version.cuda,
            "cudnn": _cudnn_text(cudnn)}
    if problems:
        raise h.Failed("; ".join(problems), **data)
    companions = ", ".join(f"{k} {v}" for k, v in versions.items() if k in COMPANIONS)
    return h.Outcome(f"torch {torch.__version__}" + (f" with {companions}" if companions else "")
                     + f" imported in {seconds:.1f} s", **data)


def _cudnn_text(version: int | None) -> str | None:
    """torch reports cuDNN as an int: 8907 (8.9.7) before cuDNN 9, 90100 (9.1.0) from 9 on."""
    if not version:
        return None
    if version >= 90000:
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    return f"{version // 1000}.{version // 100 % 10}.{version % 100}"


def check_devices(smoke: h.Smoke, state: State) -> h.Outcome:
    torch = state.torch
    gpus = []
    arch_list = list(torch.cuda.get_arch_list()) if hasattr(torch.cuda, "get_arch_list") else []
    available = torch.cuda.is_available()
    if available:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"index": index, "name": props.name, "arch": f"{props.major}.{props.minor}",
                         "memory_mib": int(props.total_memory // (1024 * 1024))})
    data = {"accelerator": "rocm" if getattr(torch.version, "hip", None) else "cuda", "gpus": gpus,
            "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None),
            "cudnn": smoke.info.get("cudnn"), "arch_list": arch_list}
    warnings = [w for w in (_arch_warning(g, arch_list) for g in gpus) if w]
    if gpus and smoke.args.device != "cpu":
        state.device = "cuda"
        state.devices = [f"cuda:{g['index']}" for g in gpus]
        names = ", ".join(f"{g['name']} (sm_{g['arch'].replace('.', '')})" for g in gpus)
        return h.Outcome(f"{len(gpus)} GPU(s): {names}; CUDA {torch.version.cuda}, cuDNN {smoke.info.get('cudnn')}",
                         warnings, **data)
    state.device, state.devices = "cpu", ["cpu"]
    why = _no_gpu_reason(torch) if not gpus else "--device cpu"
    data["no_gpu_reason"] = why
    if smoke.args.device == "cuda":
        raise h.Failed(f"torch sees no CUDA device: {why}", **data)
    return h.Outcome(f"no GPU visible to torch ({why}): running on CPU", warnings, **data)


def _no_gpu_reason(torch) -> str:
    if not torch.version.cuda and not getattr(torch.version, "hip", None):
        return f"torch {torch.__version__} is a CPU-only build"
    try:
        torch.cuda.init()  # raises with the driver's explanation where is_available() just says False
    except Exception as exc:  # noqa: BLE001
        return h.describe_exception(exc)
    return "torch.cuda.is_available() is False"


def _arch_warning(gpu: dict, arch_list: list[str]) -> str | None:
    """A GPU whose compute capability has neither SASS in the build nor PTX it can JIT gets 'no kernel image'."""
    if not arch_list:
        return None
    major, minor = (int(p) for p in gpu["arch"].split("."))
    cap = major * 10 + minor
    for entry in arch_list:
        kind, _, number = entry.partition("_")
        digits = int("".join(c for c in number if c.isdigit()) or 0)
        if kind == "sm" and digits // 10 == major and digits % 10 <= minor:
            return None
        if kind == "compute" and digits <= cap:
            return None
    return (f"{gpu['name']} is sm_{cap}, which this torch build has no kernels for (arch list: "
            f"{' '.join(arch_list)}): expect 'no kernel image is available for execution on the device'")


class _NoTF32:
    """TF32 off, so float32 on a GPU is compared with the reference at float32 accuracy."""

    def __init__(self, torch) -> None:
        self.torch = torch

    def __enter__(self) -> None:
        backends = self.torch.backends
        self.saved = (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32)
        backends.cuda.matmul.allow_tf32 = False
        backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc: object) -> None:
        self.torch.backends.cuda.matmul.allow_tf32, self.torch.backends.cudnn.allow_tf32 = self.saved


def check_kernels(smoke: h.Smoke, state: State) -> h.Outcome:
    torch = state.torch
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(128, 96, generator=gen), torch.randn(96, 64, generator=gen)
    x, w = torch.randn(2, 3, 16, 16, generator=gen), torch.randn(8, 3, 3, 3, generator=gen)
    mm_ref = (a.double() @ b.double()).flatten().tolist()
    conv_ref = F.conv2d(x.double(), w.double(), padding=1).flatten().tolist()
    per_device, failures = {}, []
    with _NoTF32(torch):
        for device in state.devices:
            mm = (a.to(device) @ b.to(device)).cpu().flatten().tolist()
            conv = F.conv2d(x.to(device), w.to(device), padding=1).cpu().flatten().tolist()
            errors = {"matmul": h.relative_error(mm, mm_ref), "conv2d": h.relative_error(conv, conv_ref)}
            per_device[device] = errors
            failures += h.kernel_failures(device, errors)
    cudnn = None
    if state.device == "cuda":
        cudnn = bool(torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled)
        if not cudnn:
            failures.append("cuDNN is not available to torch: convolutions do not run on cuDNN")
    return h.kernel_outcome(per_device, failures, "cuDNN" if cudnn else "CPU kernels", state.devices, cudnn=cudnn)


def _model_and_data(torch, device: str, seed: int):
    nn = torch.nn
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 2),
    ).to(device)
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(64, 1, 8, 8, generator=gen)
    # A rule the model can learn: is the top half of the image brighter than the bottom half?
    labels = (inputs[:, 0, :4].sum(dim=(1, 2)) > inputs[:, 0, 4:].sum(dim=(1, 2))).long()
    return model, inputs.to(device), labels.to(device)


def train(torch, device: str, steps: int, lr: float, seed: int = 0) -> tuple[list[float], float]:
    """Full-batch Adam on the synthetic set; returns (losses, seconds for steps 2..n)."""
    model, inputs, labels = _model_and_data(torch, device, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    start = time.perf_counter()
    for step in range(steps):
        if step == 1:
            _sync(torch, device)
            start = time.perf_counter()  # the first step pays for lazy initialisation
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    _sync(torch, device)
    return losses, time.perf_counter() - start


def _sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_training(smoke: h.Smoke, state: State) -> h.Outcome:
    steps = max(2, smoke.args.steps)
    losses, seconds = train(state.torch, state.devices[0], steps, smoke.args.lr or LEARNING_RATE)
    return h.training_outcome(losses, steps, seconds, state.devices[0])


def check_mixed_precision(smoke: h.Smoke, state: State) -> h.Outcome:
    torch = state.torch
    device = state.devices[0]
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if kind == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16  # CPU autocast supports bfloat16 only
    model, inputs, labels = _model_and_data(torch, device, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    scaler = None
    if dtype == torch.float16:  # fp16 needs loss scaling; bf16 has float32's range
        scaler = torch.amp.GradScaler("cuda") if hasattr(torch.amp, "GradScaler") else torch.cuda.amp.GradScaler()
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast(device_type=kind, dtype=dtype):
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits, labels)
    if logits.dtype != dtype:
        raise h.Failed(f"autocast({kind}, {dtype}) left the model's output in {logits.dtype}: the low-precision "
                       "path did not engage", dtype=str(dtype))
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    value = loss.item()
    changed = any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    data = {"dtype": str(dtype).replace("torch.", ""), "loss": value, "device": device, "loss_scaling": bool(scaler)}
    return h.one_step_outcome(f"{data['dtype']} autocast training step", device, value, finite, changed, data,
                              failed_as=f"{data['dtype']} autocast step")


def check_determinism(smoke: h.Smoke, state: State) -> h.Outcome:
    torch = state.torch
    device = state.devices[0]
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    switches = ["torch.use_deterministic_algorithms(True)", "cudnn.deterministic=True", "cudnn.benchmark=False"]
    try:
        runs = [train(torch, device, h.DETERMINISM_STEPS, LEARNING_RATE, seed=1)[0] for _ in range(2)]
    except RuntimeError as exc:
        op = h.nondeterministic_op(str(exc))
        if op:
            raise h.Failed(f"{op} has no deterministic implementation on {device}", op=op,
                           switches=switches) from None
        raise
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]
    return h.same_losses(runs, device, switches)



def check_throughput(smoke: h.Smoke, state: State) -> h.Outcome:
    torch = state.torch
    results = []
    with _NoTF32(torch):
        for device in state.devices:
            if device == "cpu":
                plan = [("fp32", torch.float32, 256)]
            else:
                low = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                plan = [("fp32", torch.float32, 4096), ("bf16" if low == torch.bfloat16 else "fp16", low, 8192)]
            row: dict[str, Any] = {"device": device}
            if device != "cpu":
                row["name"] = torch.cuda.get_device_name(device)
            for label, dtype, n in plan:
                a = torch.randn(n, n, device=device).to(dtype)
                b = torch.randn(n, n, device=device).to(dtype)
                a @ b  # warm-up: picks the kernel
                sync = (lambda: torch.cuda.synchronize(device)) if device != "cpu" else None
                iters, seconds = h.timed_rate(lambda: a @ b, 0.3 if device == "cpu" else 0.5, 5000, sync=sync)
                row[f"{label}_tflops"] = h.tflops(n, iters, seconds)
                row[f"{label}_size"] = n
            results.append(row)
    threads = f" ({torch.get_num_threads()} threads)" if state.device == "cpu" else ""
    return h.Outcome(h.throughput_detail(results) + threads, devices=results, tf32=False)


# --------------------------------------------------------------------------- distributed


def check_distributed(smoke: h.Smoke, state: State) -> h.Outcome:
    torch = state.torch
    cuda = state.device == "cuda"
    world = len(state.devices) if cuda else max(1, smoke.args.nproc or 2)
    backend = "nccl" if cuda else "gloo"
    if not torch.distributed.is_available():
        raise h.Failed(f"torch {torch.__version__} was built without torch.distributed")
    timeout = h.check_timeout("distributed", smoke.args.timeout) - 10
    with tempfile.TemporaryDirectory(prefix="envforge-ddp-") as outdir:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
               os.path.abspath(__file__), "--worker", outdir, "--device", state.device]
        env = dict(os.environ)
        if not cuda:  # each rank gets its share of the CPUs instead of all of them
            env["OMP_NUM_THREADS"] = str(max(1, h.cpu_threads() // world))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=max(10.0, timeout))
        except subprocess.TimeoutExpired:
            raise h.Failed(f"torchrun with {world} {backend} rank(s) did not finish within {timeout:.0f} s "
                           "(a hang at the first collective is the classic NCCL failure: try NCCL_DEBUG=INFO, "
                           "NCCL_P2P_DISABLE=1, a larger /dev/shm)", world_size=world, backend=backend) from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        text = output.decode(errors="replace")
        ranks = []
        for rank in range(world):
            path = os.path.join(outdir, f"rank{rank}.json")
            if os.path.exists(path):
                with open(path) as handle:
                    ranks.append(json.load(handle))
    data = {"world_size": world, "backend": backend, "ranks": ranks}
    if proc.returncode != 0 or len(ranks) != world:
        tail = "\n".join(text.strip().splitlines()[-15:])
        raise h.Failed(f"torchrun with {world} {backend} rank(s) failed (exit {proc.returncode}, "
                       f"{len(ranks)} of {world} ranks reported)", output_tail=tail, **data)
    expected = world * (world + 1) / 2
    if any(r["all_reduce"] != expected for r in ranks):
        raise h.Failed(f"all_reduce disagrees: ranks got {[r['all_reduce'] for r in ranks]}, expected {expected}",
                       **data)
    checksums = {r["checksum"] for r in ranks}
    if len(checksums) != 1:
        raise h.Failed(f"ranks hold different weights after DDP training: {sorted(checksums)}", **data)
    steps = ranks[0]["steps"]
    return h.Outcome(f"{world} rank(s) over {backend}: all_reduce agrees ({expected:g}); {steps} DDP steps left "
                     "identical weights on every rank", **data)


def worker(args) -> int:
    """One torchrun rank: an all_reduce, then DDP training; writes rank{N}.json into args.worker."""
    from datetime import timedelta

    import torch  # type: ignore[import-not-found]
    import torch.distributed as dist  # type: ignore[import-not-found]

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    device = f"cuda:{local_rank}" if cuda else "cpu"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=120))
    value = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(value)
    model, inputs, labels = _model_and_data(torch, device, seed=0)  # same init on every rank
    gen = torch.Generator().manual_seed(100 + rank)  # ... and different data
    inputs = inputs + 0.1 * torch.randn(inputs.shape, generator=gen).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
    steps, losses = 5, []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(ddp(inputs), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
    result = {"rank": rank, "all_reduce": value.item(), "checksum": repr(checksum), "losses": losses,
              "steps": steps, "device": device}
    dist.barrier()
    dist.destroy_process_group()
    with open(os.path.join(args.worker, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)
    return 0


def _threads_for(torch, state: State, name: str) -> None:
    """On a CPU, the tiny model runs fastest on one thread (thread hand-offs cost more than its ops: 10x
    on a 2-core machine); the throughput check gets every CPU the process may use."""
    if state.device == "cpu":
        torch.set_num_threads(h.cpu_threads() if name == "throughput" else 1)


def main() -> int:
    args = h.parse_args("torch")
    if args.worker:
        return worker(args)
    smoke = h.Smoke("torch", args)
    state = State()
    checks = {"import": check_import, "devices": check_devices, "kernels": check_kernels,
              "training": check_training, "mixed_precision": check_mixed_precision,
              "determinism": check_determinism, "throughput": check_throughput, "distributed": check_distributed}

    def threads(name: str) -> None:
        if state.torch is not None:
            _threads_for(state.torch, state, name)

    return smoke.run_all(state, checks, before_each=threads)


if __name__ == "__main__":
    sys.exit(main())
