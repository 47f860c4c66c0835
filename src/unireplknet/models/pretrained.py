"""Released weights: pretrained configs (timm-style) and fetching the official files from the Hugging Face hub."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from unireplknet.errors import PretrainedUnavailableError

logger = logging.getLogger(__name__)

HF_REPO = "DingXiaoH/UniRepLKNet"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IN22K_CLASSES = 21841

#: model name -> tag -> file name in ``HF_REPO`` (the official README's list).
CHECKPOINT_FILES: dict[str, dict[str, str]] = {
    "unireplknet_a": {"in1k": "unireplknet_a_in1k_224_acc77.03.pth"},
    "unireplknet_f": {"in1k": "unireplknet_f_in1k_224_acc78.58.pth"},
    "unireplknet_p": {"in1k": "unireplknet_p_in1k_224_acc80.23.pth"},
    "unireplknet_n": {"in1k": "unireplknet_n_in1k_224_acc81.64.pth"},
    "unireplknet_t": {"in1k": "unireplknet_t_in1k_224_acc83.21.pth"},
    "unireplknet_s": {"in1k": "unireplknet_s_in1k_224_acc83.91.pth",
                      "in22k": "unireplknet_s_in22k_pretrain.pth",
                      "in22k_to_in1k": "unireplknet_s_in22k_to_in1k_384_acc86.44.pth"},
    "unireplknet_b": {"in22k": "unireplknet_b_in22k_pretrain.pth",
                      "in22k_to_in1k": "unireplknet_b_in22k_to_in1k_384_acc87.40.pth"},
    "unireplknet_l": {"in22k": "unireplknet_l_in22k_pretrain.pth",
                      "in22k_to_in1k": "unireplknet_l_in22k_to_in1k_384_acc87.88.pth"},
    "unireplknet_xl": {"in22k": "unireplknet_xl_in22k_pretrain.pth",
                       "in22k_to_in1k": "unireplknet_xl_in22k_to_in1k_384_acc87.96.pth"},
}
TAG_ORDER = ("in1k", "in22k_to_in1k", "in22k")


def pretrained_cfg(name: str, tag: str | None = None) -> dict[str, Any]:
    """The timm-style pretrained config of ``name`` for ``tag`` (default: the first released of TAG_ORDER)."""
    files = CHECKPOINT_FILES.get(name, {})
    tag = tag or next((t for t in TAG_ORDER if t in files), None)
    size = 224
    if tag == "in22k_to_in1k":
        size = 384
    elif tag == "in22k" and name in ("unireplknet_l", "unireplknet_xl"):
        size = 192  # paper Table 17: L and XL were pre-trained at 192x192
    return dict(
        architecture=name, tag=tag, hf_hub_id=HF_REPO if tag else None,
        hf_hub_filename=files.get(tag) if tag else None,
        num_classes=IN22K_CLASSES if tag == "in22k" else 1000,
        input_size=(3, size, size), pool_size=(size // 32, size // 32),
        crop_pct=1.0 if size == 384 else 0.875, interpolation="bicubic",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, first_conv="downsample_layers.0.0", classifier="head",
        license="apache-2.0", paper_ids="arXiv:2311.15599",
    )


def resolve_pretrained(name: str, pretrained: bool | str) -> tuple[str | None, Path | None]:
    """(tag, local path) for a ``pretrained`` argument: True (default tag), a tag, or a file path."""
    if pretrained is False or pretrained is None:
        return None, None
    files = CHECKPOINT_FILES.get(name, {})
    if pretrained is True:
        if not files:
            raise PretrainedUnavailableError(f"no released weights for {name} (released: "
                                             f"{', '.join(sorted(CHECKPOINT_FILES))}); train it or pass a file")
        return next(t for t in TAG_ORDER if t in files), None
    if isinstance(pretrained, str) and pretrained in TAG_ORDER:
        if pretrained not in files:
            released = ", ".join(files) or "none"
            raise PretrainedUnavailableError(f"{name} has no '{pretrained}' release (released: {released})")
        return pretrained, None
    path = Path(str(pretrained)).expanduser()
    if not path.is_file():
        raise PretrainedUnavailableError(f"pretrained={pretrained!r} is neither a tag ({', '.join(TAG_ORDER)}) "
                                         "nor an existing file")
    return None, path


def download_pretrained(name: str, tag: str, cache_dir: str | Path | None = None) -> Path:
    """Fetch (or find in the hub cache) the official file for ``name``/``tag``; one clear error when offline."""
    filename = CHECKPOINT_FILES[name][tag]
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:
        raise PretrainedUnavailableError("downloading weights needs huggingface_hub: "
                                         "pip install 'unireplknet[timm]'") from err
    try:
        local = hf_hub_download(repo_id=HF_REPO, filename=filename, cache_dir=cache_dir)
    except Exception as err:  # offline, not cached, HTTP errors: all end the same way for the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PretrainedUnavailableError(
            f"could not get {filename} from the Hugging Face repo {HF_REPO} ({type(err).__name__}: {reason}); "
            "connect once to cache it, or pass pretrained='path/to/file'") from err
    logger.info("pretrained weights for %s (%s): %s", name, tag, local)
    return Path(local)
