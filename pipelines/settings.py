"""Every setting, declared once; read from env and CLI only at the entry points."""

from __future__ import annotations

import argparse
import os
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from pipelines import space

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = ROOT / "data" / "imagerec.duckdb"
DEFAULT_IMAGES = ROOT / "data" / "images"
DEFAULT_COMPILED = ROOT / "data" / "compiled"
CALIBRATION_PHOTOS = ROOT / "demo" / "examples"  # the photos a compiled encoder is calibrated and checked on
SPACE_PROXY_HOPS = 1  # a Hugging Face Space's proxy appends the address it saw to X-Forwarded-For


@dataclass(frozen=True)
class Setting:
    """One setting: its name, default, type, help, env variable and optional CLI flag."""

    name: str
    default: Any
    help: str
    type: Callable[[str], Any] = str
    cli: bool = False
    choices: tuple[str, ...] | None = None

    @property
    def env(self) -> str:
        return "IMAGEREC_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def setting(default: Any, help: str, cli: bool = False, choices: tuple[str, ...] | None = None) -> Any:
    """A Settings field: its default, its help (the README's row), whether it has a flag, its allowed values."""
    return dataclasses.field(default=default, metadata={"help": help, "cli": cli, "choices": choices})


@dataclass(frozen=True)
class Settings:
    """The resolved values of every setting; each field is declared here once, with its default and help."""

    classifier: str = setting("google/vit-base-patch16-224",
        "Image-classification model: a Hugging Face id or a local folder.", cli=True)
    classifier_revision: str = setting("",
        "Hub revision of the classifier; empty means the pinned revision for a default model, else main.")
    captioner: str = setting("Salesforce/blip-image-captioning-base",
        "BLIP captioning model: a Hugging Face id or a local folder.", cli=True)
    captioner_revision: str = setting("",
        "Hub revision of the captioner; empty means the pinned revision for a default model, else main.")
    device: str = setting("auto", "Where the models run: auto, cpu or cuda.", cli=True,
        choices=("auto", "cpu", "cuda"))
    precision: str = setting("auto", "Numeric precision of the models: fp32, bf16, int8, or auto for the fastest "
        "that keeps the fidelity bounds on this machine.", choices=("auto", "fp32", "bf16", "int8"))
    compiled: str = setting("auto", "Encoders compiled ahead of time (classifier, captioner's image encoder): auto "
        "serves each from a package built for its model and this CPU, and builds a missing one in the background "
        "while serving uncompiled, keeping it only where it is faster within the fidelity bounds; off never "
        "compiles.", choices=("auto", "off"))
    compiled_dir: str = setting(str(DEFAULT_COMPILED), "Where compiled encoders are kept: one folder per model, "
        "precision, input shape, torch build and CPU.")
    threads: int = setting(0, "Torch intra-op threads; 0 means one per CPU this process may use (affinity and container quota).")
    caption_max_tokens: int = setting(30, "Most new tokens a caption may have.")
    detector: str = setting("ustc-community/dfine-small-coco",
        "Object-detection model for the detect task: a Hugging Face id or a local folder.", cli=True)
    detector_revision: str = setting("",
        "Hub revision of the detector; empty means the pinned revision for a default model, else main.")
    detect_threshold: float = setting(0.5, "Lowest score a detected box needs to be shown, from 0 to 1; a request "
        "may set its own.")
    zero_shot_model: str = setting("google/siglip2-base-patch32-256",
        "Zero-shot image-classification model (CLIP, SigLIP or SigLIP 2): a Hugging Face id or a local folder.",
        cli=True)
    zero_shot_model_revision: str = setting("",
        "Hub revision of the zero-shot model; empty means the pinned revision for the default model, else main.")
    zero_shot_labels: str = setting("", "Comma-separated labels the zero_shot task scores when a request gives "
        "none (for example a shop's product categories); empty means a request must give its own.")
    top_k: int = setting(5, "How many labels the classifier returns.")
    db: str = setting(str(DEFAULT_DB), "Path of the DuckDB log file.", cli=True)
    max_upload_mb: float = setting(20.0, "Largest upload accepted, in megabytes.")
    max_body_kb: float = setting(1000.0, "Largest request body other than an upload, in kilobytes (JSON calls, data: "
        "URLs included); larger ones are refused with 413 before they are read; 0 turns the cap off.")
    upload_budget_mb: float = setting(60.0, "Megabytes one client may upload a minute; past it uploads are refused "
        "with 429 and Retry-After; 0 turns the budget off.")
    max_pixels: int = setting(40_000_000, "Largest image accepted, in pixels (checked before decoding).")
    max_decoded_mb: float = setting(512.0, "Most memory one image may take while it is decoded, in megabytes, "
        "computed from its header before decoding (bits per sample, bands, decoder buffers, working copies).")
    min_side: int = setting(16, "Smallest width or height accepted, in pixels.")
    cache_size: int = setting(256, "How many recent images' model outputs are kept in memory.")
    host: str = setting("127.0.0.1", "Address the demo listens on (0.0.0.0 on a Hugging Face Space).", cli=True)
    port: int = setting(7860, "Port the demo listens on.", cli=True)
    page_tasks: str = setting("classify,caption", "Tasks the page runs on a photo unless the visitor changes "
        "them, comma-separated task names (as /predict takes them); explain adds a backward pass on a float copy "
        "of the classifier.")
    concurrency: int = setting(1, "Predictions run at once; more only oversubscribes a small CPU.")
    queue_size: int = setting(32, "Requests that may wait in the queue before new ones are refused as busy.")
    flush_interval: float = setting(0.25, "Seconds between moves of logged events from the journal into DuckDB.")
    keep_images: bool = setting(False, "Keep uploaded images (EXIF and GPS stripped, generated names) in images_dir, "
        "to retrain from feedback later; off by default.")
    images_dir: str = setting(str(DEFAULT_IMAGES), "Private folder for kept images.")
    retention_days: float = setting(0.0, "Delete predictions, their feedback and kept images older than this many "
        "days; 0 keeps them.")
    rate_limit: int = setting(30, "Predictions one client may ask for per minute; 0 turns the limit off.")
    forwarded_hops: int = setting(0, "How many proxies in front of the demo to trust: the client is the address that "
        "many entries from the right of the forwarded header; 0 trusts no header (the connection's address); "
        "1 on a Hugging Face Space unless set.")
    forwarded_header: str = setting("x-forwarded-for", "Which header the trusted proxies write the client into: "
        "x-forwarded-for, forwarded (RFC 7239 for=) or x-real-ip; read only when forwarded_hops is above 0.",
        choices=("x-forwarded-for", "forwarded", "x-real-ip"))
    admin_password: str = setting("", "Secret for admin actions (model reload, purge, export); empty allows them "
        "from this machine only.")
    refresh_seconds: float = setting(5.0, "How often the dashboard re-reads the log; 0 turns it off.")
    dashboard_password: str = setting("", "Password for the dashboard; empty leaves it open.")
    fsync: bool = setting(True, "Force each logged event to disk before it is acknowledged.")

    @classmethod
    def defaults(cls, **overrides: Any) -> "Settings":
        return cls(**overrides)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


