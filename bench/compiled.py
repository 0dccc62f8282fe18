"""Compiled encoders against the stock way, today's path and the competitors, in one process on the same weights.

`.venv/bin/python -m bench.compiled` (also a section of `python -m bench`): on the stand-ins (ViT-B/16, BLIP base)
and the real MobileNetV2, times photo by photo, interleaved so that a busy machine slows every path alike:

- classification and BLIP's image encoder: stock fp32 (transformers, eager), today's path (precision auto),
  the compiled package the demo builds (pipelines.models.compiled), ONNX Runtime fp32 and static int8 (QDQ),
  OpenVINO with NNCF int8; each with its logit cosine and top-1 agreement against fp32 on the same input;
- captions (20 tokens) and the full default request (intake, labels and caption): stock, today, compiled, and
  the whole caption on ONNX Runtime (bench/ort_caption.py: the int8 variant that holds the caption bound, else
  fp32), in the full request paired with the fastest classification competitor that held its bound;
- first start (build) and later start (load) of the packages;
- the real MobileNetV2 on the 63 sample photos: top-1 of fp32 eager and of the compiled path against the truth.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from bench.common import OUT, ROOT, machine, photos, standins

MOBILENET = ROOT.parent / "shared" / "models" / "mobilenet_v2_1.0_224"
CALIBRATION = 16  # photos the competitors' static int8 is calibrated on (the compiled path uses demo/examples)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _interleaved(runs: dict[str, Callable], inputs: list, rounds: int = 1) -> dict[str, list[float]]:
    """ms per call for each run, photo by photo in turn; outputs of the first round kept per run."""
    times = {name: [] for name in runs}
    with torch.inference_mode():
        for run in runs.values():
            run(inputs[0])
        for _ in range(rounds):
            for x in inputs:
                for name, run in runs.items():
                    started = time.perf_counter()
                    run(x)
                    times[name].append(1000 * (time.perf_counter() - started))
    return times


def _fidelity(reference: list[torch.Tensor], run: Callable, inputs: list) -> dict:
    with torch.inference_mode():
        outputs = [run(x).reshape(-1).float() for x in inputs]
    cos = [float(torch.nn.functional.cosine_similarity(a.reshape(-1).float(), b, dim=0))
           for a, b in zip(reference, outputs)]
    agree = sum(int(a.reshape(-1).argmax() == b.argmax()) for a, b in zip(reference, outputs))
    return {"cosine_min": round(min(cos), 5), "top1_agreement": f"{agree}/{len(inputs)}"}


def _competitors(module: torch.nn.Module, inputs: list, folder: Path) -> dict[str, Callable]:
    """ONNX Runtime fp32 and static int8 (QDQ), OpenVINO NNCF int8, from one ONNX export of the fp32 module."""
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "fp32.onnx"
    torch.onnx.export(module, (inputs[0],), str(onnx_path), input_names=["pixel_values"], output_names=["out"],
                      dynamo=True, external_data=False)
    calibration = [x.numpy() for x in inputs[:CALIBRATION]]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"pixel_values": x} for x in calibration])

        def get_next(self):
            return next(self.items, None)

    quant_pre_process(str(onnx_path), str(folder / "pre.onnx"), skip_symbolic_shape=True)
    quantize_static(str(folder / "pre.onnx"), str(folder / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1

    def session(path: Path) -> Callable:
        s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(s.run(None, {"pixel_values": x.numpy()})[0])

    runs = {"onnxruntime fp32": session(onnx_path), "onnxruntime static int8": session(folder / "int8.onnx")}
    try:
        import nncf
        import openvino as ov

        core = ov.Core()
        quantized = nncf.quantize(ov.convert_model(str(onnx_path)), nncf.Dataset(calibration),
                                  model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
        compiled = core.compile_model(quantized, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                                         "PERFORMANCE_HINT": "LATENCY"})
        runs["openvino nncf int8"] = lambda x: torch.from_numpy(np.asarray(compiled(x.numpy())[0]))
    except Exception as exc:  # OpenVINO is optional: the table says it is missing
        log(f"  openvino: {type(exc).__name__}: {exc}")
    return runs


def _encoder_table(name: str, stock: Callable, today: Callable, new: Callable | None, competitors: dict,
                   inputs: list, reference: list) -> dict:
    runs = {"stock fp32": stock, "today": today, **({"compiled": new} if new else {}), **competitors}
    times = _interleaved(runs, inputs)
    median = {k: statistics.median(v) for k, v in times.items()}
    rows = {k: {"ms": round(median[k], 1), "vs_stock": round(median["stock fp32"] / median[k], 2),
                "vs_today": round(median["today"] / median[k], 2), **_fidelity(reference, runs[k], inputs)}
            for k in runs}
    for k, row in rows.items():
        log(f"  {name:18s} {k:26s} {row['ms']:8.1f} ms  x{row['vs_stock']:.2f} stock  x{row['vs_today']:.2f} today"
            f"  cos {row['cosine_min']:.5f}  top-1 {row['top1_agreement']}")
    return rows


def bench_compiled(vit: Path, blip: Path, paths: list[Path], tokens: int, caption_photos: int,
                   folder: Path = OUT / "compiled", competitors: bool = True) -> dict:
    from transformers import AutoModelForImageClassification, BlipForConditionalGeneration

    from pipelines.intake import load_image
    from pipelines.models import precision as prec
    from pipelines.settings import CALIBRATION_PHOTOS
    from pipelines.tasks.caption import Captioner, _VisionEncoder
    from pipelines.tasks.classify import Classifier, _Logits

    calibration = sorted(CALIBRATION_PHOTOS.glob("*.jpg"))
    images = [load_image(p).image for p in paths]
    result: dict = {"calibration_photos": len(calibration), "starts": {}}

    # -- classification -----------------------------------------------------------------------------------------
    today = Classifier(vit, device="cpu", precision="auto").load()
    new, result["starts"]["classifier"] = _starts(lambda: Classifier(vit, device="cpu", precision="auto"), folder,
                                                  calibration)
    stock = AutoModelForImageClassification.from_pretrained(vit).eval()
    inputs = [today.preprocess(im)["pixel_values"] for im in images]
    with torch.inference_mode():
        reference = [stock(pixel_values=x).logits for x in inputs]
    log(f"classification: {len(inputs)} photos, today {today.precision}, compiled {new.compiled_variant}")
    rivals = _competitors(_Logits(stock), inputs, folder / "onnx-classifier") if competitors else {}
    result["classification"] = _encoder_table(
        "classification", lambda x: stock(pixel_values=x).logits, lambda x: today._uncompiled(x),
        (lambda x: new._compiled(x)) if new._compiled else None, rivals, inputs, reference)
    result["classification_precision"] = today.precision
    classifier_rivals = rivals  # kept: the full request pairs the best of them with the caption competitor
    gc.collect()

    # -- BLIP's image encoder --------------------------------------------------------------------------------------
    cap_today = Captioner(blip, device="cpu", precision="auto", max_new_tokens=tokens, min_new_tokens=tokens).load()
    cap_new, result["starts"]["captioner"] = _starts(
        lambda: Captioner(blip, device="cpu", precision="auto", max_new_tokens=tokens, min_new_tokens=tokens),
        folder, calibration)
    blip_stock = BlipForConditionalGeneration.from_pretrained(blip).eval()
    pixels = [cap_today.preprocess(im)["pixel_values"] for im in images[:caption_photos]]
    with torch.inference_mode():
        reference = [blip_stock.vision_model(pixel_values=x)[0] for x in pixels]
    log(f"caption encoder: {len(pixels)} photos, today {cap_today.precision}, compiled {cap_new.compiled_variant}")
    rivals = _competitors(_VisionEncoder(blip_stock), pixels, folder / "onnx-blip-vision") if competitors else {}
    result["caption_encoder"] = _encoder_table(
        "caption encoder", lambda x: blip_stock.vision_model(pixel_values=x)[0], cap_today._uncompiled,
        (lambda x: cap_new._compiled(x)) if cap_new._compiled else None, rivals, pixels, reference)
    result["caption_precision"] = cap_today.precision
    del rivals
    gc.collect()

    # -- captions and the full request -------------------------------------------------------------------------------
    processor = cap_today.processor

    def stock_caption(image):
        out = blip_stock.generate(**processor(images=image, return_tensors="pt"), max_new_tokens=tokens,
                                  min_new_tokens=tokens)
        return out[0]

    subset = paths[:caption_photos]
    runs = {"stock fp32": stock_caption, "today": cap_today, "compiled": cap_new}
    rival_fidelity: dict = {}
    if competitors:  # the whole caption on ONNX Runtime: the variant that holds the bound (bench/ort_caption.py)
        from bench import ort_caption
        try:
            found = ort_caption.competitors(blip_stock, processor, pixels, tokens, folder / "onnx-blip-caption")
            rival, ort_captioner, rival_fidelity = ort_caption.best(found, prec.CAPTION_MIN_COSINE)
            runs[rival] = lambda image: ort_captioner(image, tokens, tokens)
            del found
        except Exception as exc:  # a failed export leaves the table without the row, and says why
            log(f"  onnxruntime caption: {type(exc).__name__}: {exc}")
    times = _interleaved(runs, [load_image(p).image for p in subset])
    result["captions"] = _ratios(times)
    if rival_fidelity:
        result["captions"][rival].update(rival_fidelity)
    # teacher-forced next-token cosine of the compiled path against fp32, on the stock caption's tokens
    worst = 1.0
    for image, x in zip(images[:caption_photos], pixels):
        with torch.inference_mode():
            ids = stock_caption(image).unsqueeze(0)
        ref = prec.teacher_forced_logits(blip_stock, x, ids)
        worst = min(worst, prec.caption_fidelity(ref, cap_new.teacher_forced_logits(x, ids))["cosine_min"])
    result["captions"]["compiled"]["teacher_forced_cosine_min"] = round(worst, 5)

    from transformers import pipeline
    stock_classify = pipeline("image-classification", model=str(vit), device="cpu")
    runs = {"stock fp32": lambda p: (stock_classify(str(p)), stock_caption(load_image(p).image)),
            "today": lambda p: _request(load_image(p).image, today, cap_today),
            "compiled": lambda p: _request(load_image(p).image, new, cap_new)}
    if rival_fidelity:
        label, classify = _best_classifier(classifier_rivals, result["classification"], today.preprocess)
        if classify:
            runs[f"{rival} + {label}"] = lambda p: _request(load_image(p).image, classify,
                                                             lambda image: ort_captioner(image, tokens, tokens))
    result["full_request"] = _ratios(_interleaved(runs, subset))
    for name in ("captions", "full_request"):
        for k, row in result[name].items():
            log(f"  {name:18s} {k:26s} {row['ms']:8.1f} ms  x{row['vs_stock']:.2f} stock  x{row['vs_today']:.2f} today")
    del blip_stock, stock_classify, cap_today, cap_new, stock, today, new, classifier_rivals, runs
    gc.collect()

    # -- the real MobileNetV2 on the 63 photos -----------------------------------------------------------------------
    if (MOBILENET / "config.json").is_file():
        result["mobilenet_v2"] = bench_mobilenet(paths, folder)
    return result


def _starts(make: Callable, folder: Path, calibration: list[Path]) -> tuple[object, dict]:
    """A model served compiled, and its starts: the first (build, or load when built before) and a later one."""
    from pipelines.models import compiled

    model = make().load()
    started = time.perf_counter()
    manifest = compiled.Plan(folder, calibration).apply([model])[model.role]
    record = {"first_s": round(time.perf_counter() - started, 1), "variant": manifest.get("variant"),
              "figures": manifest.get("figures")}
    later = make().load()
    started = time.perf_counter()
    compiled.Plan(folder, calibration).apply([later], build_missing=False)
    record["later_s"] = round(time.perf_counter() - started, 2)
    return model, record


def _best_classifier(rivals: dict, table: dict, preprocess: Callable) -> tuple[str, Callable | None]:
    """The fastest classification competitor that held the bound (cosine 0.995, every top-1), as image -> logits."""
    from pipelines.models.precision import CLASSIFY_MIN_COSINE

    holding = [k for k in rivals if table[k]["cosine_min"] >= CLASSIFY_MIN_COSINE
               and table[k]["top1_agreement"].split("/")[0] == table[k]["top1_agreement"].split("/")[1]]
    if not holding:
        return "", None
    name = min(holding, key=lambda k: table[k]["ms"])
    # the top five as probabilities, as the served labels are
    return name, lambda image: rivals[name](preprocess(image)["pixel_values"]).softmax(-1).topk(5)


def _request(image, classifier, captioner) -> tuple:
    return classifier(image), captioner(image)


def _ratios(times: dict[str, list[float]]) -> dict:
    median = {k: statistics.median(v) for k, v in times.items()}
    return {k: {"ms": round(median[k], 1), "vs_stock": round(median["stock fp32"] / median[k], 2),
                "vs_today": round(median["today"] / median[k], 2)} for k in times}


def bench_mobilenet(paths: list[Path], folder: Path) -> dict:
    """The real MobileNetV2: fp32 eager, today's path and the compiled one, top-1 against the truth on every photo."""
    from transformers import AutoModelForImageClassification

    from pipelines.intake import load_image
    from pipelines.models import compiled
    from pipelines.settings import CALIBRATION_PHOTOS
    from pipelines.tasks.classify import Classifier

    with open(paths[0].parent / "labels.csv", newline="", encoding="utf-8") as fh:
        truth = {row["file"]: int(row["class_index"]) + 1 for row in csv.DictReader(fh)}  # 0 is background
    stock = AutoModelForImageClassification.from_pretrained(MOBILENET).eval()
    today = Classifier(MOBILENET, device="cpu", precision="auto").load()
    new = Classifier(MOBILENET, device="cpu", precision="auto").load()
    started = time.perf_counter()
    manifest = compiled.Plan(folder, sorted(CALIBRATION_PHOTOS.glob("*.jpg"))).apply([new])["classifier"]
    first_s = time.perf_counter() - started
    inputs = [today.preprocess(load_image(p).image)["pixel_values"] for p in paths]
    runs = {"stock fp32": lambda x: stock(pixel_values=x).logits, "today": today._uncompiled,
            **({"compiled": new._compiled} if new._compiled else {})}
    times = _interleaved(runs, inputs)
    result = {"precision": today.precision, "variant": manifest.get("variant"), "first_s": round(first_s, 1),
              "figures": manifest.get("figures"), **{"times": _ratios(times)}}
    with torch.inference_mode():
        for name, run in runs.items():
            top1 = [int(run(x).reshape(-1).argmax()) for x in inputs]
            result["times"][name]["top1_correct"] = sum(t == truth[p.name] for t, p in zip(top1, paths))
            result["times"][name]["top1"] = top1
    stock_top1 = result["times"]["stock fp32"]["top1"]
    for name in runs:
        result["times"][name]["same_top1_as_fp32"] = sum(a == b for a, b in zip(result["times"][name]["top1"],
                                                                                stock_top1))
        del result["times"][name]["top1"]
        row = result["times"][name]
        log(f"  mobilenet_v2       {name:26s} {row['ms']:8.1f} ms  x{row['vs_stock']:.2f} stock  "
            f"x{row['vs_today']:.2f} today  top-1 {row['top1_correct']}/{len(paths)}, "
            f"same as fp32 {row['same_top1_as_fp32']}/{len(paths)}")
    return result


