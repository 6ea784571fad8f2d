"""pg-export: PyTorch BagNet -> ONNX (fp32, fp16, int8) -> TensorRT engine, with a parity report."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from ..calibration.int8 import FLAVORS
from ..runtime.console import Command, info
from ..runtime.errors import PatchGuardError, lazy_import
from ..runtime.limits import MAX_CLASSES, check_memory, check_side, memory_budget

EXAMPLES = """
\b
Examples:
  pg-export --fp16                                   # the bundled Fashion-MNIST model, into .
  pg-export --checkpoint bagnet17_imagenette.pth --fp16 --out models/ --name imagenette
  pg-export --arch bagnet17 --random-init --num-classes 10 --input-size 224 --no-engine
  pg-export --onnx models/imagenette.onnx --fp16 --engine   # on the Jetson: no torch needed
  pg-export --checkpoint ft.pt --int8 --calib-data calib_images/ --int8-flavor tensorrt

\b
Writes NAME.onnx (fp32, dynamic batch, local logits (B, H, W, C), metadata
'patchguard'), NAME.fp16.onnx with --fp16, NAME.int8.onnx with --int8,
NAME.plan + NAME.plan.json when TensorRT and a GPU are present, and
NAME.parity.json. The spatial input size is fixed per export.
"""

_TORCH_ONLY = ("arch", "checkpoint", "num_classes", "input_size", "class_names", "random_init", "opset")


def _class_names(path: Optional[str]) -> Optional[list[str]]:
    if path is None:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PatchGuardError(f"cannot read --class-names {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PatchGuardError(f"--class-names {path} is not a UTF-8 text file (one name per line)") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise PatchGuardError(f"--class-names {path} holds no names (one per line)")
    return names


def _load_torch_model(arch: Optional[str], checkpoint: Optional[str], num_classes: Optional[int],
                      input_size: Optional[str], random_init: bool) -> tuple[Any, Any, str]:
    """(module, record, default name) from the flags; every refusal is one line."""
    from ..models import DEFAULT_WEIGHTS, build_model, load_checkpoint, record_for
    from ..runtime.geometry import parse_pair

    size = parse_pair(input_size, "--input-size") if input_size else None
    if size is not None:
        for side in size:
            check_side(side, "--input-size")
        # The probe and parity runs hold a few activation maps of ~64 channels at the input
        # size, float32: refuse before torch tries (100000 px asks for terabytes).
        check_memory(4 * 64 * 4 * size[0] * size[1], memory_budget(), f"exporting at {size[0]}x{size[1]}")
    if random_init:
        if checkpoint:
            raise PatchGuardError("--random-init and --checkpoint contradict each other; pick one")
        if not arch:
            raise PatchGuardError("--random-init needs --arch (bagnet9, bagnet17, bagnet33, smallbagnet)")
        import torch

        torch.manual_seed(0)
        record = record_for(arch, num_classes=num_classes, input_size=size)
        return build_model(record).eval(), record, arch
    if checkpoint is None:
        if arch:
            raise PatchGuardError(
                f"--arch {arch} without --checkpoint would export untrained weights; "
                "add --checkpoint PATH, or --random-init if that is what you want"
            )
        model, record = DEFAULT_WEIGHTS.load(num_classes=num_classes, input_size=size)
        return model, record, DEFAULT_WEIGHTS.name
    model, record = load_checkpoint(checkpoint, arch=arch, num_classes=num_classes, input_size=size)
    return model, record, Path(checkpoint).name.split(".")[0]


def _views_batch(options: Any, record: Any, asked: Optional[int]) -> Any:
    """A view defense's engine profile holds one frame's views unless --max-batch says otherwise."""
    import dataclasses

    if asked is not None or record.is_local:
        return options
    from ..runtime.views import view_runner

    patch = record.default_patch_px or max(1, min(record.input_size) // 7)
    try:
        views = view_runner(record, (patch, patch), lambda v: v).views_per_frame
    except (NotImplementedError, PatchGuardError):
        return options
    return dataclasses.replace(options, max_batch=min(1024, int(views)))


def _onnx_name(path: Path) -> str:
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    for tag in (".fp16", ".int8"):
        stem = stem.removesuffix(tag)
    return stem


@click.command(cls=Command, epilog=EXAMPLES)
@click.option("--arch", default=None,
              help="bagnet9, bagnet17, bagnet33 or smallbagnet; default: from the checkpoint.")
@click.option("--checkpoint", default=None, metavar="PATH",
              help="Weights in any supported layout (official, PatchGuard's, pg-train's). "
                   "Default: the bundled Fashion-MNIST model.")
@click.option("--num-classes", type=int, default=None, help="Classes of the classifier (default: from the weights).")
@click.option("--input-size", default=None, metavar="PX|HxW",
              help="Model input in pixels, e.g. 224 or 192x256 (default: the model's).")
@click.option("--class-names", default=None, metavar="FILE", help="Text file, one class name per line.")
@click.option("--fp16", is_flag=True, help="Also write NAME.fp16.onnx (float16 weights, float32 I/O).")
@click.option("--int8", is_flag=True, help="Also write NAME.int8.onnx (QDQ, calibrated on --calib-data).")
@click.option("--calib-data", default=None, metavar="DIR|fashion-mnist",
              help="Calibration images for --int8 (default: fashion-mnist for 28x28 gray models).")
@click.option("--calib-size", type=int, default=256, show_default=True, help="Calibration images to use.")
@click.option("--int8-flavor", type=click.Choice(sorted(FLAVORS)), default=None,
              help="tensorrt: S8S8 symmetric QDQ, zero points 0, what engines are built from; cpu: U8S8 "
                   "QDQ, the fastest in onnxruntime on x86 CPUs (VNNI); cpu-avx2: U8S8 with 7-bit weights "
                   "for x86 CPUs without VNNI. Default: tensorrt when an engine is built, else cpu.")
@click.option("--triton-repo", default=None, metavar="DIR",
              help="Also write a Triton model repository (ONNX backend + Python-backend certification + "
                   "ensemble) to this new folder.")
@click.option("--out", "out_dir", default=".", show_default=True, metavar="DIR", help="Output folder.")
@click.option("--name", default=None, help="Base name of the files (default: checkpoint / ONNX / arch name).")
@click.option("--max-batch", type=int, default=None,
              help="Largest batch of the TensorRT engine (profile 1..N) [default: 8 for a BagNet; one "
                   "frame's views, at most 1024, for a view defense (666 for PatchCleanser, k = 6)].")
@click.option("--tf32/--no-tf32", default=True, show_default=True,
              help="fp32 engines: let TensorRT round convolution/matmul inputs to TF32 on Ampere+ GPUs "
                   "(every Orin), its default; --no-tf32 keeps full fp32 products. fp16/int8: no effect.")
@click.option("--opset", type=int, default=None, help="ONNX opset of the PyTorch export  [default: 18].")
@click.option("--engine/--no-engine", default=None,
              help="--engine: a TensorRT engine must be built (error if impossible); "
                   "--no-engine: never. Default: build one when tensorrt and a GPU are present.")
@click.option("--random-init", is_flag=True, help="Allow --arch without --checkpoint (untrained weights).")
@click.option("--onnx", "onnx_path", default=None, metavar="PATH",
              help="Start from an existing exported ONNX instead of PyTorch (no torch needed).")
@click.option("--parity-data", default=None, metavar="DIR|fashion-mnist",
              help="Inputs of the parity report (default: Fashion-MNIST test images for 28x28 gray "
                   "models when installed, else random).")
@click.option("--parity-n", type=int, default=16, show_default=True, help="Inputs in the parity report.")
@click.option("--allow-parity-drift", is_flag=True,
              help="Write fp16/int8 artifacts even when their robust-masking decisions drift from the "
                   "reference's (agreement below 98% or certified share more than 2 points lower).")
def main(arch: Optional[str], checkpoint: Optional[str], num_classes: Optional[int], input_size: Optional[str],
         class_names: Optional[str], fp16: bool, int8: bool, calib_data: Optional[str], calib_size: int,
         int8_flavor: Optional[str], out_dir: str, name: Optional[str], max_batch: Optional[int],
         opset: Optional[int],
         engine: Optional[bool], random_init: bool, onnx_path: Optional[str], parity_data: Optional[str],
         parity_n: int, tf32: bool, allow_parity_drift: bool, triton_repo: Optional[str]) -> None:
    """Export a BagNet for deployment and check every artifact against the original."""
    from ..runtime.files import check_name
    from .pipeline import ExportOptions, run_export

    if triton_repo is not None and Path(triton_repo).exists() and any(Path(triton_repo).iterdir()):
        raise PatchGuardError(f"--triton-repo {triton_repo} exists and is not empty; give a new folder")

    if name is not None:
        check_name(name, "--name")
    if not int8:
        int8_only = [flag for flag, value in (("--calib-data", calib_data), ("--int8-flavor", int8_flavor),
                                              ("--calib-size", calib_size != 256)) if value]
        if int8_only:
            verb = "applies" if len(int8_only) == 1 else "apply"
            raise PatchGuardError(f"{', '.join(int8_only)} only {verb} with --int8; add --int8 or drop them")
    if num_classes is not None and not 1 <= num_classes <= MAX_CLASSES:
        raise PatchGuardError(f"--num-classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    if max_batch is not None and max_batch < 1:
        raise PatchGuardError(f"--max-batch must be at least 1, got {max_batch}")
    if calib_size < 1 or parity_n < 1:
        raise PatchGuardError("--calib-size and --parity-n must be at least 1")
    if opset is not None and not 13 <= opset <= 23:
        raise PatchGuardError(f"--opset {opset} is outside the supported 13..23")
    if engine:
        from .engine import engine_unavailable_reason

        reason = engine_unavailable_reason()
        if reason:
            raise PatchGuardError(f"--engine: cannot build a TensorRT engine: {reason}")
    common: dict[str, Any] = dict(fp16=fp16, int8=int8, calib_data=calib_data, calib_size=calib_size,
                  int8_flavor=int8_flavor, max_batch=max_batch or 8, engine=engine, tf32=tf32,
                  parity_data=parity_data, parity_n=parity_n, allow_parity_drift=allow_parity_drift)

    if onnx_path is not None:
        given = {"arch": arch, "checkpoint": checkpoint, "num_classes": num_classes,
                 "input_size": input_size, "class_names": class_names, "random_init": random_init,
                 "opset": opset}
        clash = [f"--{k.replace('_', '-')}" for k in _TORCH_ONLY if given[k]]
        if clash:
            raise PatchGuardError(f"--onnx starts from an exported model; {', '.join(clash)} do not apply")
        from .onnxfile import check_layout, get_record, load_onnx

        source = Path(onnx_path)
        record = get_record(load_onnx(source), str(source))
        check_layout(load_onnx(source), record)
        options = _views_batch(ExportOptions(out=Path(out_dir), name=name or _onnx_name(source), **common),
                               record, max_batch)
        result = run_export(options, record, onnx_path=source)
    else:
        lazy_import("torch", "export")
        lazy_import("onnx", "export")
        from .onnx import DEFAULT_OPSET, export_onnx, torch_reference
        from .onnxfile import save_onnx

        model, record, default_name = _load_torch_model(arch, checkpoint, num_classes, input_size, random_init)
        names = _class_names(class_names)
        if names is not None:
            if len(names) != record.num_classes:
                raise PatchGuardError(
                    f"--class-names gives {len(names)} names for a {record.num_classes}-class model"
                )
            record = record.replace(class_names=tuple(names))
        options = _views_batch(ExportOptions(out=Path(out_dir), name=name or default_name, **common),
                               record, max_batch)
        what = (f"r={record.receptive_field}, s={record.stride}" if record.is_local
                else f"{record.defense.kind} defense")
        info(f"exporting {record.arch} ({record.num_classes} classes, input "
             f"{record.input_size[0]}x{record.input_size[1]}, {what}) -> {options.out}/{options.name}.*")
        result = run_export(
            options, record,
            write_fp32=lambda path: save_onnx(export_onnx(model, record, opset or DEFAULT_OPSET), path),
            # View defenses score hundreds of views per input: larger reference batches.
            reference=torch_reference(model, batch=8 if record.is_local else 512), reference_label="PyTorch",
        )

    from .parity import format_table

    click.echo(format_table(result.rows))
    for note in result.notes:
        click.echo(note, err=True)
    for path in result.files:
        click.echo(f"wrote {path}")
    if triton_repo is not None:
        from .triton_repo import write_triton_repo

        fp32 = options.out / f"{options.name}.onnx"
        if not fp32.is_file() and onnx_path is not None:
            fp32 = Path(onnx_path)  # --onnx exports from this file without copying it
        repo = write_triton_repo(fp32, Path(triton_repo),
                                 max_batch=max_batch or 64)
        click.echo(f"wrote Triton model repository {repo}")
