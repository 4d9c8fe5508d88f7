"""`envforge smoke`: the real scripts, run for real on CPU in real torch / jax / tensorflow-cpu venvs.

Each framework gets its own venv, built once per session by a fixture (torch 2.13.0 is the CPU
build on this machine's disk, reached through the machine's own pip configuration; jax and
tensorflow-cpu come from PyPI). Builds start together, in the background, for every venv a
selected test needs. Where a venv cannot be built (no network), its tests are skipped, saying why.

No GPU here: the GPU-side judgements (host probe vs. what the framework sees, datasheet peaks) are
exercised with the fake libnvidia-ml.so.1 of tests/fakes and with reports shaped like a GPU run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import venv
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from envforge.models import Gpu, HostFacts  # noqa: E402
from envforge.smoke import _harness, judge, run  # noqa: E402
from tests.fakes.nvml import machine_env  # noqa: E402

# What each venv installs. torch==2.13.0 resolves to the CPU wheel in the machine's find-links
# (/opt/wheels): its pip configuration is deliberately *not* isolated for these installs. Any other
# torch from PyPI is a multi-GB CUDA build: never install one here.
VENVS = {
    "torch": ["torch==2.13.0"],
    "jax": ["jax==0.10.2"],
    "tensorflow": ["tensorflow-cpu==2.21.0"],
}
FIXTURE_FOR = {"torch_python": "torch", "jax_python": "jax", "tf_python": "tensorflow"}
BUILD_TIMEOUT_S = 1200
RUN_TIMEOUT_S = 300


# --------------------------------------------------------------------------- venvs, built in the background


class VenvBuilder:
    """Builds each framework venv once, concurrently; build(name) waits for that one."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.pool = ThreadPoolExecutor(max_workers=len(VENVS))
        self.futures: dict[str, Future[Path]] = {}
        self.lock = threading.Lock()

    def submit(self, name: str) -> Future[Path]:
        with self.lock:
            if name not in self.futures:
                self.futures[name] = self.pool.submit(self._build, name)
            return self.futures[name]

    def python(self, name: str) -> str:
        try:
            return str(self.submit(name).result(timeout=BUILD_TIMEOUT_S))
        except VenvUnavailable as exc:
            pytest.skip(str(exc))

    def _build(self, name: str) -> Path:
        target = self.root / name
        venv.EnvBuilder(with_pip=True, symlinks=True).create(target)
        python = target / "bin" / "python"
        cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *VENVS[name]]
        try:
            proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise VenvUnavailable(f"pip install {' '.join(VENVS[name])} took over {BUILD_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if "is ignored" not in line]
            raise VenvUnavailable(f"cannot build the {name} venv (no network or no such release?): pip install "
                                  f"{' '.join(VENVS[name])} failed: {' | '.join(lines[-3:])}")
        return python


class VenvUnavailable(Exception):
    pass


def _install_env() -> dict[str, str]:
    """The environment pip runs in: this machine's own pip configuration (find-links, mirrors) applies."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_CONFIG_FILE", "PIP_REQUIRE_VIRTUALENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="session")
def venvs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> VenvBuilder:
    builder = VenvBuilder(tmp_path_factory.mktemp("smoke-venvs"), _install_env())
    wanted = {FIXTURE_FOR[f] for item in request.session.items for f in getattr(item, "fixturenames", ())
              if f in FIXTURE_FOR}
    for name in VENVS:  # in a fixed order, every one a selected test needs
        if name in wanted:
            builder.submit(name)
    yield builder
    builder.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def torch_python(venvs: VenvBuilder) -> str:
    return venvs.python("torch")


@pytest.fixture(scope="session")
def jax_python(venvs: VenvBuilder) -> str:
    return venvs.python("jax")


@pytest.fixture(scope="session")
def tf_python(venvs: VenvBuilder) -> str:
    return venvs.python("tensorflow")


# --------------------------------------------------------------------------- running envforge smoke


class Smoke:
    """`python -m envforge smoke ARGS` in a subprocess: exit code, parsed stdout (with --json), stderr, wall time."""

    def __init__(self, code: int, stdout: str, stderr: str, seconds: float) -> None:
        self.code, self.stdout, self.stderr, self.seconds = code, stdout, stderr, seconds
        try:
            self.doc: Any = json.loads(stdout)
        except ValueError:
            self.doc = None

    def checks(self, framework: str | None = None) -> dict[str, dict]:
        runs = self.doc["frameworks"]
        found = next(r for r in runs if framework is None or r["framework"] == framework)
        return {c["name"]: c for c in found["checks"]}

    def __repr__(self) -> str:
        return (f"exit {self.code} after {self.seconds:.1f} s\nstdout: {self.stdout[-3000:]}\n"
                f"stderr: {self.stderr[-3000:]}")


def smoke(*args: str, env: dict[str, str] | None = None) -> Smoke:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PIP_", "UV_", "CONDA_", "ENVFORGE_", "FAKE_NVML")) and k not in
            ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "PYTHONPATH")}
    base.update(env or {})
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "envforge", "smoke", *args], cwd=REPO, env=base,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    return Smoke(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)


REQUIRED = ("import", "devices", "kernels", "training", "mixed_precision", "determinism", "throughput")


def assert_passed_on_cpu(result: Smoke, framework: str, version: str) -> None:
    assert result.code == 0, result
    doc = result.doc
    assert doc["ok"] is True
    assert doc["notes"] == ["no GPU found: ran on CPU"]
    (ran,) = doc["frameworks"]
    assert ran["framework"] == framework and ran["version"].startswith(version) and ran["ran_on"] == "cpu"
    checks = result.checks()
    assert [c for c in checks] == list(_harness.CHECKS)
    for name in REQUIRED:
        assert checks[name]["status"] == "pass", checks[name]
        assert checks[name]["duration_s"] >= 0
    assert checks["distributed"]["status"] == "skip" and "--distributed" in checks["distributed"]["detail"]
    training = checks["training"]["data"]
    assert training["last_loss"] <= 0.5 * training["first_loss"], training
    assert training["steps_per_s"] > 0 and checks["training"]["duration_s"] > 0
    assert checks["determinism"]["data"]["losses"][0] == checks["determinism"]["data"]["losses"][1]
    assert checks["throughput"]["data"]["devices"][0]["fp32_tflops"] > 0


# --------------------------------------------------------------------------- each framework, for real


def test_torch_passes_on_cpu_with_the_loss_falling(torch_python: str) -> None:
    result = smoke("--python", torch_python, "--expect", "torch==2.13.0", "--json")
    assert_passed_on_cpu(result, "torch", "2.13.0")
    checks = result.checks("torch")
    assert "matches torch==2.13.0" in checks["import"]["detail"]
    assert checks["devices"]["data"]["no_gpu_reason"] == "torch 2.13.0+cpu is a CPU-only build"
    assert checks["mixed_precision"]["data"]["dtype"] == "bfloat16"
    assert "torch.use_deterministic_algorithms(True)" in checks["determinism"]["data"]["switches"]
    assert result.seconds < 60, result  # about 4 s here; generous for a loaded CI machine


def test_jax_passes_on_cpu_with_the_loss_falling(jax_python: str) -> None:
    result = smoke("--python", jax_python, "--expect", "jax==0.10.2", "--expect", "jaxlib==0.10.2", "--json")
    assert_passed_on_cpu(result, "jax", "0.10.2")
    assert "jaxlib is CPU-only" in result.checks("jax")["devices"]["detail"]
    assert result.seconds < 60, result


def test_tensorflow_passes_on_cpu_with_the_loss_falling(tf_python: str) -> None:
    result = smoke("--python", tf_python, "--framework", "tensorflow", "--json")
    assert_passed_on_cpu(result, "tensorflow", "2.21.0")
    assert result.checks("tensorflow")["import"]["data"]["build_info"]["is_cuda_build"] is False
    assert result.seconds < 60, result


def test_human_output_has_a_line_per_check_and_a_verdict(torch_python: str) -> None:
    result = smoke("--python", torch_python, "--skip", "throughput")
    assert result.code == 0, result
    lines = result.stdout.splitlines()
    for name in _harness.CHECKS:
        assert any(line.split()[1:2] == [name] for line in lines if line.startswith("  ")), result.stdout
    assert "note: no GPU found: ran on CPU" in lines
    assert lines[-1].startswith("verdict: PASS: torch 2.13.0+cpu on CPU")


# --------------------------------------------------------------------------- failures with the real frameworks

FAST = ("--skip", "throughput", "--skip", "determinism", "--skip", "mixed_precision")


def test_diverging_training_fails_check_4(torch_python: str) -> None:
    result = smoke("--python", torch_python, "--lr", "1e6", *FAST, "--json")
    assert result.code == 1, result
    checks = result.checks("torch")
    assert checks["training"]["status"] == "fail", checks["training"]
    assert "it must fall by >= 50%" in checks["training"]["detail"] or "diverged" in checks["training"]["detail"]
    assert [n for n, c in checks.items() if c["status"] == "fail"] == ["training"]
    assert result.doc["ok"] is False


def test_diverging_training_fails_for_jax_too(jax_python: str) -> None:
    result = smoke("--python", jax_python, "--lr", "1e6", *FAST, "--json")
    assert result.code == 1, result
    assert result.checks("jax")["training"]["status"] == "fail"


def test_version_mismatch_fails_check_1(torch_python: str) -> None:
    result = smoke("--python", torch_python, "--expect", "torch==2.12.0", *FAST, "--skip", "training", "--json")
    assert result.code == 1, result
    check = result.checks("torch")["import"]
    assert check["status"] == "fail"
    assert "torch 2.13.0+cpu does not match ==2.12.0" in check["detail"]
    assert "pip install torch==2.12.0" in check["fix"]


def test_an_expected_package_that_is_missing_fails_check_1(tf_python: str) -> None:
    result = smoke("--python", tf_python, "--expect", "tensorflow==2.21.0", "--expect", "tensorflow-addons>=0.1",
                   *FAST, "--skip", "training", "--json")
    assert result.code == 1, result
    detail = result.checks("tensorflow")["import"]["detail"]
    assert "tensorflow-addons is not installed" in detail and "2.21.0 does not match" not in detail


def test_an_expected_framework_that_is_not_there_fails_check_1(jax_python: str) -> None:
    result = smoke("--python", jax_python, "--expect", "torch==2.13.0", "--json")
    assert result.code == 1, result
    assert [r["framework"] for r in result.doc["frameworks"]] == ["torch"]
    checks = result.checks("torch")
    assert checks["import"]["status"] == "fail"
    assert checks["import"]["detail"] == "ModuleNotFoundError: No module named 'torch'"
    assert checks["training"]["detail"] == "not run: the devices check did not pass"


def _lock(tmp_path: Path, *targets: dict) -> Path:
    """An envforge.lock.json with the fields smoke reads (as envforge lock writes them)."""
    manifest = {"envforge": "0.1.0", "targets": [
        {"file": f"requirements-{t['variant']}.txt", "framework": "torch", **t} for t in targets]}
    (tmp_path / "envforge.lock.json").write_text(json.dumps(manifest), encoding="utf-8")
    return tmp_path


def test_lock_expectations_pass_when_any_locked_target_is_installed(torch_python: str, tmp_path: Path) -> None:
    lock = _lock(tmp_path,
                 {"version": "2.13.0", "variant": "cu126", "requirements": ["torch==2.13.0+cu126"]},
                 {"version": "2.13.0", "variant": "cpu", "requirements": ["torch==2.13.0+cpu"]})
    result = smoke("--python", torch_python, "--lock", str(lock), *FAST, "--skip", "training", "--json")
    assert result.code == 0, result
    assert "matches torch==2.13.0+cpu" in result.checks("torch")["import"]["detail"]


def test_lock_expectations_fail_on_another_variant(torch_python: str, tmp_path: Path) -> None:
    lock = _lock(tmp_path, {"version": "2.13.0", "variant": "cu126", "requirements": ["torch==2.13.0+cu126"]})
    result = smoke("--python", torch_python, "--lock", str(lock), *FAST, "--skip", "training", "--json")
    assert result.code == 1, result
    assert "does not match ==2.13.0+cu126" in result.checks("torch")["import"]["detail"]


# --------------------------------------------------------------------------- --distributed on CPU


def test_torch_distributed_runs_two_gloo_ranks(torch_python: str) -> None:
    result = smoke("--python", torch_python, "--distributed", *FAST, "--json")
    assert result.code == 0, result
    check = result.checks("torch")["distributed"]
    assert check["status"] == "pass", check
    data = check["data"]
    assert data["world_size"] == 2 and data["backend"] == "gloo"
    assert {r["rank"] for r in data["ranks"]} == {0, 1}
    assert len({r["checksum"] for r in data["ranks"]}) == 1
    assert all(r["all_reduce"] == 3.0 for r in data["ranks"])


def test_jax_distributed_pmaps_over_two_cpu_devices(jax_python: str) -> None:
    result = smoke("--python", jax_python, "--distributed", *FAST, "--json")
    assert result.code == 0, result
    check = result.checks("jax")["distributed"]
    assert check["status"] == "pass", check
    assert check["data"]["replicas"] == 2 and check["data"]["psum"] == [3.0, 3.0]


def test_tensorflow_distributed_mirrors_over_two_logical_cpus(tf_python: str) -> None:
    result = smoke("--python", tf_python, "--distributed", *FAST, "--json")
    assert result.code == 0, result
    check = result.checks("tensorflow")["distributed"]
    assert check["status"] == "pass", check
    assert check["data"]["replicas"] == 2 and check["data"]["all_reduce"] == [3.0, 3.0]


# --------------------------------------------------------------------------- the host's GPUs vs. the framework's


def test_cpu_build_on_a_gpu_host_fails_the_devices_check(torch_python: str, fake_nvml_lib: Path,
                                                          tmp_path: Path) -> None:
    """The classic: the host has GPUs, the installed torch is a CPU build and 'works', quietly on the CPU."""
    env = machine_env(tmp_path, fake_nvml_lib, "a100x8")
    result = smoke("--python", torch_python, *FAST, "--json", env=env)
    assert result.code == 1, result
    assert len(result.doc["host"]["gpus"]) == 8
    check = result.checks("torch")["devices"]
    assert check["status"] == "fail"
    assert "the host has 8 GPU(s)" in check["detail"] and "CPU-only build" in check["detail"]
    assert "envforge resolve -f torch" in check["fix"]
    assert result.checks("torch")["training"]["status"] == "pass"  # it still ran, on the CPU, and says so
    assert "torch ran on CPU although the host has GPUs" in result.doc["notes"]


def test_device_cuda_with_a_framework_that_sees_no_gpu_fails_and_skips_the_rest(
        torch_python: str, fake_nvml_lib: Path, tmp_path: Path) -> None:
    env = machine_env(tmp_path, fake_nvml_lib, "t4")
    result = smoke("--python", torch_python, "--device", "cuda", "--json", env=env)
    assert result.code == 1, result
    checks = result.checks("torch")
    assert checks["devices"]["status"] == "fail"
    assert "torch sees no CUDA device" in checks["devices"]["detail"]
    assert all(checks[n]["status"] == "skip" for n in ("kernels", "training", "throughput"))


def test_device_cuda_on_a_host_without_a_gpu_exits_1_with_the_probe_explanation(bare_host: str | None) -> None:
    if bare_host:
        pytest.skip(bare_host)
    result = smoke("--device", "cuda", "--json")
    assert result.code == 1, result
    error = result.doc["error"]
    assert error["code"] == "smoke_failed"
    assert "found no GPU" in error["message"] and "libnvidia-ml.so.1" in error["message"]
    assert error["fix"]


# --------------------------------------------------------------------------- the environment stops us: exit 3


def test_a_missing_interpreter_exits_3(tmp_path: Path) -> None:
    result = smoke("--python", str(tmp_path / "nowhere" / "python"), "--json")
    assert result.code == 3, result
    assert result.doc["ok"] is False and "no Python interpreter" in result.doc["error"]["message"]


def test_an_interpreter_that_cannot_start_exits_3(tmp_path: Path) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'python: cannot open shared object file' >&2\nexit 127\n")
    broken.chmod(0o755)
    result = smoke("--python", str(broken), "--json")
    assert result.code == 3, result
    assert "does not start" in result.doc["error"]["message"]


def test_unreachable_docker_exits_3_naming_docker_host(tmp_path: Path) -> None:
    result = smoke("--image", "envforge-smoke-test:none", "--json",
                   env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert result.code == 3, result
    error = result.doc["error"]
    try:
        import docker  # noqa: F401
    except ImportError:
        assert "pip install docker" in error["fix"]
    else:
        assert "cannot reach the Docker daemon" in error["message"] and str(tmp_path) in error["message"]
        assert "DOCKER_HOST" in error["fix"] and "dockerd" in error["fix"]


def test_no_framework_in_the_target_exits_1(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(bare)
    result = smoke("--python", str(bare), "--json")
    assert result.code == 1, result
    assert "none of torch, tensorflow, jax is importable" in result.doc["error"]["message"]


def _docker_image_with_a_framework() -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
    except Exception:  # noqa: BLE001 - no SDK, no daemon
        return None
    tags = [tag for image in client.images.list(filters={"label": "dev.envforge.framework"}) for tag in image.tags]
    # the image test_docker_build.py built in this run, before any older one (a bench image, a stale build)
    from tests.integration.test_docker_build import TAG

    return TAG if TAG in tags else (tags[0] if tags else None)


@pytest.mark.docker
def test_smoke_inside_an_image_built_by_envforge() -> None:
    image = _docker_image_with_a_framework()
    if image is None:
        pytest.skip("needs a reachable Docker daemon and an image built by `envforge build` (labelled "
                    "dev.envforge.framework); none here")
    result = smoke("--image", image, "--skip", "throughput", "--json")
    assert result.code == 0, result
    assert result.doc["target"]["kind"] == "image"
    assert "label of" in result.checks()["import"]["detail"]


# --------------------------------------------------------------------------- hangs and crashes, through the real runner

HANG = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {smoke_dir!r})
    import _harness as h

    def hang():
        # Like a wedged CUDA or NCCL call: blocked in C, deaf to the harness's SIGALRM.
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGALRM}})
        time.sleep(600)

    def crash():
        os.kill(os.getpid(), signal.SIGSEGV)

    smoke = h.Smoke("torch", h.parse_args("torch"))
    smoke.run("import", lambda: h.Outcome("fine"))
    smoke.run("devices", {action})
    sys.exit(smoke.finish())
""")


