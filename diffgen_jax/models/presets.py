"""Named model sizes: the published architectures and tiny CPU variants.

A preset fixes the ARCHITECTURE fields of one family (widths, depths, patch size, attention
resolutions, ...): `models.apply_preset` writes them into a model config, and `models.resolve`
refuses a config whose field differs from its preset's value (naming both), so an override of such
a field is never silently replaced by the preset's. The data-dependent fields (img_resolution,
img_channels, num_classes) and the run-dependent ones (dropout, dtype) stay with the model config;
`PRESETS[name].defaults` lists the values the published model used for them (applied by
`preset_config`, used by configs/).

Published parameter counts (checked in tests/test_models.py within 1%, counted with the reference
data shape below via jax.eval_shape). Measured here: DiT-S/2 32,858,896; DiT-B/2 130,303,504;
DiT-L/2 457,824,272; DiT-XL/2 674,816,272 (+ 18,448 for DiT's learned-sigma output channels, which
EDM preconditioning does not use, + 294,912 for the fixed pos_embed that DiT stores as a frozen
nn.Parameter = 675,129,632, DiT's exact count). EDM2 counts include the MP Fourier frequencies and
phases (edm2's buffers, parameters here held fixed; 2 x (model_channels + 128)):
edm2-img64 xs 124,711,461, s 280,210,021, m 497,803,941, l 777,493,221, xl 1,119,277,861,
xxl 1,523,157,861 (3 image channels; no published img64-xxl);
edm2-img512 (4 latent channels) xs 124,713,765, s 280,213,477, m 497,808,549, l 777,498,981,
xl 1,119,284,773, xxl 1,523,165,925 (NVIDIA's parameters + buffer elements exactly);
DDPM++ CIFAR-10 55,733,891 unconditional (EDM: 55.73M, with EDM's 1,152-parameter map_augment).
Every published NVIDIA configuration maps tensor by tensor onto its preset
(tests/test_nvidia.py, manifests in tests/fixtures/nvidia_networks/manifests). Sources:
- DiT-S/2 33M, DiT-B/2 130M, DiT-L/2 458M, DiT-XL/2 675M: Peebles & Xie, "Scalable Diffusion
  Models with Transformers" (ICCV 2023), Table 1 / Table 4 (ImageNet 256x256, latents 32x32x4,
  1000 classes).
- EDM2 (Karras et al., "Analyzing and Improving the Training Dynamics of Diffusion Models", CVPR
  2024, Table 2 / Table 3): XS 125M, S 280M, M 498M, L 778M (777M for img64 in the brief), XL 1119M,
  XXL 1523M. ImageNet-512 models run on 64x64x4 latents, the ImageNet-64 ones on 64x64x3 pixels;
  the architecture is the same (model_channels 128/192/256/320/384/448, channel_mult (1,2,3,4),
  3 blocks, attention at 16 and 8, 1000 classes).
- DDPM++ CIFAR-10 (EDM, Karras et al. NeurIPS 2022; EDM's `--arch=ddpmpp` on cifar10: 128
  channels, mult (2,2,2), 4 blocks, attention at 16, dropout 0.13, augment_dim 9): 55.7M
  (unconditional; the class-conditional model adds a 10 -> 128 label Linear, 1,408 params).
"""

from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Preset:
  family: str
  arch: dict  # architecture fields of the model config
  defaults: dict  # data/run fields the published model used (resolution, channels, classes, dropout)
  published_params: Optional[float] = None  # parameter count reported by the source
  source: str = ""


_DIT_SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
_DIT_PUBLISHED = {"S": 33e6, "B": 130e6, "L": 458e6, "XL": 675e6}
_DIT_SOURCE = "DiT paper (Peebles & Xie 2023), Table 1/4: ImageNet-256 latents 32x32x4"
_DIT_DEFAULTS = dict(img_resolution=32, img_channels=4, num_classes=1000, dropout=0.0)

_EDM2_CHANNELS = {"xs": 128, "s": 192, "m": 256, "l": 320, "xl": 384, "xxl": 448}
_EDM2_PUBLISHED = {"xs": 125e6, "s": 280e6, "m": 498e6, "l": 777e6, "xl": 1119e6, "xxl": 1523e6}
_EDM2_DROPOUT = {"xs": 0.0, "s": 0.0, "m": 0.1, "l": 0.1, "xl": 0.1, "xxl": 0.1}
# edm2's config_presets for ImageNet-512 (latents): dropout 0 for xs/s, 0.1 above.
_EDM2_IMG512_PUBLISHED = {"xs": 125e6, "s": 280e6, "m": 498e6, "l": 778e6, "xl": 1119e6,
                          "xxl": 1523e6}