_TYPES: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float, "bool": _bool}
SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f.name, f.default, f.metadata["help"], _TYPES[f.type], f.metadata["cli"], f.metadata["choices"])
    for f in dataclasses.fields(Settings))

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def _convert(setting: Setting, raw: str) -> Any:
    try:
        value = setting.type(raw)
    except ValueError as exc:
        raise SystemExit(f"{setting.env}: {exc}") from None
    if setting.choices and value not in setting.choices:
        raise SystemExit(f"{setting.env} must be one of {', '.join(setting.choices)}, got {value!r}")
    return value


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from IMAGEREC_* variables over the defaults (a Space listens on all interfaces)."""
    environ = os.environ if environ is None else environ
    values = {}
    for s in SETTINGS:
        values[s.name] = _convert(s, environ[s.env]) if s.env in environ else s.default
    if "SPACE_ID" in environ and BY_NAME["host"].env not in environ:
        values["host"] = "0.0.0.0"
    storage = space.persistent_dir(environ)
    if storage is not None:  # a Space with persistent storage: the log and kept images survive restarts there
        if BY_NAME["db"].env not in environ:
            values["db"] = str(storage / "imagerec.duckdb")
        if BY_NAME["images_dir"].env not in environ:
            values["images_dir"] = str(storage / "images")
        if BY_NAME["compiled_dir"].env not in environ:
            values["compiled_dir"] = str(storage / "compiled")
    if "SPACE_ID" in environ and BY_NAME["forwarded_hops"].env not in environ:
        values["forwarded_hops"] = SPACE_PROXY_HOPS  # a Space's proxy appends the client's address: trust one
    return Settings(**values)


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """Add the CLI flags of the settings marked cli (or of those named)."""
    for s in SETTINGS:
        if (names is None and s.cli) or (names is not None and s.name in names):
            parser.add_argument(s.flag, dest=s.name, default=None, type=s.type, choices=s.choices,
                                help=f"{s.help} (env {s.env}, default {s.default!r})")


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """CLI flags over env over defaults."""
    settings = from_env(environ)
    given = {k: v for k, v in vars(args).items() if k in BY_NAME and v is not None}
    return settings.replace(**given)
