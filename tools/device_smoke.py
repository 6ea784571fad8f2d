"""Device smoke check: run on a machine with a GPU and TensorRT what no development machine here can.

    tools/device_smoke.sh [--out DIR] [--onnx-dir DIR] [--no-bagnet17]      (or: make device-check)

Steps, each printed as one ``PASS`` / ``FAIL`` / ``SKIP`` line:

1. export the bundled Fashion-MNIST model and a random-init BagNet-17 at 224
   (fp32, fp16, int8 TensorRT flavour; PyTorch needed: on a Jetson without
   torch, export on a workstation and pass ``--onnx-dir``), with the fp32
   ONNX's logits of the sample in ``NAME.reference.npz`` for a device
   without onnxruntime;
2. no BatchNormalization in any exported graph;
3. ONNX parity (pg-export's report against PyTorch) within tolerance;
4. TensorRT engines of every graph (fp32 with and without TF32, fp16, int8);
5. the TensorRT backend on each engine: parity against the fp32 ONNX and
   latency at batch 1 and 8;
6. onnxruntime's CUDA and TensorRT execution providers on each ONNX graph;
7. ``pytest -m "tensorrt or gpu"``.

Steps 4-7 skip with the reason where TensorRT, cuda-python, a GPU or a GPU
build of onnxruntime is missing. Writes ``DIR/report.json``; exits 1 if a step
failed, else 0. Budget: under 10 minutes on an Orin (the BagNet-17 engine
builds dominate; ``--no-bagnet17`` leaves them out).
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "fashion-mnist-test"
PRECISIONS = ("fp32", "fp16", "int8")
LATENCY_BATCHES = (1, 8)


class Report:
    """PASS / FAIL / SKIP lines as they happen, and everything for report.json."""

    def __init__(self) -> None:
        self.steps: list[dict[str, str]] = []
        self.rows: list[dict[str, Any]] = []
        self.environment: dict[str, Any] = {}

    def line(self, status: str, step: str, detail: str = "") -> None:
        self.steps.append({"status": status, "step": step, "detail": detail})
        print(f"{status:<4}  {step}" + (f": {detail}" if detail else ""), flush=True)

    def attempt(self, step: str, action: Callable[[], Optional[str]]) -> bool:
        """Run ``action``; PASS with the detail it returns, FAIL with the first line of its error."""
        try:
            detail = action()
        except Exception as exc:  # a smoke check reports every failure and goes on
            text = str(exc).strip().splitlines()
            self.line("FAIL", step, f"{type(exc).__name__}: {text[0] if text else ''}")
            return False
        self.line("PASS", step, detail or "")
        return True

    @property
    def failed(self) -> bool:
        return any(s["status"] == "FAIL" for s in self.steps)


def version_of(module: str) -> str:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "installed"))
    except Exception:  # absent, or broken (e.g. built for another numpy): say which
        return "not installed"


def environment(report: Report) -> None:
    from patchguard.runtime.backends.cuda import cuda_runtime, cuda_unavailable_reason, device_facts

    env: dict[str, Any] = {
        "python": platform.python_version(), "machine": platform.machine(),
        **{name: version_of(name) for name in ("numpy", "onnxruntime", "onnx", "torch", "tensorrt", "cv2")},
    }
    import importlib.metadata as metadata

    env["cuda-python"] = "not installed"
    for dist in ("cuda-python", "cuda-bindings"):  # torch brings cuda-bindings without cuda-python
        try:
            env["cuda-python"] = f"{dist} {metadata.version(dist)}"
            break
        except metadata.PackageNotFoundError:
            continue
    try:
        import onnxruntime

        env["onnxruntime providers"] = list(onnxruntime.get_available_providers())
    except Exception:
        env["onnxruntime providers"] = []
    reason = cuda_unavailable_reason()
    if reason is None:
        cudart = cuda_runtime()
        device = device_facts()
        env["gpu"] = f"{device.name} (compute capability {device.compute_capability}, {device.sm_count} SMs)"
        for key, call in (("cuda driver", "cudaDriverGetVersion"), ("cuda runtime", "cudaRuntimeGetVersion")):
            value = getattr(cudart, call)()[1]
            env[key] = f"{value // 1000}.{(value % 1000) // 10}"
    else:
        env["gpu"] = f"none usable: {reason}"
    report.environment = env
    for key, value in env.items():
        print(f"      {key}: {value}")


def pg_export(args: list[str]) -> None:
    code = "import sys\nfrom patchguard.export.cli import main\nmain()\n"
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error:")]
        raise RuntimeError(errors[-1] if errors else (done.stderr.strip().splitlines() or ["pg-export failed"])[-1])


def export_models(report: Report, out: Path, onnx_dir: Optional[Path], bagnet17: bool) -> dict[str, Path]:
    """Step 1: name -> folder holding NAME.onnx, NAME.fp16.onnx, NAME.int8.onnx (and NAME.parity.json)."""
    jobs = {"bundled": ["--int8-flavor", "tensorrt", "--calib-data", str(SAMPLE), "--parity-data", str(SAMPLE),
                        "--parity-n", "64"]}
    if bagnet17:
        jobs["bagnet17"] = ["--arch", "bagnet17", "--random-init", "--num-classes", "10", "--input-size", "224",
                            "--int8-flavor", "tensorrt", "--calib-data", str(SAMPLE), "--calib-size", "16",
                            "--parity-data", str(SAMPLE), "--parity-n", "8"]
    folders = {}
    for name, extra in jobs.items():
        folder = (onnx_dir or out) / name
        if onnx_dir is not None:
            if (folder / f"{name}.onnx").is_file():
                folders[name] = folder
                report.line("PASS", f"export {name}", f"using {folder} (--onnx-dir)")
            else:
                report.line("FAIL", f"export {name}", f"{folder / (name + '.onnx')} is missing")
            continue
        if version_of("torch") == "not installed":
            report.line("SKIP", f"export {name}", "torch is not installed: export on a workstation "
                        "(tools/device_smoke.sh there) and rerun here with --onnx-dir OUT")
            continue
        # --allow-parity-drift: the int8 agreement is reported below; this checks the machinery.
        args = ["--fp16", "--int8", "--no-engine", "--allow-parity-drift", "--out", str(folder), "--name", name,
                *extra]

        def export(args: list[str] = args) -> str:
            start = time.perf_counter()
            pg_export(args)
            return f"fp32 + fp16 + int8 in {time.perf_counter() - start:.0f} s"
        if report.attempt(f"export {name}", export):
            folders[name] = folder
            report.attempt(f"reference logits {name}", functools.partial(save_reference, folder, name))
    return folders


def graphs(folder: Path, name: str) -> dict[str, Path]:
    found = {"fp32": folder / f"{name}.onnx", "fp16": folder / f"{name}.fp16.onnx",
             "int8": folder / f"{name}.int8.onnx"}
    return {precision: path for precision, path in found.items() if path.is_file()}


def check_batchnorm(report: Report, folders: dict[str, Path]) -> None:
    """Step 2."""
    import onnx

    from patchguard.export.bnfold import batchnorm_count

    for name, folder in folders.items():
        def check(name: str = name, folder: Path = folder) -> str:
            counts = {p: batchnorm_count(onnx.load(str(path))) for p, path in graphs(folder, name).items()}
            if any(counts.values()):
                raise RuntimeError(f"BatchNormalization left: {counts}")
            return f"0 BatchNormalization in {', '.join(counts)}"
        report.attempt(f"no BatchNormalization in {name}", check)


def check_onnx_parity(report: Report, folders: dict[str, Path]) -> None:
    """Step 3: the rows of pg-export's parity report."""
    for name, folder in folders.items():
        path = folder / f"{name}.parity.json"
        if not path.is_file():
            report.line("SKIP", f"ONNX parity {name}", f"no {path.name} (exported elsewhere without onnxruntime?)")
            continue

        def check(path: Path = path) -> str:
            rows = json.loads(path.read_text())["rows"]
            bad = [r["artifact"] for r in rows if r["within_tolerance"] is False]
            if bad:
                raise RuntimeError(f"out of tolerance: {', '.join(bad)}")
            return "; ".join(f"{r['precision']} max rel {r['max_rel']:.2g}, masking agrees "
                             f"{100 * r['prediction_agreement']:.0f}%" for r in rows)
        report.attempt(f"ONNX parity {name}", check)