_EDM2_SOURCE = "EDM2 paper (Karras et al. 2024), Tables 2/3"

PRESETS: dict[str, Preset] = {}

for _size, (_hidden, _depth, _heads) in _DIT_SIZES.items():
  for _patch in (2, 4, 8):
    PRESETS[f"DiT-{_size}/{_patch}"] = Preset(
        family="dit",
        arch=dict(patch_size=_patch, hidden_size=_hidden, depth=_depth, num_heads=_heads,
                  mlp_ratio=4.0),
        defaults=dict(_DIT_DEFAULTS),
        published_params=_DIT_PUBLISHED[_size] if _patch == 2 else None,
        source=_DIT_SOURCE)

for _size, _channels in _EDM2_CHANNELS.items():
  # ImageNet-512 is the same U-Net on 64x64x4 latents of the Stability VAE (the latents are
  # prepared elsewhere; edm2's StabilityVAEEncoder scale/bias are not part of the network).
  for _data, _img_channels, _published, _note in (
      ("img64", 3, _EDM2_PUBLISHED[_size],
       " (ImageNet-512 architecture, 3 channels; no published img64-xxl)" if _size == "xxl"
       else " (ImageNet-64)"),
      ("img512", 4, _EDM2_IMG512_PUBLISHED[_size], " (ImageNet-512, 4 latent channels)")):
    PRESETS[f"edm2-{_data}-{_size}"] = Preset(
        family="edm2",
        arch=dict(model_channels=_channels, channel_mult=(1, 2, 3, 4), num_blocks=3,
                  attn_resolutions=(16, 8), channels_per_head=64),
        defaults=dict(img_resolution=64, img_channels=_img_channels, num_classes=1000,
                      dropout=_EDM2_DROPOUT[_size]),
        published_params=_published, source=_EDM2_SOURCE + _note)

PRESETS["ddpmpp-cifar10"] = Preset(
    family="ddpmpp",
    arch=dict(model_channels=128, channel_mult=(2, 2, 2), num_blocks=4, attn_resolutions=(16,),
              embedding_type="positional", channel_mult_emb=4, channel_mult_noise=1,
              augment_dim=9),
    defaults=dict(img_resolution=32, img_channels=3, num_classes=0, dropout=0.13),
    published_params=55.7e6,
    source="EDM (Karras et al. 2022) DDPM++ CIFAR-10, 55.7M")

# Tiny presets for CPU runs on 8x8 digits and 28x28 Fashion-MNIST (single channel). Three U-Net
# levels need the resolution divisible by 4 (8 -> 4 -> 2, 28 -> 14 -> 7).
PRESETS["ddpmpp-tiny"] = Preset(
    family="ddpmpp",
    arch=dict(model_channels=32, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(),
              embedding_type="positional", channel_mult_emb=4, channel_mult_noise=1),
    defaults=dict(img_resolution=28, img_channels=1, num_classes=10, dropout=0.1))
PRESETS["edm2-tiny"] = Preset(
    family="edm2",
    arch=dict(model_channels=32, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(),
              channels_per_head=16),
    defaults=dict(img_resolution=28, img_channels=1, num_classes=10, dropout=0.0))
PRESETS["dit-tiny"] = Preset(
    family="dit",
    arch=dict(patch_size=2, hidden_size=64, depth=4, num_heads=4, mlp_ratio=4.0),
    defaults=dict(img_resolution=28, img_channels=1, num_classes=10, dropout=0.0))
PRESETS["dit-tiny/4"] = Preset(
    family="dit",
    arch=dict(patch_size=4, hidden_size=64, depth=4, num_heads=4, mlp_ratio=4.0),
    defaults=dict(img_resolution=28, img_channels=1, num_classes=10, dropout=0.0))


def names(family: Optional[str] = None) -> tuple[str, ...]:
  return tuple(n for n, p in PRESETS.items() if family is None or p.family == family)


def get(name: str) -> Preset:
  return PRESETS[name]
