"""Models built from configs with random weights: tiny ones for tests, full-size stand-ins for benchmarks."""

from __future__ import annotations

import json
import string
from importlib import resources
from pathlib import Path

import torch

# ImageNet-style names that exercise the readable-label rule: a comma list, underscores,
# two identical names (ImageNet's two "crane") and two that share a first name ("maillot").
TINY_LABELS = (
    "tench, Tinca tinca",
    "goldfish, Carassius auratus",
    "tabby, tabby cat",
    "crane",
    "crane",
    "maillot",
    "maillot, tank suit",
    "great_grey_owl, great gray owl, Strix nebulosa",
    "golden retriever",
    "espresso",
)

TINY_WORDS = (
    "a an the of on in with and is are at to next near two three photo picture image "
    "cat cats dog dogs man woman people table couch bed grass street car bus bird tree "
    "white black red blue green small large sitting standing holding eating water field room plate food"
).split()

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BLIP_DECODER_TOKEN = "[DEC]"  # BLIP's bos: it starts every caption the decoder writes
BLIP_ENCODER_TOKEN = "[ENC]"
BERT_BASE_VOCAB_SIZE = 30522


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def _image_processor(cls_name: str, size: int, **kwargs):
    """An image processor by class name; the PIL backend when torchvision is missing, without the warning."""
    import transformers
    from transformers.utils import is_torchvision_available

    name = cls_name if is_torchvision_available() else cls_name + "Pil"
    cls = getattr(transformers, name, None) or getattr(transformers, cls_name)
    return cls(size={"height": size, "width": size}, **kwargs)


def _save_classifier(path: Path, config, image_size: int, seed: int) -> Path:
    from transformers import ViTForImageClassification

    path.mkdir(parents=True, exist_ok=True)
    _seeded(seed)
    model = ViTForImageClassification(config).eval()
    model.save_pretrained(path)
    _image_processor("ViTImageProcessor", image_size).save_pretrained(path)
    return path


def make_tiny_classifier(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny random ViT classifier with ImageNet-style labels to path."""
    from transformers import ViTConfig

    labels = dict(enumerate(TINY_LABELS))
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, id2label=labels, label2id={v: k for k, v in labels.items()})
    return _save_classifier(Path(path), config, 32, seed)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names if an installed package ships them, else "class 0".."class 999"."""
    try:
        names = json.loads(resources.files("gradio").joinpath("media_assets/data/imagenet_labels.json").read_text())
        if len(names) == 1000 and len(set(names)) == 1000:
            return [str(n) for n in names]
    except Exception:  # any missing package or file just means generic names
        pass
    return [f"class {i}" for i in range(1000)]


def make_standin_classifier(path: str | Path, seed: int = 0) -> Path:
    """Save a random-weight ViT-B/16 at 224 with 1000 labels: the shape of google/vit-base-patch16-224."""
    from transformers import ViTConfig

    labels = dict(enumerate(imagenet_labels()))
    config = ViTConfig(id2label=labels, label2id={v: k for k, v in labels.items()})
    return _save_classifier(Path(path), config, 224, seed)


def _tiny_vocab() -> list[str]:
    letters = list(string.ascii_lowercase) + list(string.digits) + list(".,'!?-")
    tokens = [*BERT_SPECIALS, *TINY_WORDS, *letters, *("##" + c for c in string.ascii_lowercase)]
    return list(dict.fromkeys(tokens))  # "a" is both a word and a letter; a vocab must not repeat a token


def _bert_base_like_vocab() -> list[str]:
    """A WordPiece vocab with bert-base-uncased's size and special-token ids ([PAD] 0, [UNK] 100, [SEP] 102)."""
    vocab = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 994)]
    chars = [c for c in string.printable[:94] if c not in vocab]
    words = [w for w in TINY_WORDS if w not in chars]
    vocab += chars + words + ["##" + c for c in chars]
    vocab += [f"[filler{i}]" for i in range(BERT_BASE_VOCAB_SIZE - len(vocab))]
    return vocab