def _watch(tmp_path: Path, action: str, timeout: str) -> run.FrameworkRun:
    script = tmp_path / "script.py"
    script.write_text(HANG.format(smoke_dir=str(run.HERE), action=action))
    process = run.InterpreterLauncher(sys.executable).start(script, ["--timeout", timeout])
    seen: list[str] = []
    return run.watch(process, "torch", lambda check: seen.append(check["name"]))


def test_a_check_that_hangs_in_c_is_killed_and_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "GRACE_S", 0.5)
    start = time.perf_counter()
    result = _watch(tmp_path, "hang", timeout="1")
    assert time.perf_counter() - start < 30
    checks = {c["name"]: c for c in result.report["checks"]}
    assert checks["import"]["status"] == "pass"
    assert checks["devices"]["status"] == "fail" and "hung, killed" in checks["devices"]["detail"]
    assert checks["kernels"]["status"] == "skip" and "hung" in checks["kernels"]["detail"]
    assert result.salvaged and not result.ok


def test_a_python_level_hang_is_stopped_by_the_check_timeout(tmp_path: Path) -> None:
    result = _watch(tmp_path, "lambda: __import__('time').sleep(600)", timeout="1")
    checks = {c["name"]: c for c in result.report["checks"]}
    assert checks["devices"]["status"] == "fail"
    assert checks["devices"]["detail"] == "did not finish within 1 s (a hang is a failure)"
    assert not result.salvaged  # the script itself reported it, and finished


