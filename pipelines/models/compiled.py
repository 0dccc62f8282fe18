"""Encoders compiled ahead of time (AOTInductor packages), kept on disk only where they beat the running path."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import precision as prec

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the manifest or the packages change meaning
COSINE_MIN = 0.995  # every calibration photo's output against fp32 eager on the same weights
MARGIN = 0.95  # a compiled variant must take at most this share of the running path's time to replace it
# static int8 on the linear layers only (weights per channel, activations per tensor from calibration): attention
# products and residual adds quantised too broke the cosine bound on ViT; fp32 compiled fuses what eager cannot
# (conv + batch norm + activation), which is where convolutional models gain
VARIANTS = ("int8-static", "fp32")
MANIFEST = "manifest.json"
# CPU features that change what inductor generates or which int8 kernels run
_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")

Encoder = Callable[[torch.Tensor], torch.Tensor]


def machine_key() -> dict:
    """What a package was built for besides the model: the torch build and the CPU's features."""
    return {"format": FORMAT, "torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(),
            "features": sorted(prec.cpu_flags() & set(_FEATURES))}


def artefact_key(role: str, version: str, shape: Sequence[int]) -> dict:
    """Everything a package depends on: the model version, the input shape, and machine_key()."""
    return {"role": role, "version": version, "shape": list(shape), **machine_key()}


