"""Shared model loading: device choice, hub-or-folder resolution, one lazy thread-safe load, readable load errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from pathlib import Path

import torch

from . import precision as prec
from . import defaults

log = logging.getLogger(__name__)

# Failure kinds a ModelLoadError carries, so callers can react without parsing text.
OFFLINE = "offline"
NOT_FOUND = "not_found"
NO_FOLDER = "no_folder"
NOT_A_MODEL = "not_a_model"
DEVICE = "device"
PRECISION = "precision"
OTHER = "other"

# Transport errors come from httpx, httpx2 or requests depending on the hub version; match them by name.
_NETWORK_ERROR_NAMES = {"ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError", "TransportError",
                        "ReadTimeout", "ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError",
                        "RevisionResolutionError", "gaierror"}


HUB_PROBE_TIMEOUT_S = 3.0  # a reachable hub answers a HEAD in well under this; an unreachable one never does
_hub_probes: dict[str, str | None] = {}  # endpoint -> why it cannot be reached, or None; once per process
_hub_probe_lock = threading.Lock()
# transformers builds a model under process-wide patches (the default dtype, PreTrainedModel.tie_weights and
# torch.linspace swapped out, then back): two builds at once in two threads can restore them in the wrong order and
# leave tie_weights a no-op for good, so every later model keeps tied weights on the meta device. Builds take turns.
BUILD_LOCK = threading.RLock()


def hub_unreachable(refresh: bool = False, timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub (HF_ENDPOINT) cannot be reached, or None if it answers; probed once per process.

    huggingface_hub retries every file with backoff when the hub does not answer, which kept the page "loading"
    for minutes: one short probe decides instead, and the models then load from the local cache or fail at once.
    """
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return None  # offline mode never asks the hub; nothing to probe
    endpoint = constants.ENDPOINT
    with _hub_probe_lock:
        if refresh or endpoint not in _hub_probes:
            _hub_probes[endpoint] = _probe(endpoint, timeout)
        return _hub_probes[endpoint]


def _probe(endpoint: str, timeout: float) -> str | None:
    import httpx

    try:
        httpx.head(endpoint, timeout=timeout)  # any HTTP answer, even an error status, means it is reachable
    except httpx.TimeoutException:
        return f"{endpoint} did not answer within {timeout:g} s"
    except httpx.HTTPError as exc:
        return f"{endpoint}: {one_line(exc)}"
    return None


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which model, why, and how to point at a local folder."""

    def __init__(self, message: str, *, model: str, kind: str = OTHER):
        super().__init__(message)
        self.model = model
        self.kind = kind


def resolve_device(device: str) -> torch.device:
    """The torch device for "auto" (cuda if available, else cpu), "cpu" or "cuda[:n]"."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA GPU "
                             f"(torch {torch.__version__}); use device 'cpu' or 'auto'.")
        return torch.device(name)
    raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu' or 'cuda'.")


def is_local_folder(model: str) -> bool:
    """Whether model names a directory on disk (anything else is taken as a hub id)."""
    return Path(model).expanduser().is_dir()


def _looks_like_path(model: str) -> bool:
    """Whether a name that is not on disk was still meant as a path rather than a hub id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if model.startswith((".", "/", "~")) or "\\" in model or os.path.isabs(model) or os.path.exists(model):
        return True
    try:
        validate_repo_id(model)
    except HFValidationError:
        return True
    return False


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The exception's type and the first line of its message, never a traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _chain(exc: BaseException):
    """The exception and the ones it was raised from, without looping."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for e in _chain(exc) for cls in type(e).__mro__}


def classify_failure(exc: BaseException) -> str:
    """Which kind of load failure exc is: OFFLINE, NOT_FOUND or OTHER."""
    names = _names(exc)
    if "GatedRepoError" in names:
        return OTHER  # the repository exists; the one-line summary says how to get access
    if "RepositoryNotFoundError" in names:
        return NOT_FOUND
    if names & _NETWORK_ERROR_NAMES or any("couldn't connect to" in str(e) for e in _chain(exc)):
        return OFFLINE
    return OTHER