def test_a_crash_fails_the_running_check_with_the_signal(tmp_path: Path) -> None:
    result = _watch(tmp_path, "crash", timeout="30")
    checks = {c["name"]: c for c in result.report["checks"]}
    assert checks["import"]["status"] == "pass"
    assert checks["devices"]["status"] == "fail" and "SIGSEGV" in checks["devices"]["detail"]
    assert checks["training"]["status"] == "skip"


# --------------------------------------------------------------------------- judgements of GPU runs (no GPU here)

A100 = HostFacts(source="nvml", driver="535.104.05", gpus=tuple(
    Gpu(name="NVIDIA A100-SXM4-80GB", arch="8.0", memory_mib=81920, index=i) for i in range(2)))


def _devices_check(*gpus: dict) -> dict:
    return {"name": "devices", "status": "pass", "detail": "…", "data": {"gpus": list(gpus)}, "warnings": []}


def test_devices_pass_when_the_framework_sees_the_hosts_gpus() -> None:
    check = _devices_check(*({"index": i, "name": "NVIDIA A100-SXM4-80GB", "arch": "8.0"} for i in range(2)))
    assert judge.judge_devices(check, "torch", A100, "auto") == []
    assert check["status"] == "pass"


def test_devices_fail_on_a_missing_gpu_or_another_arch() -> None:
    check = _devices_check({"index": 0, "name": "NVIDIA A100-SXM4-80GB", "arch": "9.0"})
    judge.judge_devices(check, "jax", A100, "auto")
    assert check["status"] == "fail"
    assert "the host has 2 GPU(s)" in check["detail"] and "jax sees 1" in check["detail"]
    assert "compute capability 9.0 in jax, 8.0 on the host" in check["detail"]
    assert "CUDA_VISIBLE_DEVICES" in check["fix"]


