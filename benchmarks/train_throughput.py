"""Training throughput (img/s) of the full train step: forward, backward, Adam, EMA.

CPU (default): each model family's tiny preset (ddpmpp-tiny, edm2-tiny, dit-tiny) at 32x32x3,
10 classes, batch 64, on a 1-device mesh and on a mesh of one simulated host device per CPU core
(as the main job uses on a CPU; the script sets XLA_FLAGS=--xla_force_host_platform_device_count
to the largest count in --devices before jax is imported; smaller meshes take the first devices in
the same process). `--conv` times several convolution algorithms (benchmarks/winograd.py; the
algorithm is fixed when the step is traced), e.g. `--conv xla,winograd`. Side by side in the same run, interleaved with ours: a PyTorch U-Net (diffusers'
`UNet2DModel`) configured from our DDPM++ config (same widths, levels, blocks per level, attention
resolutions, dropout, class labels, resampling inside ResBlocks; parameters and model FLOPs within
~2%, both printed; `--torch_resampling conv` times diffusers' default convolution resampling
instead, `resnet,conv` both), trained with the
same EDM loss (the preconditioning written out in torch below), Adam and a half-life EMA, on the
same images, batch and number of threads. Reported: ours / torch img/s (goal >= 1.0).

GPU (`--gpu`): EDM's DDPM++ CIFAR-10 network (`ddpmpp-cifar10`, 55.7M params, 32x32x3,
unconditional) at batch 512 in bfloat16 compute (params float32) on one device: img/s, the step's
model FLOPs (matmuls + convolutions, forward and backward, counted from its jaxpr by
diffgen_jax.flops), and model FLOP utilisation
MFU = FLOP/s / --peak_tflops (H200 dense bf16: 989). The torch comparison runs there too (cuda,
bf16 autocast, channels_last) when diffusers is importable.

Timing: compile (timed), --warmup (3) untimed steps, then `--repeats` rounds; each round runs `--steps` steps
of every configuration in turn (round-robin, so slow drifts of a shared machine hit all of them),
blocking on the result; the median round gives img/s.

  python benchmarks/train_throughput.py --quick
  python benchmarks/train_throughput.py                       # full CPU run
  python benchmarks/train_throughput.py --gpu --out /tmp/gpu.json
  python benchmarks/train_throughput.py --families ddpmpp --devices 1 --skip_torch --batch 32
  python benchmarks/train_throughput.py --families ddpmpp --conv xla,winograd   # issue 15
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time

FAMILIES = ("ddpmpp", "edm2", "dit")
TINY_PRESETS = {"ddpmpp": "ddpmpp-tiny", "edm2": "edm2-tiny", "dit": "dit-tiny"}
H200_BF16_PEAK_TFLOPS = 989.0
CONV_ALGORITHMS = ("xla", "winograd", "winograd4")  # winograd.ALGORITHMS (benchmarks/winograd.py)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--families", default=None,
                 help="comma-separated subset of ddpmpp,edm2,dit (CPU default: all; GPU: ddpmpp)")
  p.add_argument("--preset", default=None,
                 help="preset for every family (default: <family>-tiny on CPU, ddpmpp-cifar10 on GPU)")
  p.add_argument("--batch", type=int, default=None, help="global batch (CPU 64, GPU 512)")
  p.add_argument("--steps", type=int, default=None, help="timed steps per round (CPU 5, GPU 20; --quick: 2, 5)")
  p.add_argument("--repeats", type=int, default=None, help="timed rounds, median reported (5)")
  p.add_argument("--resolution", type=int, default=32)
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--num_classes", type=int, default=None,
                 help="class labels (CPU 10 with label dropout 0.1; GPU 0 = unconditional, as EDM)")
  p.add_argument("--devices", default=None,
                 help="comma-separated device counts for the data-parallel mesh (CPU: 1 and one per "
                      "core, as the main job uses; GPU: 1)")
  p.add_argument("--conv", default="xla",
                 help="comma-separated convolution algorithms to time (benchmarks/winograd.py: "
                      "xla, winograd, winograd4; default xla, what the networks run)")
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                 help="compute dtype (CPU float32, GPU bfloat16); params stay float32")
  p.add_argument("--skip_torch", action="store_true", help="skip the diffusers UNet2DModel comparison")
  p.add_argument("--torch_resampling", default="resnet",
                 help="comma-separated torch mirrors to time: resnet (resampling in ResBlocks, as "
                      "DDPM++; default), conv (diffusers' default strided / upsampled convolution)")
  p.add_argument("--torch_threads", type=int, default=None,
                 help="torch.set_num_threads (default: the CPU cores this process may use)")
  p.add_argument("--gpu", action="store_true",
                 help="GPU variant: ddpmpp-cifar10, batch 512, bfloat16, MFU from model FLOPs")
  p.add_argument("--peak_tflops", type=float, default=H200_BF16_PEAK_TFLOPS,
                 help="peak dense TFLOP/s of the device for MFU (H200 bf16: 989)")
  p.add_argument("--quick", action="store_true", help="fewer steps and rounds (CPU 2 steps x 2 rounds)")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling (3)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                "results", "train_throughput.json"))
  args = p.parse_args(argv)
  gpu = args.gpu
  args.families = tuple((args.families or ("ddpmpp" if gpu else ",".join(FAMILIES))).split(","))
  for f in args.families:
    if f not in FAMILIES:
      p.error(f"--families: {f!r} is not one of {FAMILIES}")
  args.batch = args.batch or (512 if gpu else 64)
  args.steps = args.steps or ((5 if gpu else 2) if args.quick else (20 if gpu else 5))
  args.repeats = args.repeats or (2 if args.quick else 5)
  args.num_classes = (0 if gpu else 10) if args.num_classes is None else args.num_classes
  args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
  args.torch_resampling = tuple(args.torch_resampling.split(","))
  for name in args.torch_resampling:
    if name not in TORCH_RESAMPLING:
      p.error(f"--torch_resampling: {name!r} is not one of {TORCH_RESAMPLING}")
  args.convs = tuple(args.conv.split(","))
  # Runs are keyed by name: a repeated entry would be timed twice and reported once.
  for flag, values in (("--torch_resampling", args.torch_resampling), ("--conv", args.convs),
                       ("--families", args.families)):
    if len(set(values)) != len(values):
      p.error(f"{flag}: each value at most once, got {','.join(values)}")
  for name in args.convs:
    if name not in CONV_ALGORITHMS:
      p.error(f"--conv: {name!r} is not one of {CONV_ALGORITHMS}")
  cpu_default = ",".join(str(n) for n in sorted({1, available_cores()}))
  args.device_counts = tuple(int(n) for n in (args.devices or ("1" if gpu else cpu_default)).split(","))
  if any(n < 1 for n in args.device_counts):
    p.error("--devices must be positive")
  for n in args.device_counts:
    if args.batch % n:
      p.error(f"--batch={args.batch} must be divisible by every device count, got {n}")
  return args


def available_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def set_host_device_count(n: int) -> None:
  """Simulated host devices; must run before jax is imported (a no-op if XLA_FLAGS names it)."""
  if "jax" in sys.modules:
    raise RuntimeError("set_host_device_count must run before jax is imported")
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


# ------------------------------------------------------------------------------------------------
# Ours


def make_train_config(family: str, preset: str, args):
  """The default train config of the family with the benchmark's data shape, batch and dtype."""
  from diffgen_jax import defaults, models  # pylint: disable=import-outside-toplevel
  config = defaults.train_config("digits", family)
  model = models.preset_config(preset)
  model.img_resolution = args.resolution
  model.img_channels = args.channels
  model.num_classes = args.num_classes
  config.model = model
  t = config.training
  t.batch_size = args.batch
  t.compute_dtype = args.dtype
  t.label_dropout = 0.1 if args.num_classes else 0.0
  if family == "edm2":  # EDM2's own training: learned log-variance loss, power-function EMAs
    t.loss = "edm2"
    t.lr_schedule = "edm2"
    t.lr_ref_images = 70_000 * args.batch
    t.ema.kind = "power"
  return config