def _cached(model_id: str, commit: str) -> bool:
    """Whether a snapshot of this exact commit is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    if len(commit) != 40:
        return False
    return isinstance(try_to_load_from_cache(model_id, "config.json", revision=commit), str)


def _short(revision: str | None) -> str:
    if not revision:
        return "main"
    return revision[:12] if len(revision) == 40 else revision


NOTE_FILES = {"README.md", "training.json", "history.json", "evaluation.json"}  # written beside a trained model


def local_revision(folder: str | os.PathLike) -> str:
    """A local folder's revision: "local-" and a hash of its files' names and contents, so two fine-tunes differ.

    Only the folder's own visible files count: `hf download --local-dir` keeps its bookkeeping in .cache/.
    Notes about the model (its card, training record, evaluation) are no part of it: evaluating a version
    again must not turn it into another version.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.name not in NOTE_FILES):
        digest.update(path.name.encode("utf-8") + b"\0")
        with open(path, "rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return f"local-{digest.hexdigest()[:16]}"


def version_of(model_id: str, revision: str | None) -> str:
    """A model version as the log records it: the id and its revision ("id@revision"), or the id alone."""
    return f"{model_id}@{revision}" if revision else model_id


class LazyModel:
    """A model loaded on first use, exactly once, from a hub id or a local folder; remembers a failed load."""

    role = "model"
    setting_env = "IMAGEREC_MODEL"
    setting_flag = "--model"

    def __init__(self, model: str | os.PathLike, revision: str | None = None, device: str = "auto",
                 precision: str = prec.FP32):
        self._model_id = str(model)
        self._asked_revision = revision or None
        self._device_name = device
        self._device: torch.device | None = None
        self._asked_precision = precision or prec.AUTO
        self._precision: str | None = None
        self._lock = threading.Lock()
        self._loaded = False
        self._error: ModelLoadError | None = None
        self._revision: str | None = None

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def revision(self) -> str | None:
        """The loaded revision: the hub's commit hash, the asked revision, or local_revision(folder); None before."""
        return self._revision

    @property
    def version(self) -> str | None:
        """The loaded version (version_of its id and revision); None before loading."""
        return version_of(self._model_id, self._revision) if self._loaded else None

    def planned_version(self) -> str:
        """The version a load would record, found without loading the weights (a folder's hash, the hub's commit)."""
        if self._loaded:
            return self.version
        return version_of(self._model_id, self._locate()[2])

    @property
    def device(self) -> torch.device | None:
        return self._device

    @property
    def precision(self) -> str | None:
        """The precision the model runs in (fp32, bf16 or int8; "auto" resolved at load), None before loading."""
        return self._precision

    @property
    def asked_precision(self) -> str:
        """The precision setting as given: auto, fp32, bf16 or int8."""
        return self._asked_precision

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def error(self) -> str | None:
        """Why the last load failed, or None."""
        return str(self._error) if self._error else None

    def load(self, retry: bool = False):
        """Load once (safe from many threads); re-raise a remembered failure unless retry is set."""
        if self._loaded:
            return self
        with BUILD_LOCK, self._lock:
            if self._loaded:
                return self
            if self._error is not None and not retry:
                raise self._error
            try:
                self._load_locked(retry)
            except ModelLoadError as exc:
                self._error = exc
                # one line per failed model, so the operator sees which one and why without opening the page
                log.error("%s", str(exc).replace("\n", " "))
                raise
            self._error = None
            self._loaded = True
        return self

    def _load_locked(self, retry: bool = False) -> None:
        try:
            self._device = resolve_device(self._device_name)
        except ValueError as exc:
            raise self._failure(f"{exc}", DEVICE) from None
        try:
            self._precision = prec.resolve_precision(self._asked_precision, self._device)
        except ValueError as exc:
            raise self._failure(f"{exc}", PRECISION) from None
        try:
            source, pretrained_kwargs, revision = self._locate(retry)
            try:
                if self._precision != prec.FP32:
                    self._weigh_reduced(source, pretrained_kwargs)
                self._load_components(source, pretrained_kwargs)
            except ModelLoadError:
                raise
            except Exception as exc:  # any loader error becomes one readable line
                raise self._explain(exc) from None
        except ModelLoadError:
            self._precision = None
            raise
        self._revision = revision
        if self._precision == prec.BF16 and not prec.bf16_fast(self._device):
            # asked for by name (auto never picks it here): say why the answers come slowly
            log.warning("The %s '%s' runs in bf16, which this CPU emulates (no AVX512-BF16 or AMX): expect it "
                        "several times slower than fp32.", self.role, self._model_id)

    def _weigh_reduced(self, source: str, pretrained_kwargs: dict) -> None:
        """Keep auto in fp32 for a model whose linear layers do little of its work (prec.REDUCED_MIN_LINEAR_SHARE)."""
        share = self._linear_share(source, pretrained_kwargs)
        if share is None or share >= prec.REDUCED_MIN_LINEAR_SHARE:
            return
        if self._asked_precision.strip().lower() == prec.AUTO:
            self._precision = prec.resolve_precision(prec.AUTO, self._device, convolutional=True)
        elif self._precision == prec.INT8:
            log.warning("The %s '%s' runs in int8 as asked, but int8 quantises only linear layers, which do %.1f%% "
                        "of its multiply-adds: it runs about as fast as fp32.", self.role, self._model_id, 100 * share)

    def _linear_share(self, source: str, pretrained_kwargs: dict) -> float | None:
        """The share of the model's multiply-adds in linear layers (prec.linear_share), or None if not known."""
        return None

    def _fresh_fp32(self, cls) -> torch.nn.Module:
        """Another copy of the weights in fp32, apart from the one serving (a compiled build traces it)."""
        source, pretrained_kwargs, _ = self._locate()
        with BUILD_LOCK:
            return cls.from_pretrained(source, **pretrained_kwargs).eval()

    def _locate(self, retry: bool = False) -> tuple[str, dict, str]:
        """The path or id to load, the from_pretrained kwargs, and the revision to record."""
        model = self._model_id
        if is_local_folder(model):
            folder = Path(model).expanduser()
            if not (folder / "config.json").is_file():
                raise self._failure(f"the folder {folder.resolve()} has no config.json, so it holds no saved model. "
                                    f"{self._folder_hint()}", NOT_A_MODEL)
            return str(folder), {}, local_revision(folder)
        if _looks_like_path(model):
            where = Path(model).expanduser().resolve()
            what = "is a file, not a folder" if where.exists() else "does not exist"
            raise self._failure(f"the local folder {where} {what}. {self._folder_hint()}", NO_FOLDER)
        down = hub_unreachable(refresh=retry)  # a retry (admin_reload) asks again: the hub may be back
        revision = self._resolve_hub_revision(down)
        commit = getattr(revision, "resolved", None) or str(revision)
        kwargs = {"revision": revision}
        if down or _cached(model, commit):
            # A commit never changes, so a cached snapshot is complete: no file lookups on the hub, which
            # would otherwise retry for many seconds when it cannot be reached.
            kwargs["local_files_only"] = True
        return model, kwargs, commit

    def _resolve_hub_revision(self, down: str | None = None):
        """The asked (or pinned) revision resolved to a commit once, so every file comes from one commit."""
        from huggingface_hub import HfApi, constants

        asked = defaults.revision_for(self._model_id, self._asked_revision)
        try:
            return HfApi().resolve_revision(self._model_id, revision=asked,
                                            local_files_only=bool(down) or constants.is_offline_mode())
        except Exception as exc:  # unreachable hub, unknown repo or revision: say so now, not after retries
            if down and classify_failure(exc) == OFFLINE:
                raise self._failure(
                    f"the Hugging Face hub cannot be reached ({down}) and the model is not in the local cache. "
                    f"Download it once with `hf download {self._model_id}"
                    f"{f' --revision {asked}' if asked else ''}` or point {self._setting()} at a local folder "
                    "that holds it.", OFFLINE, asked) from None
            raise self._explain(exc, asked) from None

    def _explain(self, exc: BaseException, revision: str | None = None) -> ModelLoadError:
        """A ModelLoadError for exc, worded by the kind of failure."""
        kind = classify_failure(exc)
        revision = revision or defaults.revision_for(self._model_id, self._asked_revision)
        if kind == OFFLINE:
            return self._failure(
                "the Hugging Face hub cannot be reached and the model is not in the local cache. "
                f"Download it once with `hf download {self._model_id}"
                f"{f' --revision {revision}' if revision else ''}` or point {self._setting()} at a local folder "
                "that holds it.", kind, revision)
        if kind == NOT_FOUND:
            return self._failure(
                "the Hugging Face hub has no such model repository (check the id; a private one needs "
                f"`hf auth login`). Use a valid model id, or point {self._setting()} at a local folder that holds "
                "the model.", kind, revision)
        return self._failure(f"{one_line(exc)}. To use a model on disk, point {self._setting()} at a local folder "
                             "that holds it.", kind, revision)

    def _failure(self, reason: str, kind: str, revision: str | None = None) -> ModelLoadError:
        at = f" (revision {_short(revision)})" if revision else ""
        return ModelLoadError(f"Could not load the {self.role} '{self._model_id}'{at}: {reason}",
                              model=self._model_id, kind=kind)

    def _setting(self) -> str:
        return f"{self.setting_env} / {self.setting_flag}"

    def _folder_hint(self) -> str:
        return (f"Point {self._setting()} at a local folder that holds the model (its config.json and weights, "
                "as save_pretrained or `hf download --local-dir` writes them), or use a Hugging Face model id.")

    def _load_components(self, source: str, pretrained_kwargs: dict) -> None:
        """Load processor and model from source with from_pretrained(**pretrained_kwargs); subclasses implement."""
        raise NotImplementedError

    def _prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model on the chosen device, in eval mode."""
        return model.to(self._device).eval()

    def _load_with_processor(self, model_class, processor_class, source: str, pretrained_kwargs: dict):
        """The model, then its processor (the model's config errors say more), kept with the model's input dtype."""
        model = self._load_model(model_class, source, pretrained_kwargs)
        self.processor = processor_class.from_pretrained(source, **pretrained_kwargs)
        self.model = model
        self._input_dtype = prec.model_dtype(model)
        return model

    def _on_device(self, inputs) -> dict[str, torch.Tensor]:
        """A processor's tensors on the model's device, floating ones in the model's input dtype."""
        return {k: v.to(self._device, self._input_dtype) if v.is_floating_point() else v.to(self._device)
                for k, v in inputs.items()}

    def _load_model(self, cls, source: str, pretrained_kwargs: dict, **kwargs) -> torch.nn.Module:
        """cls.from_pretrained in the resolved precision, on the device, in eval mode.

        fp32 is the plain from_pretrained (weights memory-mapped). bf16 and int8 read the safetensors with pread, one
        tensor at a time converted to bf16, so the process never maps the whole fp32 file: a mapped file's pages
        count as resident memory, and fp32 file plus bf16 copy would double the peak. int8 then quantises each
        linear layer from its exact fp32 weights, read again from the file, and restores every other tensor in fp32.
        """
        precision = self._precision or prec.FP32
        if precision == prec.FP32:
            return self._prepare(cls.from_pretrained(source, **pretrained_kwargs, **kwargs))
        dtype = prec.load_dtype(precision)
        files = _safetensors_files(source, pretrained_kwargs)
        with contextlib.ExitStack() as stack:
            weights = _WeightFiles(stack, files) if files else None
            if weights is None:
                model = cls.from_pretrained(source, **pretrained_kwargs, dtype=dtype, **kwargs)
            else:
                from transformers import AutoConfig

                config = AutoConfig.from_pretrained(source, **pretrained_kwargs)
                model_cls = getattr(cls, "_model_mapping", None)
                model_cls = model_cls[type(config)] if model_cls is not None else cls
                model = model_cls.from_pretrained(None, config=config, state_dict=weights.lazy(), dtype=dtype,
                                                  **kwargs)
            return prec.apply_precision(model, precision, self._device,
                                        exact=weights.get if weights is not None else None)


def _safetensors_files(source: str, pretrained_kwargs: dict) -> list[str]:
    """The model's safetensors files on disk (downloading them for a hub id), or [] where it has none."""
    names = ("model.safetensors", "model.safetensors.index.json")
    if is_local_folder(source):
        found = [Path(source).expanduser() / n for n in names]
        found = [str(p) for p in found if p.is_file()]
    else:
        from transformers.utils import cached_file

        found = []
        for name in names:
            path = cached_file(source, name, _raise_exceptions_for_missing_entries=False, **pretrained_kwargs)
            if path:
                found.append(path)
                break
    if not found:
        return []
    first = found[0]
    if not first.endswith(".json"):
        return [first]
    with open(first, encoding="utf-8") as fh:
        shards = sorted(set(json.load(fh)["weight_map"].values()))
    if is_local_folder(source):
        return [str(Path(first).parent / shard) for shard in shards]
    from transformers.utils import cached_file

    return [cached_file(source, shard, **pretrained_kwargs) for shard in shards]


class _WeightFiles:
    """Safetensors files opened for pread (no memory map): lazy slices for from_pretrained, exact tensors by name."""

    def __init__(self, stack: contextlib.ExitStack, files: list[str]):
        from safetensors import safe_open

        self._handles = {}
        for path in files:
            handle = stack.enter_context(safe_open(path, framework="pt", device="cpu", backend="pread"))
            for key in handle.keys():
                self._handles[key] = handle

    def lazy(self) -> dict:
        """{key: slice} that from_pretrained reads tensor by tensor."""
        return {key: handle.get_slice(key) for key, handle in self._handles.items()}

    def get(self, key: str) -> torch.Tensor | None:
        """The tensor stored under key, as saved (fp32 for a fp32 checkpoint), or None if the file has no such key."""
        handle = self._handles.get(key)
        return None if handle is None else handle.get_tensor(key)