def markdown(result: dict) -> list[str]:
    """The section of bench/results.md."""
    lines = ["", "## Compiled encoders (AOTInductor packages)", "",
             f"Calibrated and checked on {result['calibration_photos']} photos (demo/examples); ratios are medians "
             "of photo-by-photo interleaved runs in this one process.", ""]
    for name, title in (("classification", "Classification (ViT stand-in)"),
                        ("caption_encoder", "Caption encoder (BLIP base vision stand-in)")):
        lines += [f"**{title}**", "", "| path | ms | x stock | x today | min logit cosine | top-1 vs fp32 |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {k} | {r['ms']} | {r['vs_stock']} | {r['vs_today']} | {r['cosine_min']} | {r['top1_agreement']} |"
                  for k, r in result[name].items()]
        lines.append("")
    lines += ["**Captions**", "", "| path | ms | x stock | x today | min teacher-forced cosine | same tokens as fp32 |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {k} | {r['ms']} | {r['vs_stock']} | {r['vs_today']} | {r.get('teacher_forced_cosine_min', '')} | "
              f"{r.get('same_tokens', '')} |" for k, r in result["captions"].items()]
    lines += ["", "**Full request (intake, labels, caption)**", "", "| path | ms | x stock | x today |",
              "|---|---:|---:|---:|"]
    lines += [f"| {k} | {r['ms']} | {r['vs_stock']} | {r['vs_today']} |" for k, r in result["full_request"].items()]
    lines += ["", "\"compiled\" serves each model from the package its first start kept (Starts, below); a model with none "
              "kept is served by today's path in that row too.", ""]
    lines += ["**Starts**", "", "| model | variant kept | first start (build) s | later start (load) s |",
              "|---|---|---:|---:|"]
    lines += [f"| {k} | {v['variant'] or 'none (uncompiled stays)'} | {v['first_s']} | {v['later_s']} |"
              for k, v in result["starts"].items()]
    if "mobilenet_v2" in result:
        m = result["mobilenet_v2"]
        lines += ["", f"**Real MobileNetV2** (precision {m['precision']}, compiled variant {m['variant']}, "
                  f"built in {m['first_s']} s)", "", "| path | ms | x stock | x today | top-1 correct | same top-1 as fp32 |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {k} | {r['ms']} | {r['vs_stock']} | {r['vs_today']} | {r['top1_correct']} | {r['same_top1_as_fp32']} |"
                  for k, r in m["times"].items()]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compiled", description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="use only the first N photos")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--caption-photos", type=int, default=8)
    parser.add_argument("--no-competitors", action="store_true", help="leave out ONNX Runtime and OpenVINO")
    parser.add_argument("--fresh", action="store_true", help="remove earlier packages first (time a first start)")
    parser.add_argument("--out", type=Path, default=OUT / "compiled.json")
    args = parser.parse_args(argv)
    from bench.run import quiet_transformers
    from pipelines.models.precision import configure_threads

    quiet_transformers()
    configure_threads(0)
    folder = OUT / "compiled"
    if args.fresh and folder.exists():
        import shutil
        shutil.rmtree(folder)
    vit, blip = standins()
    paths = photos()[: args.limit or None]
    result = {"machine": machine(), "command": "python -m bench.compiled " + " ".join(argv or sys.argv[1:]),
              **bench_compiled(vit, blip, paths, args.tokens, args.caption_photos, folder, not args.no_competitors)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("\n".join(markdown(result)))


if __name__ == "__main__":
    main()
