"""Feature networks for FID/KID: torch-fidelity's Inception (via torchmetrics) or any injected module.

The Inception port is torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's weights, matching the
TensorFlow FID graph of Heusel et al. 2017 to ~1e-6). We never let it download: when its weights file is
not where torch hub would cache it (or at an explicit path) we stop with a UserError naming the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from distill_diffusion.errors import UserError

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
INCEPTION_DIMS = (64, 192, 768, 2048)


class FeatureNet(nn.Module):
    """Adapter giving any network the ``feature`` contract of torchmetrics' FID/KID.

    Input: uint8 ``[B, 3, H, W]``. ``input_scale="uint8"`` passes the bytes through (as Inception wants);
    ``"unit"`` hands the network float ``[0, 1]`` in its own parameter dtype. Output: float32 ``[B, D]``.
    ``num_features`` is the attribute torchmetrics reads instead of pushing a dummy 299² image through.
    """

    def __init__(
        self, net: nn.Module, num_features: int, name: str, input_scale: Literal["uint8", "unit"] = "uint8"
    ):
        super().__init__()
        if input_scale not in ("uint8", "unit"):
            raise ValueError(f"input_scale must be 'uint8' or 'unit', got {input_scale!r}")
        self.net = net.eval().requires_grad_(False)
        self.num_features = int(num_features)
        self.name = name
        self.input_scale = input_scale

    def train(self, mode: bool = True) -> FeatureNet:
        """Stay in eval mode: BatchNorm/dropout in train mode would make features batch-dependent."""
        return super().train(False)

    def _param(self) -> torch.Tensor | None:
        return next(self.net.parameters(), None)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"feature nets take uint8 images; got {images.dtype} (use eval.images.to_uint8)")
        param = self._param()
        x = images.to(param.device) if param is not None else images
        if self.input_scale == "unit":
            dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
            x = x.to(dtype) / 255.0
        out = self.net(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        out = out.reshape(images.shape[0], -1).float()
        if out.shape[1] != self.num_features:
            raise ValueError(
                f"feature net {self.name} returned {out.shape[1]} features, expected {self.num_features}"
            )
        return out


def default_inception_weights_path() -> Path:
    """Where torch hub (and so torch-fidelity) caches the weights: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def resolve_inception_weights(weights_path: str | Path | None = None) -> Path:
    """The Inception weights file to use, or a UserError naming exactly where to put it (never downloads)."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(
                f"Inception weights file {path}: not found; pass the path of {INCEPTION_WEIGHTS_FILE} "
                f"(download it from {INCEPTION_URL})"
            )
        return path
    path = default_inception_weights_path()
    if not path.is_file():
        raise UserError(
            f"FID Inception weights not found at {path}; download {INCEPTION_URL} to that path "
            "(or set TORCH_HOME), or pass the file's location as the Inception weights path (weights_path)"
        )
    return path


def _check_state_dict(path: Path) -> None:
    """Refuse anything but a plain tensor state dict before torch-fidelity unpickles it.

    torch-fidelity calls ``torch.load(..., weights_only=False)``; a file that loads under the restricted
    ``weights_only=True`` unpickler contains only tensors and containers, so the second load is harmless.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise UserError(
            f"{path} is not a plain Inception state dict ({exc}); re-download {INCEPTION_URL}"
        ) from exc
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state dict; re-download {INCEPTION_URL}")


def load_inception(
    feature_dim: int = 2048, weights_path: str | Path | None = None, antialias: bool = True
) -> FeatureNet:
    """torch-fidelity's FID Inception-v3 (Heusel et al. 2017) giving ``feature_dim``-dim pool features.

    ``antialias=True`` (torchmetrics ≥ 1.8 default) resizes to 299 with antialiased bilinear;
    ``False`` reproduces the TF1 bilinear resize of the original FID code and older published numbers.
    """
    if feature_dim not in INCEPTION_DIMS:
        raise UserError(f"Inception feature_dim {feature_dim} is not available; use one of {INCEPTION_DIMS}")
    path = resolve_inception_weights(weights_path)
    _check_state_dict(path)
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(feature_dim)],
            feature_extractor_weights_path=str(path),
            antialias=antialias,
        )
    except RuntimeError as exc:  # load_state_dict key/shape mismatch
        raise UserError(
            f"{path} does not match torch-fidelity's Inception ({exc}); re-download {INCEPTION_URL}"
        ) from exc
    return FeatureNet(net, feature_dim, name=f"inception-v3-compat-{feature_dim}")


def build_feature_net(
    feature: str | nn.Module,
    feature_dim: int,
    weights_path: str | Path | None = None,
    antialias: bool = True,
    feature_name: str | None = None,
) -> FeatureNet:
    """``"inception"`` → :func:`load_inception`; a FeatureNet as is; any other module wrapped (uint8 in)."""
    if isinstance(feature, FeatureNet):
        return feature
    if isinstance(feature, str):
        if feature != "inception":
            raise UserError(f"feature network {feature!r} is unknown; use 'inception' or pass an nn.Module")
        return load_inception(feature_dim, weights_path, antialias)
    if isinstance(feature, nn.Module):
        return FeatureNet(feature, feature_dim, name=feature_name or type(feature).__name__)
    raise TypeError(f"feature must be 'inception' or an nn.Module, got {type(feature).__name__}")
