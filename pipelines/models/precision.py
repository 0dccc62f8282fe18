"""Numeric precision of the models: which modes this machine runs well, and how a model is put in one.

Modes:
- ``fp32``: the checkpoint as it is; the reference every other mode is measured against.
- ``bf16``: weights and activations in bfloat16. Fast only where the hardware has bf16 arithmetic (a GPU, or a
  CPU with AVX512-BF16 or AMX); elsewhere the CPU emulates it and it is slower than fp32.
- ``int8``: CPU only. Every ``nn.Linear`` gets int8 weights (symmetric, one scale per output channel) and
  quantises its input on the fly (dynamic quantisation, fbgemm/oneDNN kernels, VNNI where the CPU has it);
  everything else (embeddings, layer norms, attention, the patch convolution) stays fp32.
- ``auto``: resolved once, at load time, to the fastest mode that keeps the fidelity bounds on this machine:
  on a CPU, bf16 where it has AMX, else int8 where torch has the quantised kernels, else bf16 where it has
  AVX512-BF16, else fp32; on a GPU, bf16 where it has bf16, else fp32. A convolutional model (linear layers doing
  under ``REDUCED_MIN_LINEAR_SHARE`` of its multiply-adds) stays in fp32 everywhere: int8 leaves its convolutions in
  fp32, so it runs no faster, and bf16 breaks the logit bound on the real MobileNetV2 (cosine 0.986 over the 63
  shared photos). All modes keep the bounds on the stand-ins
  (see bench/results.md), so the order is by speed: measured here (AVX-512 with VNNI, no bf16) int8 is 2.1x fp32
  and bf16 is 3x slower than fp32; AMX's bf16 tiles outrun VNNI int8 on paper, not measured (no such machine).

The fidelity bounds (``CLASSIFY_MIN_COSINE``, ``CAPTION_MIN_COSINE``) and the measures behind them live here too,
so the tests and the benchmark check the same thing.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import warnings
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

FP32, BF16, INT8, AUTO = "fp32", "bf16", "int8", "auto"
PRECISIONS = (FP32, BF16, INT8)
CHOICES = (AUTO, *PRECISIONS)

# Fidelity bounds against the fp32 reference on the same preprocessed input.
CLASSIFY_MIN_COSINE = 0.995  # cosine of the classifier's logits, on every image
CAPTION_MIN_COSINE = 0.99  # cosine of the captioner's teacher-forced next-token logits

# Dynamic int8 speeds up nn.Linear only: below this share of the model's multiply-adds in linear layers (MobileNetV2:
# 0.4%) it runs as fast as fp32 while its answers move, and bf16 rounds the activations of every convolution (on
# MobileNetV2 the logit cosine fell to 0.986, under CLASSIFY_MIN_COSINE), so auto keeps such a model in fp32.
# ViT's linear layers do over 99%.
REDUCED_MIN_LINEAR_SHARE = 0.5


# --- what this machine has ------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (Linux); empty where /proc/cpuinfo does not exist."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """Whether the CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX), so bf16 is not emulated."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_amx() -> bool:
    """Whether the CPU has AMX tiles for bf16 matrix products (Xeon Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags()


def cpu_has_vnni() -> bool:
    """Whether the CPU has int8 dot-product instructions (AVX512-VNNI or AVX-VNNI)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})


def int8_available() -> bool:
    """Whether this torch build has the dynamic int8 linear kernels for this CPU."""
    engines = set(torch.backends.quantized.supported_engines)
    ops = torch.ops.quantized
    try:
        return bool(engines & {"x86", "fbgemm", "onednn"}) and hasattr(ops, "linear_dynamic") \
            and hasattr(ops, "linear_prepack")
    except Exception:  # a build without the quantized ops
        return False