def test_devices_on_a_mixed_host_are_compared_whatever_their_order() -> None:
    """CUDA numbers the fastest GPU first, NVML goes by PCI bus: the same GPUs, listed differently."""
    host = HostFacts(source="nvml", gpus=(Gpu(name="Tesla T4", arch="7.5", index=0),
                                          Gpu(name="NVIDIA A100-SXM4-80GB", arch="8.0", index=1)))
    check = _devices_check({"index": 0, "name": "NVIDIA A100-SXM4-80GB", "arch": "8.0"},
                           {"index": 1, "name": "Tesla T4", "arch": "7.5"})
    judge.judge_devices(check, "torch", host, "auto")
    assert check["status"] == "pass", check


def test_device_cpu_ignores_the_hosts_gpus_and_says_so() -> None:
    check = _devices_check()
    notes = judge.judge_devices(check, "torch", A100, "cpu")
    assert check["status"] == "pass" and notes == ["--device cpu: the host's 2 GPU(s) were not used"]


def test_throughput_far_below_the_datasheet_peak_is_a_warning(matrix) -> None:
    check = {"name": "throughput", "status": "pass", "detail": "…", "warnings": [], "data": {"devices": [
        {"device": "cuda:0", "name": "NVIDIA A100-SXM4-80GB", "fp32_tflops": 18.1, "bf16_tflops": 41.0}]}}
    judge.judge_throughput(check, matrix.gpu)
    assert check["status"] == "pass"
    row = check["data"]["devices"][0]
    assert row["bf16_peak_tflops"] == 312.0 and row["bf16_fraction"] == pytest.approx(0.131, abs=1e-3)
    assert "bf16 41 TFLOP/s (13% of 312)" in check["detail"] and "fp32 18.1 TFLOP/s (93% of 19.5)" in check["detail"]
    (warning,) = check["warnings"]
    assert "13% of the datasheet's 312" in warning and "PCIe" in warning and "clocks" in warning