def folder_for(root: str | os.PathLike, key: dict) -> Path:
    """The package folder for key under root: one per model, role, shape, torch build and CPU."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / f"{key['role']}-{digest}"


def _export(module: torch.nn.Module, example: torch.Tensor, calibration: Sequence[torch.Tensor], variant: str):
    """module exported for inductor: as is (fp32), or with its linear layers quantised statically (int8-static)."""
    with torch.no_grad():
        program = torch.export.export(module, (example,), strict=False)
        if variant == "fp32":
            return program
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

        quantizer = x86.X86InductorQuantizer()
        quantizer.set_module_type_qconfig(torch.nn.Linear, x86.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(program.module(), quantizer)
        for batch in calibration:  # observers record each activation's range
            prepared(batch)
        return torch.export.export(convert_pt2e(prepared), (example,), strict=False)


def _first(output) -> torch.Tensor:
    return output[0] if isinstance(output, (list, tuple)) else output


def _cosines(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> list[float]:
    # per row of the last dimension (each image's logits, each token's hidden state): a flattened cosine over
    # hundreds of tokens would hide one token gone wrong
    return [float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).min())
            for a, b in zip(reference, outputs)]


def _median_ms(runs: dict[str, Encoder], inputs: Sequence[torch.Tensor], rounds: int) -> dict[str, float]:
    """Median ms a call for each run, interleaved so that a busy machine slows them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for name, run in runs.items():
            run(inputs[0])  # first calls allocate and pack weights
        for _ in range(rounds):
            for x in inputs:
                for name, run in runs.items():
                    started = time.perf_counter()
                    run(x)
                    times[name].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def build(module: torch.nn.Module, current: Encoder, calibration: Sequence[torch.Tensor], folder: Path, key: dict,
          variants: Sequence[str] | None = None, rounds: int = 2) -> dict:
    """Compile module's variants into folder, keep the fastest that holds COSINE_MIN and beats current by MARGIN.

    module: the fp32 encoder (one tensor in, a tensor or tuple out); current: the path serving today, the one to
    beat; calibration: a few preprocessed photos (the first is the example whose shape the package takes).
    Returns the manifest written to folder (its "variant" is None when today's path stays).
    """
    variants = VARIANTS if variants is None else variants
    folder.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    with torch.inference_mode():
        reference = [_first(module(x)) for x in calibration]
    figures: dict[str, dict] = {}
    runs: dict[str, Encoder] = {"current": current}
    for variant in variants:
        started = time.perf_counter()
        try:
            program = _export(module, calibration[0], calibration, variant)
            with torch.no_grad():  # freezing (weights folded and prepacked) applies only without autograd
                path = torch._inductor.aoti_compile_and_package(program, package_path=str(folder / f"{variant}.pt2"),
                                                                inductor_configs={"freezing": True})
            run = torch._inductor.aoti_load_package(path)
        except Exception as exc:  # no C++ compiler, an operator inductor cannot lower: this variant is out
            figures[variant] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
            continue
        with torch.inference_mode():
            cosines = _cosines(reference, [_first(run(x)) for x in calibration])
        figures[variant] = {"build_s": round(time.perf_counter() - started, 1), "min_cosine": round(min(cosines), 5)}
        if min(cosines) >= COSINE_MIN:
            runs[variant] = lambda x, run=run: _first(run(x))
    timed = _median_ms(runs, calibration, rounds) if len(runs) > 1 else {"current": None}
    for variant, ms in timed.items():
        figures.setdefault(variant, {})["ms"] = None if ms is None else round(ms, 2)
    winners = [v for v in runs if v != "current" and timed[v] <= MARGIN * timed["current"]]
    chosen = min(winners, key=lambda v: timed[v]) if winners else None
    for variant in variants:  # only the chosen package stays on disk
        if variant != chosen:
            (folder / f"{variant}.pt2").unlink(missing_ok=True)
    manifest = {"key": key, "variant": chosen, "figures": figures, "cosine_min": COSINE_MIN, "margin": MARGIN,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    temporary = folder / f".{MANIFEST}.{os.getpid()}"
    temporary.write_text(json.dumps(manifest, indent=2))
    os.replace(temporary, folder / MANIFEST)  # a reader sees the old manifest or the whole new one
    return manifest


def read_manifest(folder: Path, key: dict) -> dict | None:
    """The manifest in folder if it was written for key, else None (none built yet, or built for another machine)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("key") == key else None


def load(folder: Path, key: dict) -> Encoder | None:
    """The compiled encoder built for key, or None (not built, today's path won, or the package will not load)."""
    manifest = read_manifest(folder, key)
    if manifest is None or not manifest.get("variant"):
        return None
    path = folder / f"{manifest['variant']}.pt2"
    try:
        run = torch._inductor.aoti_load_package(str(path))
    except Exception as exc:  # a damaged or foreign package: serve from today's path
        log.warning("The compiled %s in %s could not be loaded (%s: %s); serving from the uncompiled model.",
                    manifest["variant"], path, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        return None
    return lambda x: _first(run(x))


class Compilable:
    """What a model adds to run its heavy encoder from a compiled package: _encoder_module and _uncompiled, then
    _encode where it ran the encoder."""

    _compiled: Encoder | None = None
    _compiled_shape: tuple[int, ...] | None = None
    compiled_variant: str | None = None  # the variant serving now, None while the uncompiled encoder serves

    def _encoder_module(self) -> torch.nn.Module:
        """A fresh fp32 copy of the encoder (pixel values in): the build traces it while the loaded one serves."""
        raise NotImplementedError

    def _uncompiled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The encoder as it serves today, the one a package must beat."""
        raise NotImplementedError

    def _encoder_inputs(self, photos: Sequence[Path]) -> list[torch.Tensor]:
        """The photos as the encoder takes them, one at a time (the model's own preprocess)."""
        from PIL import Image

        return [self.preprocess(Image.open(photo).convert("RGB"))["pixel_values"] for photo in photos]

    def compile_encoder(self, root: str | os.PathLike, photos: Sequence[Path], build_missing: bool = True) -> dict:
        """Serve the encoder from the package built for this model and machine; build it first when missing.

        Returns the manifest ("variant" None: today's path stays), or {"skipped": why} where nothing can be built.
        """
        self.load()
        if self.precision not in (prec.FP32, prec.INT8) or self.device is None or self.device.type != "cpu":
            return {"skipped": f"compiled encoders are for the CPU in fp32 or int8, not {self.precision} "
                               f"on {self.device}"}
        inputs = self._encoder_inputs(photos)
        key = {**artefact_key(self.role, self.version, inputs[0].shape), "precision": self.precision}
        folder = folder_for(root, key)
        manifest = read_manifest(folder, key)
        if manifest is None:
            if not build_missing:
                return {"skipped": f"no package built yet in {folder}"}
            log.info("Compiling the %s's encoder into %s (it serves uncompiled meanwhile).", self.role, folder)
            manifest = build(self._encoder_module(), self._uncompiled, inputs, folder, key)
        encoder = load(folder, key)
        if encoder is not None:
            self._compiled_shape, self._compiled = tuple(inputs[0].shape), encoder
            self.compiled_variant = manifest["variant"]
        return manifest

    def _encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The encoder's output: from the package for the shape it was built for, else as today."""
        compiled = self._compiled
        if compiled is not None and tuple(pixel_values.shape) == self._compiled_shape \
                and pixel_values.dtype == torch.float32:
            return compiled(pixel_values)
        return self._uncompiled(pixel_values)


class Plan:
    """Where encoders are compiled to and the photos they are calibrated and checked on (settings compiled*)."""

    def __init__(self, root: str | os.PathLike, photos: Sequence[Path]):
        self.root = Path(root)
        self.photos = list(photos)
        self.manifests: dict[str, dict] = {}  # role -> what the last apply found or built

    @classmethod
    def from_settings(cls, config) -> "Plan | None":
        """The plan the settings ask for, or None when compiled is off."""
        if config.compiled == "off":
            return None
        from pipelines.settings import CALIBRATION_PHOTOS

        return cls(config.compiled_dir, sorted(CALIBRATION_PHOTOS.glob("*.jpg")))

    def apply(self, models: Sequence[object], build_missing: bool = True) -> dict[str, dict]:
        """Serve each compilable model's encoder from its package, building missing ones (minutes each)."""
        for model in models:
            if not isinstance(model, Compilable):
                continue
            try:
                self.manifests[model.role] = model.compile_encoder(self.root, self.photos, build_missing)
            except Exception as exc:  # a failed build never stops serving: the uncompiled encoder goes on
                log.warning("Compiling the %s's encoder failed (%s: %s); it serves uncompiled.", model.role,
                            type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
                self.manifests[model.role] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        return self.manifests