def _blip_tokenizer(path: Path, vocab: list[str]):
    """A BERT WordPiece tokenizer with BLIP's extra [DEC] (bos) and [ENC] tokens, as BLIP's checkpoints have."""
    from transformers import BertTokenizer

    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True,
                              bos_token=BLIP_DECODER_TOKEN, extra_special_tokens=[BLIP_ENCODER_TOKEN])
    return tokenizer


# BlipVisionConfig's default initializer_range is 1e-10 (harmless for trained weights): a random image encoder
# initialised so answers all but zero, the caption no longer depends on the photo, and no fidelity check can fail
VISION_INIT = 0.02


def _save_captioner(path: Path, vocab: list[str], text: dict, vision: dict, image_size: int, seed: int,
                    **config_kwargs) -> Path:
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _blip_tokenizer(path, vocab)
    text = {**text, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "sep_token_id": tokenizer.sep_token_id, "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.sep_token_id}
    config = BlipConfig(text_config=text, vision_config=vision, **config_kwargs)
    _seeded(seed)
    BlipForConditionalGeneration(config).eval().save_pretrained(path)
    processor = _image_processor("BlipImageProcessor", image_size)
    BlipProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def make_tiny_captioner(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny random BLIP captioner, its image processor and a small WordPiece tokenizer to path."""
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=64)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8, projection_dim=32, initializer_range=VISION_INIT)
    return _save_captioner(Path(path), _tiny_vocab(), text, vision, 32, seed,
                           projection_dim=32, image_text_hidden_size=32)


def make_standin_captioner(path: str | Path, seed: int = 0) -> Path:
    """Save a random-weight BLIP base at 384 with a 30524-token vocab: the shape of blip-image-captioning-base."""
    return _save_captioner(Path(path), _bert_base_like_vocab(), {}, {"initializer_range": VISION_INIT}, 384, seed)


# Small object detectors, as their Hugging Face conversion scripts configure them (transformers'
# convert_rt_detr_v2_weights_to_hf.py and convert_d_fine_original_pytorch_checkpoint_to_hf.py): name -> hub id.
DETECTORS = {
    "rtdetr_r18vd": "PekingU/rtdetr_r18vd",
    "rtdetr_v2_r18vd": "PekingU/rtdetr_v2_r18vd",
    "dfine_n_coco": "ustc-community/dfine-nano-coco",
    "dfine_s_coco": "ustc-community/dfine-small-coco",
}
TINY_DETECTOR_LABELS = ("person", "bicycle", "car", "cat", "dog")


def detector_config(name: str, num_labels: int = 80):
    """The config of one of DETECTORS (COCO's 80 classes, named "class i"), built offline."""
    from transformers import DFineConfig, RTDetrConfig, RTDetrV2Config

    if name.startswith("rtdetr"):
        config = (RTDetrV2Config if "_v2_" in name else RTDetrConfig)()
        backbone = config.backbone_config
        backbone.hidden_sizes, backbone.depths, backbone.layer_type = [64, 128, 256, 512], [2, 2, 2, 2], "basic"
        config.encoder_in_channels, config.hidden_expansion, config.decoder_layers = [128, 256, 512], 0.5, 3
    elif name in ("dfine_n_coco", "dfine_s_coco"):
        config = DFineConfig()
        backbone = config.backbone_config
        backbone.layer_type, backbone.embedding_size = "basic", 32
        backbone.hidden_sizes, backbone.stem_channels = [128, 256, 512, 1024], [3, 16, 16]
        backbone.stage_in_channels, backbone.stage_mid_channels = [16, 64, 256, 512], [16, 32, 64, 128]
        backbone.stage_out_channels, backbone.stage_num_blocks = [64, 256, 512, 1024], [1, 1, 2, 1]
        backbone.stage_downsample, backbone.stage_light_block = [False, True, True, True], [False, False, True, True]
        backbone.stage_kernel_size, backbone.stage_numb_of_layers = [3, 3, 5, 5], [3, 3, 3, 3]
        backbone.use_learnable_affine_block = True
        if name == "dfine_n_coco":  # HGNetV2-B0, two feature levels, a 128-wide encoder and decoder
            backbone.out_indices = [3, 4]
            config.num_feature_levels, config.encoder_ffn_dim, config.encode_proj_layers = 2, 512, [1]
            config.d_model = config.encoder_hidden_dim = 128
            config.decoder_ffn_dim, config.encoder_in_channels = 512, [512, 1024]
            config.decoder_n_points, config.decoder_in_channels, config.feat_strides = [6, 6], [128, 128], [16, 32]
            config.depth_mult, config.decoder_layers, config.hidden_expansion = 0.5, 3, 0.34
            config.head_dim = config.d_model // config.decoder_attention_heads  # derived at init, from d_model 256
        else:  # HGNetV2-B0, three levels
            config.decoder_layers, config.hidden_expansion, config.depth_mult = 3, 0.5, 0.34
            config.decoder_n_points, config.encoder_in_channels = [3, 6, 3], [256, 512, 1024]
    else:
        raise ValueError(f"no stand-in detector {name!r}; the stand-ins are {', '.join(DETECTORS)}")
    labels = {i: f"class {i}" for i in range(num_labels)}
    config.id2label, config.label2id = labels, {v: k for k, v in labels.items()}
    return config


def _save_detector(path: Path, config, image_size: int, seed: int) -> Path:
    from transformers import AutoModelForObjectDetection

    path.mkdir(parents=True, exist_ok=True)
    _seeded(seed)
    AutoModelForObjectDetection.from_config(config).eval().save_pretrained(path)
    # RT-DETR's and D-FINE's processor: a plain resize to the square input, pixels rescaled to 0..1, no normalising
    _image_processor("RTDetrImageProcessor", image_size, do_normalize=False).save_pretrained(path)
    return path


def make_tiny_detector(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny random RT-DETR (ResNet backbone, one decoder layer, 20 queries) and its processor to path."""
    from transformers import RTDetrConfig, RTDetrResNetConfig

    labels = dict(enumerate(TINY_DETECTOR_LABELS))
    backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                  layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    config = RTDetrConfig(backbone_config=backbone, encoder_in_channels=[16, 32, 64], encoder_hidden_dim=16,
                          encoder_ffn_dim=32, encoder_attention_heads=2, d_model=16, decoder_in_channels=[16, 16, 16],
                          decoder_ffn_dim=32, decoder_attention_heads=2, decoder_layers=1, num_queries=20,
                          num_denoising=0, hidden_expansion=0.5, id2label=labels,
                          label2id={v: k for k, v in labels.items()})
    return _save_detector(Path(path), config, 128, seed)  # 128: a box found at the input is within 1/128 of the photo


def make_standin_detector(path: str | Path, name: str = "dfine_n_coco", seed: int = 0) -> Path:
    """Save a random-weight detector at 640 with COCO's 80 classes: the shape of DETECTORS[name]."""
    return _save_detector(Path(path), detector_config(name), 640, seed)


# Zero-shot models: a CLIP (softmax over the labels) and a SigLIP (a sigmoid per label). The SigLIP pairs a Gemma
# tokenizer with SiglipModel, as the real SigLIP 2 fixed-resolution checkpoints do (SigLIP 1's own tokenizer needs
# sentencepiece, which the project does not install).
SIGLIP_TEXT_LENGTH = 64  # the pipeline pads SigLIP text to 64 tokens, as the models were trained


def _clip_tokenizer(words: tuple[str, ...] = ()):
    """A byte-level BPE CLIP tokenizer: every byte as a token, alone and word-final, and a few whole words."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    merges = []
    for word in words:  # merge each word left to right, so common words are one token as in the real vocab
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1], *parts[2:]]
            tokens.append(parts[0])
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)))


def _gemma_tokenizer():
    """A Gemma-style tokenizer (SigLIP 2's): special tokens, "▁" word starts and single characters."""
    from transformers import GemmaTokenizer

    chars = list(string.ascii_letters + string.digits + string.punctuation)
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "▁", *chars, *("▁" + c for c in chars)]
    return GemmaTokenizer(vocab={t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges=[])


def _save_zero_shot(path: Path, kind: str, text: dict, vision: dict, image_size: int, seed: int,
                    tokenizer=None, **config_kwargs) -> Path:
    import transformers
    from transformers.utils import is_torchvision_available

    path.mkdir(parents=True, exist_ok=True)
    pil = "" if is_torchvision_available() else "Pil"
    if kind == "clip":
        tokenizer = tokenizer or _clip_tokenizer(tuple(TINY_WORDS))
        text = {**text, "vocab_size": max(len(tokenizer), text.get("vocab_size", 0)),
                "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id}
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, **config_kwargs)
        model_cls, processor_cls = transformers.CLIPModel, transformers.CLIPProcessor
        images = getattr(transformers, "CLIPImageProcessor" + pil)(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    elif kind == "siglip":
        tokenizer = tokenizer or _gemma_tokenizer()
        text = {**text, "vocab_size": max(len(tokenizer), text.get("vocab_size", 0)),
                "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id}
        config = transformers.SiglipConfig(text_config=text, vision_config=vision, **config_kwargs)
        model_cls, processor_cls = transformers.SiglipModel, transformers.SiglipProcessor
        images = getattr(transformers, "SiglipImageProcessor" + pil)(size={"height": image_size, "width": image_size})
    else:
        raise ValueError(f"unknown zero-shot kind {kind!r}; expected 'clip' or 'siglip'")
    _seeded(seed)
    model = model_cls(config).eval()
    if kind == "siglip":
        with torch.no_grad():  # random init leaves scale and bias at 0: sigmoids all near 0.5, nothing to tell apart
            model.logit_scale.fill_(2.3)
            model.logit_bias.fill_(-1.0)
    model.save_pretrained(path)
    processor_cls(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
    return path


def make_tiny_zero_shot(path: str | Path, kind: str = "clip", seed: int = 0) -> Path:
    """Save a tiny random CLIP or SigLIP (kind) with its processor to path, for zero-shot classification."""
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = {**layers, "max_position_embeddings": SIGLIP_TEXT_LENGTH if kind == "siglip" else 77}
    vision = {**layers, "image_size": 32, "patch_size": 8}
    extra = {"projection_dim": 16} if kind == "clip" else {}
    return _save_zero_shot(Path(path), kind, text, vision, 32, seed, **extra)


# Real configurations (hub config.json and the transformers defaults they match), for timing with random weights.
ZERO_SHOT_STANDINS = {
    # openai/clip-vit-base-patch32: ViT-B/32 at 224, 12-layer 512-wide text tower, 49408 BPE tokens
    "clip-vit-base-patch32": ("clip", {"vocab_size": 49408}, {"patch_size": 32, "image_size": 224}, 224),
    # google/siglip-base-patch16-224: ViT-B/16 at 224 (196 patches), 32000-token text tower
    "siglip-base-patch16-224": ("siglip", {"vocab_size": 32000}, {"patch_size": 16, "image_size": 224}, 224),
    # google/siglip2-base-patch16-224: the same towers with Gemma's 256000-token vocabulary
    "siglip2-base-patch16-224": ("siglip", {"vocab_size": 256000}, {"patch_size": 16, "image_size": 224}, 224),
    # google/siglip2-base-patch32-256: ViT-B/32 at 256 (64 patches), Gemma vocabulary
    "siglip2-base-patch32-256": ("siglip", {"vocab_size": 256000}, {"patch_size": 32, "image_size": 256}, 256),
}


def make_standin_zero_shot(path: str | Path, name: str, seed: int = 0) -> Path:
    """Save a random-weight zero-shot model with the shape of a real checkpoint (ZERO_SHOT_STANDINS) to path."""
    kind, text, vision, size = ZERO_SHOT_STANDINS[name]
    return _save_zero_shot(Path(path), kind, text, vision, size, seed)