def bf16_fast(device: torch.device) -> bool:
    """Whether bf16 runs natively (not emulated) on device."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_precision(asked: str | None, device: torch.device, convolutional: bool = False) -> str:
    """The concrete mode (fp32, bf16 or int8) for the asked one on device; ValueError for what cannot run.

    convolutional: the model does most of its work outside linear layers (see linear_share): auto keeps it in fp32.
    """
    name = (asked or AUTO).strip().lower()
    if name not in CHOICES:
        raise ValueError(f"unknown precision {asked!r}; expected one of {', '.join(CHOICES)}.")
    if name == AUTO:
        if convolutional:
            return FP32
        if device.type == "cpu":
            if cpu_has_amx():
                return BF16
            if int8_available():
                return INT8
        return BF16 if bf16_fast(device) else FP32
    if name == INT8:
        if device.type != "cpu":
            raise ValueError(f"precision int8 runs on the CPU only, not on {device.type}; use bf16 or fp32 there.")
        if not int8_available():
            raise ValueError(f"precision int8 needs torch's quantized CPU kernels, which torch {torch.__version__} "
                             "lacks here; use fp32 or auto.")
    if name == BF16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision bf16 was asked for, but this GPU has no bf16; use fp32 or auto.")
    return name


def load_dtype(precision: str) -> torch.dtype:
    """The dtype to read the weights in: int8 reads them as bf16, so quantising never holds a full fp32 copy."""
    return torch.float32 if precision == FP32 else torch.bfloat16


def describe_machine() -> dict:
    """What decides the precision here, for logs and benchmark reports."""
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16_or_amx": cpu_has_native_bf16(),
        "amx": cpu_has_amx(),
        "vnni": cpu_has_vnni(),
        "int8_kernels": int8_available(),
        "quantized_engine": torch.backends.quantized.engine,
        "cuda": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "available_cpus": available_cpus(),
        "torch_threads": torch.get_num_threads(),
    }


# --- threads --------------------------------------------------------------------------------------------------------

def _cgroup_cpu_limit() -> float | None:
    """The CPU quota of this container in CPUs (cgroup v2 cpu.max or v1 cfs quota), or None without one."""
    candidates = (("/sys/fs/cgroup/cpu.max", None),
                  ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
                  ("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us"))
    for quota_file, period_file in candidates:
        try:
            with open(quota_file, encoding="ascii") as fh:
                fields = fh.read().split()
            if period_file is None:  # v2: "max 100000" or "200000 100000"
                quota, period = fields[0], fields[1]
            else:
                with open(period_file, encoding="ascii") as fh:
                    quota, period = fields[0], fh.read().strip()
        except (OSError, IndexError):
            continue
        if quota in ("max", "-1"):
            return None
        try:
            return int(quota) / int(period)
        except (ValueError, ZeroDivisionError):
            return None
    return None


def available_cpus() -> int:
    """CPUs this process may really use: its CPU affinity, capped by a container's CPU quota.

    os.cpu_count() (and torch's default thread count) report the host's CPUs; in a container limited by a quota,
    as a Hugging Face Space is, one thread per host CPU oversubscribes the few it may use and throughput collapses.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_limit()
    if quota is not None:
        count = min(count, max(1, int(quota)))
    return max(1, count)


def configure_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads: threads, or one per available CPU when 0; returns the number set."""
    count = threads if threads and threads > 0 else available_cpus()
    torch.set_num_threads(count)
    return count


# --- int8 -----------------------------------------------------------------------------------------------------------

class Int8Linear(nn.Module):
    """nn.Linear with int8 weights (per output channel) and its input quantised on each call (dynamic int8)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        weight = weight.detach().to(torch.float32)
        self.out_features, self.in_features = weight.shape
        bias = None if bias is None else bias.detach().to(torch.float32).clone()
        scales = (weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0).to(torch.float64)
        zero_points = torch.zeros(weight.shape[0], dtype=torch.int64)
        with warnings.catch_warnings():  # quantized tensors are marked for a future move to torchao
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        # Without VNNI, fbgemm sums u8*s8 pairs in int16: one bit less range keeps it from saturating.
        self._reduce_range = not cpu_has_vnni()

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        return cls(linear.weight, linear.bias)

    @classmethod
    def concatenated(cls, parts: Sequence["Int8Linear"]) -> "Int8Linear":
        """One Int8Linear whose output is parts' outputs side by side, with exactly their int8 weights and scales."""
        weights, biases = zip(*[torch.ops.quantized.linear_unpack(part._packed) for part in parts])
        qweight = torch._make_per_channel_quantized_tensor(
            torch.cat([w.int_repr() for w in weights]), torch.cat([w.q_per_channel_scales() for w in weights]),
            torch.cat([w.q_per_channel_zero_points() for w in weights]), 0)
        if len({b is None for b in biases}) != 1:
            raise ValueError("some parts have a bias and some do not")
        bias = None if biases[0] is None else torch.cat(biases)
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.out_features, fused.in_features = qweight.shape
        fused._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        fused._reduce_range = parts[0]._reduce_range
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if x.dim() >= 2:  # the kernel takes any leading dimensions itself: no reshapes on the one-token decoder path
            return torch.ops.quantized.linear_dynamic(x, self._packed, self._reduce_range)
        return torch.ops.quantized.linear_dynamic(x[None], self._packed, self._reduce_range)[0]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 dynamic"


def concatenated(parts: Sequence[nn.Module]) -> nn.Module | None:
    """One layer computing parts' outputs side by side from the same input (all nn.Linear or all Int8Linear), else None.

    One call instead of several costs less dispatch, and a wider matrix keeps the cores busier; int8 results are
    bit for bit those of the parts (the input's scale comes from the same input, the weights keep their scales).
    nn.Linear parts are left holding views of the fused weights.
    """
    if not parts or len({getattr(part, "in_features", None) for part in parts}) != 1:
        return None
    if all(type(part) is Int8Linear for part in parts):
        try:
            return Int8Linear.concatenated(parts)
        except ValueError:  # some with a bias, some without
            return None
    if not all(type(part) is nn.Linear for part in parts) or len({p.weight.dtype for p in parts}) != 1 \
            or len({part.bias is None for part in parts}) != 1:
        return None
    biases = [part.bias for part in parts]
    fused = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts), bias=biases[0] is not None,
                      device=parts[0].weight.device, dtype=parts[0].weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([part.weight for part in parts]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat(biases))
        # the parts keep working on views of the fused tensors, so the model holds its weights once, not twice
        start = 0
        for part in parts:
            rows = slice(start, start + part.out_features)
            part.weight = nn.Parameter(fused.weight[rows], requires_grad=False)
            if fused.bias is not None:
                part.bias = nn.Parameter(fused.bias[rows], requires_grad=False)
            start = rows.stop
    return fused.eval().requires_grad_(False)