def latency_ms(backend: Any, x: np.ndarray, iterations: int) -> dict[str, float]:
    out = {}
    for batch in LATENCY_BATCHES:
        chunk = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))
        for _ in range(3):
            backend.infer(chunk)  # warm-up: lazy allocation, TensorRT EP's first engine load
        times = []
        for _ in range(iterations):
            start = time.perf_counter()
            backend.infer(chunk)
            times.append(1000 * (time.perf_counter() - start))
        out[f"batch {batch} p50 ms"] = round(float(np.median(times)), 3)
    return out


def measure(report: Report, step: str, open_model: Callable[[], Any], inputs: np.ndarray, reference: np.ndarray,
            row: dict[str, Any], tolerance: Optional[float], iterations: int) -> None:
    """Parity (the same comparison as pg-export's report) and latency of one backend."""
    from patchguard.export.parity import compare_maps, parity_window

    def run() -> str:
        with open_model() as backend:
            got = backend.infer_all(inputs, 8)
            result = compare_maps(row["artifact"], row["precision"], row["backend"], reference, got,
                                  parity_window(backend.record), tolerance)
            row.update(provider=backend.provider, max_rel=result.max_rel, tolerance=tolerance,
                       masking_agreement=result.prediction_agreement,
                       certificate_agreement=result.certificate_agreement, **latency_ms(backend, inputs, iterations))
        report.rows.append(row)
        if result.within_tolerance is False:
            raise RuntimeError(f"max rel {result.max_rel:.3g} > {tolerance:g}")
        return (f"max rel {result.max_rel:.2g}, masking agrees {100 * result.prediction_agreement:.0f}%, "
                + ", ".join(f"{k} {v}" for k, v in row.items() if k.endswith("ms")))
    report.attempt(step, run)