def test_throughput_of_a_gpu_without_a_recorded_peak_says_so(matrix) -> None:
    check = {"name": "throughput", "status": "pass", "detail": "…", "warnings": [], "data": {"devices": [
        {"device": "cuda:0", "name": "NVIDIA GeForce RTX 4090", "bf16_tflops": 150.0}]}}
    judge.judge_throughput(check, matrix.gpu)
    assert "no datasheet peak on record" in check["detail"] and not check["warnings"]


@pytest.mark.parametrize("message,op", [
    ("adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but you set "
     "'torch.use_deterministic_algorithms(True)'.", "adaptive_avg_pool2d_backward_cuda"),
    ("A deterministic GPU implementation of SparseSoftmaxXentWithLogitsOp is not currently available.",
     "SparseSoftmaxXentWithLogitsOp"),
    ("Determinism is not yet supported in GPU for SparseTensorDenseMatMul.", "SparseTensorDenseMatMul"),
    ("CUDA error: an illegal memory access was encountered", None),
])
def test_the_non_deterministic_op_is_named_from_the_frameworks_message(message: str, op: str | None) -> None:
    assert _harness.nondeterministic_op(message) == op


def test_gpus_are_requested_by_uuid_from_the_probe() -> None:
    docker = pytest.importorskip("docker")
    gpus = [Gpu(name="Tesla T4", arch="7.5", index=0, uuid="GPU-1234")]
    (request,) = run.gpu_device_requests(docker, gpus)
    assert request["DeviceIDs"] == ["GPU-1234"] and request["Capabilities"] == [["gpu"]]
    (request,) = run.gpu_device_requests(docker, [Gpu(name="Tesla T4", arch="7.5")])
    assert request["Count"] == -1