_MAC_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def linear_share(model: nn.Module, inputs: dict) -> float:
    """The share of model's multiply-adds done in nn.Linear layers (the ones int8 quantises), for one call on inputs.

    Run it on a model and inputs on the meta device: shapes only, no weights read and no arithmetic done.
    """
    macs = {"linear": 0, "conv": 0}

    def count(module, _args, out):
        if isinstance(module, nn.Linear):
            macs["linear"] += out.numel() * module.in_features
        else:  # each output value of a convolution is a dot product over its kernel and input channels of its group
            kernel = 1
            for side in module.kernel_size:
                kernel *= side
            macs["conv"] += out.numel() * (module.in_channels // module.groups) * kernel

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, _MAC_LAYERS)]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    total = macs["linear"] + macs["conv"]
    return macs["linear"] / total if total else 1.0


# exact(name) -> the tensor saved under name in the checkpoint (fp32), or None: lets a model loaded in bf16 get its
# linear layers quantised from the exact fp32 weights and every other tensor back in fp32, one tensor at a time.
Exact = Callable[[str], "torch.Tensor | None"]


def _aliases(model: nn.Module) -> dict[int, list[str]]:
    """Every name of each parameter and buffer (tied weights have several), keyed by the tensor's id."""
    names: dict[int, list[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(tensor), []).append(name)
    return names


def _exact(exact: Exact | None, tensor: torch.Tensor | None, names: list[str]) -> torch.Tensor | None:
    """The checkpoint's own copy of tensor under any of its names, else tensor itself."""
    if tensor is None or exact is None:
        return tensor
    for name in names:
        found = exact(name)
        if found is not None and found.shape == tensor.shape:
            return found
    return tensor


def quantize_linears(model: nn.Module, skip: Iterable[str] = (), exact: Exact | None = None) -> int:
    """Replace every nn.Linear in model (except the named ones) by an Int8Linear, in place; returns how many.

    Each weight is dropped as soon as its int8 copy exists, so memory never holds two copies of the model.
    """
    skip = set(skip)
    aliases = _aliases(model)
    # (parent, attribute) pairs only: a list holding the linear modules themselves would keep every replaced
    # weight alive until the end
    targets = [(parent, name, f"{parent_name}.{name}" if parent_name else name)
               for parent_name, parent in model.named_modules()
               for name, child in parent.named_children() if isinstance(child, nn.Linear)]
    count = 0
    for parent, name, full in targets:
        if full in skip:
            continue
        child = getattr(parent, name)
        weight = _exact(exact, child.weight, aliases.get(id(child.weight), [f"{full}.weight"]))
        bias = _exact(exact, child.bias, aliases.get(id(child.bias), [f"{full}.bias"]))
        setattr(parent, name, Int8Linear(weight, bias))
        del child, weight, bias
        count += 1
        _trim()  # the freed weight goes back to the OS now, so the peak stays near the larger of the two copies
    return count


def restore_fp32(model: nn.Module, exact: Exact | None = None) -> None:
    """Put every floating point parameter and buffer that is not fp32 back in fp32, from the checkpoint if it can."""
    aliases = _aliases(model)
    done: dict[int, torch.Tensor] = {}  # tied tensors stay tied
    for module_name, module in model.named_modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in list(store.items()):
                if tensor is None or not tensor.is_floating_point() or tensor.dtype == torch.float32:
                    continue
                if id(tensor) not in done:
                    full = f"{module_name}.{name}" if module_name else name
                    value = _exact(exact, tensor, aliases.get(id(tensor), [full])).detach().to(torch.float32)
                    done[id(tensor)] = nn.Parameter(value, requires_grad=False) if store is module._parameters \
                        else value
                store[name] = done[id(tensor)]


def apply_precision(model: nn.Module, precision: str, device: torch.device, exact: Exact | None = None) -> nn.Module:
    """model (as loaded with load_dtype(precision)) on device, in eval mode and in the given mode."""
    model = model.eval()
    if precision == INT8:
        quantize_linears(model, exact=exact)
        restore_fp32(model, exact=exact)
        release_freed_memory()
        return model
    dtype = torch.float32 if precision == FP32 else torch.bfloat16
    return model.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _trim() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def release_freed_memory() -> None:
    """Hand memory freed while converting back to the OS (glibc keeps freed heap pages otherwise)."""
    gc.collect()
    _trim()


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype inputs should have: the first floating point parameter's (fp32 for an int8 model)."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


# --- fidelity -------------------------------------------------------------------------------------------------------

def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dimension, in float64."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def classification_fidelity(reference: torch.Tensor, logits: torch.Tensor) -> dict:
    """Logit cosine (min, mean) and top-1 agreement of logits [n, classes] against the fp32 reference."""
    cos = cosine(reference, logits).reshape(-1)
    agree = (reference.argmax(-1) == logits.argmax(-1)).double().reshape(-1)
    return {"n": int(cos.numel()), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "top1_agreement": float(agree.mean()), "within_bound": bool(cos.min() >= CLASSIFY_MIN_COSINE)}


def teacher_forced_logits(model: nn.Module, pixel_values: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """A BLIP captioner's next-token logits at every position of token_ids [1, n] (bos first), in one pass."""
    pixel_values = pixel_values.to(model_dtype(model))
    with torch.inference_mode():
        image_embeds = model.vision_model(pixel_values=pixel_values)[0]
        out = model.text_decoder(input_ids=token_ids, encoder_hidden_states=image_embeds, use_cache=False)
    return out.logits[0].float()


def caption_fidelity(reference: torch.Tensor, logits: torch.Tensor) -> dict:
    """Per-position teacher-forced logit cosine (min, mean) and next-token agreement against the fp32 reference."""
    cos = cosine(reference, logits).reshape(-1)
    agree = (reference.argmax(-1) == logits.argmax(-1)).double().reshape(-1)
    return {"positions": int(cos.numel()), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "next_token_agreement": float(agree.mean()), "within_bound": bool(cos.min() >= CAPTION_MIN_COSINE)}
