"""Parity of NVIDIA's networks loaded here with NVIDIA's own float64 outputs, in float32 and float64.

For each fixture network (tests/fixtures/nvidia_networks/: edm-cond, edm-uncond, edm2-cond,
edm2-uncond; and the two stripped snapshot pickles) it prints max |D_ours - D_nvidia| at each of the
fixture's sigmas (0.002, 0.5, 2, 80), the null-label and log-variance errors, and writes
benchmarks/results/nvidia_parity.json. float64 runs in a second process with jax x64.

    python benchmarks/nvidia_parity.py
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "nvidia_networks")
OUT = os.path.join(ROOT, "benchmarks", "results", "nvidia_parity.json")
CASES = [("edm-cond", "edm-cond", "denoised"), ("edm-uncond", "edm-uncond", "denoised"),
         ("edm2-cond", "edm2-cond", "denoised"), ("edm2-uncond", "edm2-uncond", "denoised"),
         ("pickles/edm-uncond-network-snapshot-000000.stripped.pkl", "edm-uncond",
          "denoised_pickled_weights"),
         ("pickles/edm2-cond-network-snapshot-0001048-0.100.stripped.pkl", "edm2-cond",
          "denoised_pickled_weights")]


def measure(dtype):
  import jax  # pylint: disable=import-outside-toplevel
  if dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  import numpy as np  # pylint: disable=import-outside-toplevel
  from diffgen_jax import edm, models  # pylint: disable=import-outside-toplevel
  from diffgen_jax.models import nvidia  # pylint: disable=import-outside-toplevel
  out = {}
  for source, variant, key in CASES:
    if source.startswith("pickles/") and dtype == "float64":
      continue  # the pickles' float16/float32 weights: float32 is the meaningful comparison
    io = np.load(os.path.join(FIXTURES, variant, "io.npz"))
    denoise, network = nvidia.load_denoiser(os.path.join(FIXTURES, source), dtype)
    x = np.transpose(io["x"], (0, 2, 3, 1)).astype(dtype)
    sigma = io["sigma"].astype(dtype)
    labels = io["class_index"].astype(np.int32) if "class_index" in io else None
    apply = jax.jit(lambda d, x, s, l: d(x, s, l))
    d = np.asarray(apply(denoise, x, sigma, labels)).transpose(0, 3, 1, 2)
    row = {"reference": key, "max_abs_dD_per_sigma": np.abs(d - io[key]).max(axis=(1, 2, 3)).tolist()}
    if labels is not None and key == "denoised":
      dn = np.asarray(apply(denoise, x, sigma, None)).transpose(0, 3, 1, 2)
      row["null_label_max_abs_dD"] = float(np.abs(dn - io["denoised_null_label"]).max())
    if network.model_config.family == "edm2":
      module = models.build(network.model_config)
      c = edm.preconditioning(sigma)
      _, logvar = jax.jit(lambda p, x, n, l: module.apply({"params": p}, x, n, l,
                                                          return_logvar=True))(
          network.params, x * np.asarray(c.c_in)[:, None, None, None], c.c_noise, labels)
      ref = io["logvar" if key == "denoised" else "logvar_pickled_weights"].reshape(-1)
      row["logvar_max_abs"] = float(np.abs(np.asarray(logvar) - ref).max())
    out[source] = row
  return out


def main():
  if len(sys.argv) > 2 and sys.argv[1] == "--child":
    print(json.dumps(measure(sys.argv[2])))
    return
  results = {}
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  for dtype in ("float32", "float64"):
    proc = subprocess.run([sys.executable, __file__, "--child", dtype], capture_output=True,
                          text=True, env=env, check=True)
    results[dtype] = json.loads(proc.stdout.strip().splitlines()[-1])
  os.makedirs(os.path.dirname(OUT), exist_ok=True)
  with open(OUT, "w") as f:
    json.dump(results, f, indent=1)
  print("| network | dtype | max abs dD at sigma 0.002 / 0.5 / 2 / 80 | null label | logvar |")
  print("|---|---|---|---|---|")
  for dtype, rows in results.items():
    for source, row in rows.items():
      per = " / ".join(f"{v:.1e}" for v in row["max_abs_dD_per_sigma"])
      null = f"{row['null_label_max_abs_dD']:.1e}" if "null_label_max_abs_dD" in row else "-"
      lv = f"{row['logvar_max_abs']:.1e}" if "logvar_max_abs" in row else "-"
      print(f"| {os.path.basename(source)} (vs {row['reference']}) | {dtype} | {per} | {null} | {lv} |")
  print(f"wrote {OUT}")


if __name__ == "__main__":
  main()