class Runner:
  """One timed configuration: run(steps) -> seconds for `steps` train steps, blocking."""
  name = ""
  info: dict = {}

  def run(self, steps: int) -> float:
    raise NotImplementedError


class OursRunner(Runner):

  def __init__(self, family: str, preset: str, n_devices: int, args, conv_algorithm: str = "xla"):
    import winograd  # pylint: disable=import-outside-toplevel  (benchmarks/ is on sys.path)
    with winograd.algorithm(conv_algorithm):  # the algorithm is fixed when the step is traced
      self._build(family, preset, n_devices, args, conv_algorithm)

  def _build(self, family: str, preset: str, n_devices: int, args, conv_algorithm: str):
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
    from diffgen_jax import models, sharding, training  # pylint: disable=import-outside-toplevel
    from diffgen_jax.jobs import common  # pylint: disable=import-outside-toplevel
    from diffgen_jax.models.network import build_network  # pylint: disable=import-outside-toplevel
    from diffgen_jax.flops import model_flops  # pylint: disable=import-outside-toplevel

    self.jax = jax
    self.family, self.n_devices = family, n_devices
    self.name = f"ours {family} x{n_devices}" + (f" {conv_algorithm}" if len(args.convs) > 1 else "")
    devices = jax.devices()
    if n_devices > len(devices):
      raise ValueError(f"{n_devices} devices asked, {len(devices)} available")
    config = make_train_config(family, preset, args)
    image_shape = (args.resolution, args.resolution, args.channels)
    models.validate_config(config.model, image_shape, args.num_classes)
    network = build_network(config.model, args.num_classes, args.dtype)
    settings = common.training_settings(config)
    optimizer = training.make_optimizer(settings)
    mesh = sharding.make_mesh(-1, 1, devices=devices[:n_devices])
    init_fn, step_fn, _, _ = training.compile_training(network, optimizer, settings, mesh,
                                                        image_shape)
    rng = np.random.default_rng(args.seed)
    host_batch = {
        "image": rng.uniform(-1, 1, (args.batch,) + image_shape).astype(np.float32),
        "label": rng.integers(0, max(args.num_classes, 1), (args.batch,)).astype(np.int32)}
    self.host_batch = host_batch
    self.batch = jax.device_put(host_batch, training.batch_sharding(mesh))
    self.key = jax.device_put(jax.random.key(args.seed + 1), NamedSharding(mesh, P()))
    self.state = init_fn(jax.random.key(args.seed))

    t0 = time.perf_counter()
    lowered = step_fn.lower(self.state, self.batch, self.key)
    self.compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    # MFU uses model FLOPs (matmuls + convolutions, forward and backward) counted from the step's
    # jaxpr: backend-independent. XLA's cost analysis is kept for reference; on GPU it misses
    # convolutions lowered to cuDNN calls (0.76 of 65.1 TFLOP/step for DDPM++ at batch 512).
    flops = float(model_flops(step_fn, self.state, self.batch, self.key))
    xla_flops = _flops(self.compiled.cost_analysis())
    self.info = dict(
        kind="ours", family=family, preset=preset, devices=n_devices, conv=conv_algorithm,
        device_kind=devices[0].device_kind, platform=devices[0].platform,
        params=models.param_count(network.module, (1,) + image_shape), dtype=args.dtype,
        loss=config.training.loss, ema=list(training.ema_names(settings)),
        compile_s=compile_s, flops_per_step=flops, flops_source="jaxpr matmul+conv (diffgen_jax.flops)",
        xla_cost_analysis_flops_per_step_per_device=xla_flops)
    self.run(args.warmup)  # warm-up

  def run(self, steps: int) -> float:
    t0 = time.perf_counter()
    state, metrics = self.state, None
    for _ in range(steps):
      state, metrics = self.compiled(state, self.batch, self.key)
    self.jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - t0
    self.state = state
    self.last_loss = float(metrics["loss"])
    return elapsed