def reference_logits(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (the bundled sample, preprocessed) and the fp32 ONNX's logits in onnxruntime's CPU provider.

    Saved as ``NAME.reference.npz`` beside the export, so a Jetson without
    onnxruntime compares its engines with the workstation's figures.
    """
    saved = folder / f"{name}.reference.npz"
    if saved.is_file():
        with np.load(saved) as data:
            return data["inputs"], data["logits"]
    from patchguard.export.parity import parity_inputs
    from patchguard.runtime.backends.onnxrt import OnnxRuntimeBackend

    with OnnxRuntimeBackend(folder / f"{name}.onnx") as cpu:
        inputs, _ = parity_inputs(cpu.record, str(SAMPLE), 64 if name == "bundled" else 8)
        logits = cpu.infer_all(inputs, 8)
    np.savez_compressed(saved, inputs=inputs, logits=logits)
    return inputs, logits


def save_reference(folder: Path, name: str) -> str:
    return f"{len(reference_logits(folder, name)[0])} inputs in {name}.reference.npz"


def gpu_steps(report: Report, folders: dict[str, Path], out: Path, iterations: int) -> None:
    """Steps 4-6."""
    from patchguard.export.engine import build_engine, engine_unavailable_reason
    from patchguard.export.parity import ENGINE_FP32_TOLERANCE, TOLERANCE
    from patchguard.runtime.backends import open_backend
    from patchguard.runtime.backends.onnxrt import CUDA_EP, TRT_EP, OnnxRuntimeBackend

    reason = engine_unavailable_reason()
    try:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    except ImportError:
        providers = []
    if not folders:
        for step in ("TensorRT engines", "TensorRT backend", "onnxruntime CUDA EP", "onnxruntime TensorRT EP"):
            report.line("SKIP", step, "no exported model")
        return
    if reason:
        report.line("SKIP", "TensorRT engines", reason)
        report.line("SKIP", "TensorRT backend", reason)
    for ep, label in ((CUDA_EP, "onnxruntime CUDA EP"), (TRT_EP, "onnxruntime TensorRT EP")):
        if ep not in providers:
            found = f"this onnxruntime has {', '.join(providers)}" if providers else "onnxruntime is not installed"
            report.line("SKIP", label, f"{found} (JetPack: the onnxruntime-gpu wheel for JetPack 6; "
                        "x86: patchguard-edge[gpu])")
    if reason and CUDA_EP not in providers and TRT_EP not in providers:
        return
    for name, folder in folders.items():
        onnx_graphs = graphs(folder, name)
        try:
            inputs, reference = reference_logits(folder, name)
        except Exception as exc:  # no onnxruntime and no NAME.reference.npz from the workstation
            report.line("FAIL", f"reference logits {name}", str(exc).strip().splitlines()[0])
            continue
        if not reason:
            plans = {}
            builds = [(p, path, True) for p, path in onnx_graphs.items()]
            if "fp32" in onnx_graphs:
                builds.append(("fp32", onnx_graphs["fp32"], False))
            for precision, path, tf32 in builds:
                label = precision if tf32 or precision != "fp32" else "fp32 --no-tf32"
                plan = out / "engines" / f"{name}.{label.replace(' --', '-')}.plan"
                plan.parent.mkdir(parents=True, exist_ok=True)

                def build(source: Path = path, plan: Path = plan, tf32: bool = tf32) -> str:
                    start = time.perf_counter()
                    build_engine(source, plan, max_batch=8, tf32=tf32)
                    return f"built in {time.perf_counter() - start:.0f} s"
                if report.attempt(f"TensorRT engine {name} {label}", build):
                    plans[label] = plan
            for label, plan in plans.items():
                precision = label.split()[0]
                tolerance = (TOLERANCE["fp32"] if label == "fp32 --no-tf32" else
                             ENGINE_FP32_TOLERANCE if precision == "fp32" else TOLERANCE[precision])
                row = {"model": name, "artifact": plan.name, "precision": label, "backend": "tensorrt"}
                measure(report, f"TensorRT backend {name} {label}", functools.partial(open_backend, plan),
                        inputs, reference, row, tolerance, iterations)
        for ep, short in ((CUDA_EP, "cuda"), (TRT_EP, "tensorrt")):
            if ep not in providers:
                continue
            for precision, path in onnx_graphs.items():
                row = {"model": name, "artifact": path.name, "precision": precision, "backend": f"onnxruntime {short}"}
                tolerance = ENGINE_FP32_TOLERANCE if precision == "fp32" else TOLERANCE[precision]
                measure(report, f"onnxruntime {short} {name} {precision}",
                        functools.partial(OnnxRuntimeBackend, path, provider=short), inputs, reference, row,
                        tolerance, iterations)


def run_pytest(report: Report) -> None:
    """Step 7."""
    from patchguard.runtime.backends.cuda import cuda_unavailable_reason

    reason = cuda_unavailable_reason()  # with a GPU but no TensorRT the gpu tests still run
    if reason:
        report.line("SKIP", 'pytest -m "tensorrt or gpu"', reason)
        return
    if not (ROOT / "tests").is_dir():
        report.line("SKIP", 'pytest -m "tensorrt or gpu"', f"no tests folder in {ROOT}")
        return
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "tensorrt or gpu", "-p", "no:cacheprovider",
                           str(ROOT / "tests")], cwd=ROOT, capture_output=True, text=True)
    last = (done.stdout.strip().splitlines() or ["no output"])[-1]
    report.line("PASS" if done.returncode == 0 else "FAIL", 'pytest -m "tensorrt or gpu"', last)


def print_table(report: Report) -> None:
    if not report.rows:
        return
    keys = ["model", "precision", "backend", "max_rel", "masking_agreement",
            *[f"batch {b} p50 ms" for b in LATENCY_BATCHES]]
    print("\n" + "  ".join(f"{k:>18}" for k in keys))
    for row in report.rows:
        cells = []
        for key in keys:
            value = row.get(key, "")
            cells.append(f"{value:>18.3g}" if isinstance(value, float) else f"{value!s:>18}")
        print("  ".join(cells))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "device-check")
    parser.add_argument("--onnx-dir", type=Path, default=None,
                        help="folders bundled/ and bagnet17/ exported elsewhere (a Jetson without torch)")
    parser.add_argument("--no-bagnet17", action="store_true", help="leave out the BagNet-17 at 224")
    parser.add_argument("--iterations", type=int, default=20, help="timed runs per latency figure")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report()
    start = time.perf_counter()
    environment(report)
    folders = export_models(report, args.out, args.onnx_dir, not args.no_bagnet17)
    check_batchnorm(report, folders)
    check_onnx_parity(report, folders)
    gpu_steps(report, folders, args.out, args.iterations)
    run_pytest(report)
    print_table(report)
    elapsed = time.perf_counter() - start
    summary = {s: sum(x["status"] == s for x in report.steps) for s in ("PASS", "FAIL", "SKIP")}
    print(f"\ndevice check: {summary['PASS']} passed, {summary['FAIL']} failed, {summary['SKIP']} skipped "
          f"in {elapsed:.0f} s; report: {args.out / 'report.json'}")
    (args.out / "report.json").write_text(json.dumps(
        {"environment": report.environment, "steps": report.steps, "rows": report.rows,
         "seconds": round(elapsed, 1)}, indent=2, default=str))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