def test_the_scripts_go_into_a_container_with_their_harness() -> None:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(run.scripts_tar("torch_smoke.py"))) as tar:
        assert sorted(tar.getnames()) == ["envforge-smoke", "envforge-smoke/_harness.py",
                                          "envforge-smoke/torch_smoke.py"]


def test_help_stays_light() -> None:
    code = ("import sys, envforge.cli; heavy = [m for m in ('docker', 'packaging', 'envforge.smoke.run', "
            "'envforge.smoke.judge') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_command_offers_the_harness_checks() -> None:
    from envforge.commands import smoke as command

    assert command.CHECK_NAMES == _harness.CHECKS  # duplicated there so `envforge --help` imports only click


# --------------------------------------------------------------------------- GPU-only helpers of the scripts, on CPU


def _script_module(name: str, monkeypatch: pytest.MonkeyPatch):
    """A framework script imported as the target imports it: with its own directory first on sys.path."""
    import importlib

    monkeypatch.syspath_prepend(str(run.HERE))
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # torch_smoke sets it (setdefault) at import
    monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module(name)


@pytest.mark.parametrize("arch,arch_list,warns", [
    ("12.0", ["sm_50", "sm_80", "sm_86", "sm_90"], True),  # an RTX 5090 on a build without Blackwell
    ("8.6", ["sm_80", "sm_90"], False),  # sm_80 SASS runs on 8.6 (same major)
    ("12.0", ["sm_80", "sm_90", "compute_90"], False),  # PTX 9.0 is JIT-compiled for 12.0
    ("7.5", ["sm_80", "sm_90"], True),
])
def test_torch_warns_when_a_gpu_has_no_kernels_in_the_build(monkeypatch, arch, arch_list, warns) -> None:
    torch_smoke = _script_module("torch_smoke", monkeypatch)
    warning = torch_smoke._arch_warning({"name": "GPU", "arch": arch}, arch_list)
    assert bool(warning) is warns, warning
    if warns:
        assert "no kernel image is available" in warning


@pytest.mark.parametrize("number,text", [(8907, "8.9.7"), (90100, "9.1.0"), (None, None)])
def test_torch_cudnn_versions_read_in_both_encodings(monkeypatch, number, text) -> None:
    assert _script_module("torch_smoke", monkeypatch)._cudnn_text(number) == text


def test_jax_picks_float16_below_ampere(monkeypatch) -> None:
    jax_smoke = _script_module("jax_smoke", monkeypatch)

    class Device:
        def __init__(self, platform: str, arch: str | None) -> None:
            self.platform, self.compute_capability = platform, arch

    assert jax_smoke._bf16_supported(Device("gpu", "8.0")) is True
    assert jax_smoke._bf16_supported(Device("gpu", "7.5")) is False
    assert jax_smoke._bf16_supported(Device("cpu", None)) is True