def _flops(cost) -> float | None:
  """'flops' from a cost analysis (a dict, or a list of dicts in older jax)."""
  if cost is None:
    return None
  if isinstance(cost, (list, tuple)):
    values = [c.get("flops") for c in cost if c]
    values = [v for v in values if v is not None]
    return float(sum(values)) if values else None
  value = cost.get("flops")
  return float(value) if value is not None and value > 0 else None


# ------------------------------------------------------------------------------------------------
# Torch: diffusers UNet2DModel with EDM's preconditioning, loss, Adam and EMA


TORCH_RESAMPLING = ("resnet", "conv")


def diffusers_unet_kwargs(model_config, resolution: int, channels: int, num_classes: int,
                          time_scale_shift: str, resampling: str = "resnet") -> dict:
  """UNet2DModel arguments mirroring a DDPM++ config (widths, levels, blocks, attention).

  resampling "resnet" changes resolution inside a ResBlock, as DDPM++ does (EDM's
  `UNetBlock(down=True / up=True)`; diffusers' Resnet{Down,Up}sampleBlock2D, or the attention
  blocks with `downsample_type="resnet"`): parameters and model FLOPs within about 2% of ours.
  "conv" is diffusers' default (one strided / nearest-upsampled 3x3 convolution per level change),
  which the comparison used before 2026-12-01: 7% fewer parameters and 19% fewer FLOPs than ours.
  """
  from diffgen_jax import models  # pylint: disable=import-outside-toplevel
  if resampling not in TORCH_RESAMPLING:
    raise ValueError(f"resampling must be one of {TORCH_RESAMPLING}, got {resampling!r}")
  c = models.resolve(model_config)
  widths = tuple(int(c.model_channels * m) for m in c.channel_mult)
  res = [resolution >> level for level in range(len(widths))]
  attn = set(c.attn_resolutions)
  down, up = (("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if resampling == "resnet"
              else ("DownBlock2D", "UpBlock2D"))
  return dict(
      sample_size=resolution, in_channels=channels, out_channels=channels,
      block_out_channels=widths, layers_per_block=int(c.num_blocks),
      down_block_types=tuple("AttnDownBlock2D" if r in attn else down for r in res),
      up_block_types=tuple("AttnUpBlock2D" if r in attn else up for r in reversed(res)),
      downsample_type=resampling, upsample_type=resampling,  # read by the attention blocks
      norm_num_groups=min(32, widths[0] // 4), norm_eps=1e-6,
      attention_head_dim=max(widths),  # one head, as DDPM++
      dropout=float(c.dropout), time_embedding_type="positional", flip_sin_to_cos=True,
      freq_shift=0, num_class_embeds=(num_classes + 1) if num_classes else None,  # + null label
      resnet_time_scale_shift=time_scale_shift, add_attention=True)


class _TorchTrainer:
  """The torch training step; lives in its own process (see TorchRunner), which never loads jax."""

  def __init__(self, spec: dict):
    import numpy as np  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    import diffusers  # pylint: disable=import-outside-toplevel
    from diffusers import UNet2DModel  # pylint: disable=import-outside-toplevel

    self.torch = torch
    self.cuda = spec["gpu"] and torch.cuda.is_available()
    self.device = torch.device("cuda" if self.cuda else "cpu")
    if not self.cuda:
      torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    ours_params = spec["ours_params"]
    # Of the candidates (same widths; time-embedding variants) take the count closest to ours.
    best = None
    for kwargs in spec["candidates"]:
      with torch.device("meta"):
        count = sum(p.numel() for p in UNet2DModel(**kwargs).parameters())
      if best is None or abs(count - ours_params) < abs(best[1] - ours_params):
        best = (kwargs, count)
    kwargs, count = best
    self.model = UNet2DModel(**kwargs).to(self.device)
    self.channels_last = self.cuda
    if self.channels_last:
      self.model = self.model.to(memory_format=torch.channels_last)
    self.model.train()
    t = self.t = spec["training"]
    self.opt = torch.optim.Adam(self.model.parameters(), lr=t["lr"],
                                betas=(t["adam_b1"], t["adam_b2"]), eps=t["adam_eps"], foreach=True)
    self.params = list(self.model.parameters())
    self.ema = [p.detach().clone() for p in self.params]
    images = np.transpose(spec["images"], (0, 3, 1, 2)).copy()  # NHWC -> NCHW
    self.images = torch.from_numpy(images).to(self.device)
    if self.channels_last:
      self.images = self.images.contiguous(memory_format=torch.channels_last)
    self.labels = torch.from_numpy(spec["labels"].astype(np.int64)).to(self.device)
    self.num_classes = spec["num_classes"]
    self.autocast = spec["dtype"] == "bfloat16"
    self.step_count = 0
    self.info = dict(kind="torch", model="diffusers.UNet2DModel", unet_kwargs=kwargs, params=count,
                     ours_params=ours_params, params_over_ours=count / ours_params,
                     device=str(self.device), threads=torch.get_num_threads(),
                     torch_version=torch.__version__, diffusers_version=diffusers.__version__,
                     dtype="bfloat16 autocast" if self.autocast else "float32",
                     channels_last=self.channels_last, process="separate (never loads jax)")

  def _step(self):
    torch, t = self.torch, self.t
    x = self.images
    b = x.shape[0]
    sd = t["sigma_data"]
    sigma = torch.exp(t["p_mean"] + t["p_std"] * torch.randn(b, device=self.device))
    s = sigma.view(-1, 1, 1, 1)
    noisy = x + s * torch.randn_like(x)
    labels = None
    if self.num_classes:
      drop = torch.rand(b, device=self.device) < t["label_dropout"]
      labels = torch.where(drop, torch.full_like(self.labels, self.num_classes), self.labels)
    # EDM preconditioning and loss weight, as diffgen_jax.edm.preconditioning / loss_weight.
    total = s ** 2 + sd ** 2
    c_skip, c_out, c_in = sd ** 2 / total, s * sd / total.sqrt(), 1 / total.sqrt()
    c_noise = sigma.log() / 4
    weight = total / (s * sd) ** 2
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
      f = self.model(c_in * noisy, c_noise, class_labels=labels).sample
    denoised = c_skip * noisy + c_out * f.float()
    loss = (weight * (denoised - x) ** 2).mean()
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    images_seen = self.step_count * b
    warmup = t["warmup_images"]
    for group in self.opt.param_groups:  # EDM's linear warm-up, as ours
      group["lr"] = t["lr"] * (min(images_seen / warmup, 1.0) if warmup else 1.0)
    self.opt.step()
    halflife = min(t["ema"]["halflife_images"], images_seen * t["ema"]["rampup_ratio"])
    beta = 0.5 ** (b / max(halflife, 1e-8))
    with torch.no_grad():
      torch._foreach_lerp_(self.ema, self.params, 1.0 - beta)  # ema = p + beta (ema - p)
    self.step_count += 1
    return loss

  def count_flops(self):
    """Model FLOPs of one step (matmuls and convolutions, forward and backward), counted by
    torch's FlopCounterMode, as diffgen_jax.flops counts ours; the step also trains (it is
    the first warm-up step)."""
    from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=import-outside-toplevel
    counter = FlopCounterMode(display=False)
    with counter:
      self._step()
    self.info["flops_per_step"] = float(counter.get_total_flops())

  def run(self, steps: int):
    if self.cuda:
      self.torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = None
    for _ in range(steps):
      loss = self._step()
    loss = float(loss.detach())  # synchronizes
    if self.cuda:
      self.torch.cuda.synchronize()
    return time.perf_counter() - t0, loss


def _torch_worker(conn, spec):
  try:
    trainer = _TorchTrainer(spec)
    trainer.count_flops()
    trainer.run(spec["warmup"])  # warm-up (oneDNN's first steps are slow)
    conn.send(("ok", trainer.info))
  except Exception as e:  # pylint: disable=broad-except
    conn.send(("error", f"{type(e).__name__}: {e}"))
    return
  while True:
    cmd, steps = conn.recv()
    if cmd == "stop":
      return
    conn.send(trainer.run(steps))


class TorchRunner(Runner):
  """The torch step in a spawned process, driven step-by-step from here (interleaved with ours).

  Its own process because torch's CPU step ran 3-6x slower here in a process that had loaded
  jaxlib (torch 2.13 CPU, jax 0.10.2): a clash of native libraries, not torch's speed.
  """

  def __init__(self, model_config, ours_params: int, args, host_batch, threads: int,
               resampling: str = "resnet"):
    import multiprocessing  # pylint: disable=import-outside-toplevel
    candidates = [diffusers_unet_kwargs(model_config, args.resolution, args.channels,
                                        args.num_classes, shift, resampling)
                  for shift in ("default", "scale_shift")]
    training_hparams = make_train_config("ddpmpp", model_config.preset, args).training.to_dict()
    spec = dict(gpu=args.gpu, threads=threads, seed=args.seed, ours_params=ours_params,
                candidates=candidates, training=training_hparams, images=host_batch["image"],
                labels=host_batch["label"], num_classes=args.num_classes, dtype=args.dtype, warmup=args.warmup)
    ctx = multiprocessing.get_context("spawn")
    self.conn, child = ctx.Pipe()
    self.process = ctx.Process(target=_torch_worker, args=(child, spec), daemon=True)
    self.process.start()
    status, payload = self.conn.recv()
    if status != "ok":
      self.process.join()
      raise RuntimeError(f"torch worker: {payload}")
    self.info = dict(payload, resampling=resampling)
    self.name = f"torch ddpmpp ({resampling} resampling)"

  def run(self, steps: int) -> float:
    self.conn.send(("run", steps))
    seconds, self.last_loss = self.conn.recv()
    return seconds

  def close(self):
    if self.process.is_alive():
      self.conn.send(("stop", 0))
      self.process.join(timeout=30)


# ------------------------------------------------------------------------------------------------


def main(argv=None):
  args = parse_args(argv)
  if not args.gpu and "jax" not in sys.modules:
    set_host_device_count(max(args.device_counts))
  import jax  # pylint: disable=import-outside-toplevel

  backend = jax.default_backend()
  if args.gpu and backend != "gpu":
    print(f"warning: --gpu but jax's default backend is {backend!r}", flush=True)
  cores = available_cores()
  threads = args.torch_threads or cores
  dev = jax.devices()[0]
  print(f"jax {jax.__version__} on {backend} ({dev.device_kind}), {len(jax.devices())} devices; "
        f"{cores} CPU cores; batch {args.batch}, {args.resolution}x{args.resolution}x"
        f"{args.channels}, {args.num_classes} classes, {args.dtype}; {args.steps} steps x "
        f"{args.repeats} rounds", flush=True)

  runners = []
  errors = {}
  for family in args.families:
    preset = args.preset or ("ddpmpp-cifar10" if args.gpu else TINY_PRESETS[family])
    for n, algo in itertools.product(args.device_counts, args.convs):
      try:
        r = OursRunner(family, preset, n, args, algo)
      except Exception as e:  # pylint: disable=broad-except
        errors[f"ours {family} x{n} {algo}"] = f"{type(e).__name__}: {e}"
        print(f"FAILED ours {family} x{n} {algo}: {type(e).__name__}: {e}", flush=True)
        continue
      print(f"  built {r.name}: {r.info['params']:,} params, compile {r.info['compile_s']:.1f} s, "
            f"{(r.info['flops_per_step'] or 0) / 1e9:.1f} GFLOP/step (model FLOPs)",
            flush=True)
      runners.append(r)

  torch_runners = []
  ddpmpp = [r for r in runners if r.family == "ddpmpp"]
  for resampling in (() if args.skip_torch or not ddpmpp else args.torch_resampling):
    try:
      torch_runner = TorchRunner(make_train_config("ddpmpp", ddpmpp[0].info["preset"], args).model,
                                 ddpmpp[0].info["params"], args, ddpmpp[0].host_batch, threads,
                                 resampling)
      i = torch_runner.info
      print(f"  built {torch_runner.name}: {i['params']:,} params vs ours {i['ours_params']:,} "
            f"({100 * (i['params_over_ours'] - 1):+.1f}%), {i['flops_per_step'] / 1e9:.1f} "
            f"GFLOP/step (model FLOPs), {i['device']}, {i['threads']} threads", flush=True)
      runners.append(torch_runner)
      torch_runners.append(torch_runner)
    except Exception as e:  # pylint: disable=broad-except
      errors[f"torch {resampling}"] = f"{type(e).__name__}: {e}"
      print(f"torch comparison ({resampling}) skipped: {type(e).__name__}: {e}", flush=True)

  times = {r.name: [] for r in runners}
  for rnd in range(args.repeats):
    for r in runners:
      times[r.name].append(r.run(args.steps))
    print(f"  round {rnd + 1}/{args.repeats}: " +
          ", ".join(f"{r.name} {args.batch * args.steps / times[r.name][-1]:.0f}" for r in runners)
          + " img/s", flush=True)

  results = dict(
      benchmark="train_throughput", time=time.strftime("%Y-%m-%d %H:%M:%S"),
      argv=sys.argv[1:] if argv is None else list(argv),
      platform=dict(python=platform.python_version(), machine=platform.machine(), cpu_cores=cores,
                    jax=jax.__version__, backend=backend, device_kind=dev.device_kind,
                    device_count=len(jax.devices()), xla_flags=os.environ.get("XLA_FLAGS", "")),
      settings=dict(batch=args.batch, steps=args.steps, repeats=args.repeats,
                    resolution=args.resolution, channels=args.channels,
                    num_classes=args.num_classes, dtype=args.dtype,
                    peak_tflops=args.peak_tflops if args.gpu else None),
      runs=[], errors=errors)
  for r in runners:
    med = statistics.median(times[r.name])
    row = dict(r.info, name=r.name, step_s=med / args.steps,
               img_per_s=args.batch * args.steps / med,
               img_per_s_rounds=[args.batch * args.steps / s for s in times[r.name]],
               img_per_s_best=args.batch * args.steps / min(times[r.name]),
               final_loss=r.last_loss)
    if row.get("flops_per_step"):
      row["tflops_per_s"] = row["flops_per_step"] / row["step_s"] / 1e12
      if args.gpu:
        row["mfu"] = row["tflops_per_s"] / args.peak_tflops
    results["runs"].append(row)

  by_name = {row["name"]: row for row in results["runs"]}
  comparisons = {}
  for torch_runner in torch_runners:
    theirs = by_name[torch_runner.name]
    mirror = "torch" if len(torch_runners) == 1 else torch_runner.name
    for row in results["runs"]:
      if row["kind"] == "ours" and row["family"] == "ddpmpp":
        name = row["name"].replace("ours ", "")
        comparisons[f"{name} / {mirror}"] = row["img_per_s"] / theirs["img_per_s"]
        # The least-disturbed round of each (on a shared machine the median mixes in other load).
        comparisons[f"{name} / {mirror} (best rounds)"] = (
            row["img_per_s_best"] / theirs["img_per_s_best"])
        if row.get("flops_per_step") and theirs.get("flops_per_step"):
          # Model FLOP/s against model FLOP/s: the two networks' arithmetic need not be equal.
          comparisons[f"{name} / {mirror} (model FLOP/s)"] = (
              row["tflops_per_s"] / theirs["tflops_per_s"])
  for family, algo in itertools.product(args.families, args.convs):
    rows = {row["devices"]: row for row in results["runs"]
            if row["kind"] == "ours" and row["family"] == family and row["conv"] == algo}
    suffix = f" {algo}" if len(args.convs) > 1 else ""
    for n in rows:
      if n != 1 and 1 in rows:
        comparisons[f"{family} x{n} / x1{suffix}"] = rows[n]["img_per_s"] / rows[1]["img_per_s"]
  results["ratios"] = comparisons
  for torch_runner in torch_runners:
    torch_runner.close()

  # Table.
  print()
  header = f"{'run':<34} {'params':>11} {'img/s':>9} {'best':>8} {'ms/step':>9} {'compile s':>9} {'TFLOP/s':>8}"
  if args.gpu:
    header += f" {'MFU':>6}"
  print(header)
  print("-" * len(header))
  for row in results["runs"]:
    line = (f"{row['name']:<34} {row['params']:>11,} {row['img_per_s']:>9.1f} "
            f"{row['img_per_s_best']:>8.1f} "
            f"{1e3 * row['step_s']:>9.1f} {row.get('compile_s', float('nan')):>9.1f} "
            f"{row.get('tflops_per_s', float('nan')):>8.3f}")
    if args.gpu:
      line += f" {100 * row.get('mfu', float('nan')):>5.1f}%"
    print(line)
  for k, v in comparisons.items():
    print(f"ratio {k}: {v:.2f}")
  for torch_runner in torch_runners:
    i = torch_runner.info
    print(f"{torch_runner.name}: UNet2DModel params {i['params']:,} vs ours {i['ours_params']:,} "
          f"({100 * (i['params_over_ours'] - 1):+.1f}%)")
  for k, v in errors.items():
    print(f"ERROR {k}: {v}")

  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {args.out}")
  bad = [row["name"] for row in results["runs"] if not (row["final_loss"] == row["final_loss"])]
  if bad:
    print(f"non-finite loss in: {bad}")
  return 1 if errors or bad or not runners else 0


if __name__ == "__main__":
  sys.exit(main())
