"""Where the CPU training step's time goes: a `jax.profiler` trace of a few steps of
`train_throughput.py`'s DDPM++ step (32x32x3, batch 64), its events summed by XLA op kind
(the fusion name without its number), largest first.

    python benchmarks/step_profile.py [--devices 1 --steps 2 --top 15]
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=individual_dot python benchmarks/step_profile.py
    python benchmarks/step_profile.py --devices 2 --by_role

Times are summed over every device's thread (on 2 devices they add up to about twice the step).
--by_role also maps each event to its instruction in the compiled HLO and sums by what the
instruction does, from its kind and the model op it came from (convolutions and dots; weight-
gradient transposes; SiLU; GroupNorm; dropout's random bits; the rest), as shares of the op time.
Writes benchmarks/results/step_profile.json (and the trace under /tmp/step_profile/).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput  # noqa: E402  (sets XLA_FLAGS' device count before jax starts)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--devices", type=int, default=1)
  p.add_argument("--steps", type=int, default=2)
  p.add_argument("--top", type=int, default=15)
  p.add_argument("--by_role", action="store_true",
                 help="also sum the op time by role (convolution, transpose, SiLU, ...) via the HLO")
  p.add_argument("--trace_dir", default="/tmp/step_profile")
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results", "step_profile.json"))
  args = p.parse_args(argv)
  train_throughput.set_host_device_count(args.devices)
  targs = train_throughput.parse_args(["--families", "ddpmpp", "--devices", str(args.devices),
                                       "--conv", "xla", "--warmup", "1", "--skip_torch"])
  import jax  # pylint: disable=import-outside-toplevel
  runner = train_throughput.OursRunner("ddpmpp", "ddpmpp-tiny", args.devices, targs)
  jax.profiler.start_trace(args.trace_dir, create_perfetto_trace=True)
  seconds = runner.run(args.steps)
  jax.profiler.stop_trace()
  path = sorted(glob.glob(os.path.join(args.trace_dir, "**", "*.trace.json.gz"), recursive=True),
                key=os.path.getmtime)[-1]
  events = json.load(gzip.open(path))
  events = events["traceEvents"] if isinstance(events, dict) else events
  by_kind, count = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or "dur" not in e or any(
        s in name for s in ("ThunkExecutor", "$", "Pjit", "block_until", "stop_trace", "Execute",
                            "Wait", "Rendezvous")):
      continue  # keep the ops, not the runtime's enclosing spans
    kind = re.sub(r"\.\d+$", "", name)
    by_kind[kind] += e["dur"] / 1e3 / args.steps  # ms per step
    count[kind] += 1
  step_ms = 1e3 * seconds / args.steps
  print(f"{args.devices} device(s), XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}: "
        f"{step_ms:.0f} ms per step (traced); ms per step by op kind (summed over devices):")
  for kind, ms in by_kind.most_common(args.top):
    print(f"  {ms:8.1f}  {count[kind] // args.steps:5d} calls  {kind}")
  by_role = top_instructions = None
  if args.by_role:
    by_name = collections.Counter()
    for e in events:
      if e.get("ph") == "X" and "dur" in e:
        by_name[e.get("name", "")] += e["dur"] / 1e3 / args.steps
    hlo = runner.compiled.as_text()
    by_role = roles(by_name, hlo)
    total = sum(by_role.values())
    print("ms per step by role (summed over devices), share of the op time:")
    for role, ms in by_role.most_common():
      print(f"  {ms:8.1f}  {100 * ms / total:5.1f}%  {role}")
    top_instructions = instruction_table(by_name, hlo, args.top)
    print(f"the {args.top} slowest instructions (ms per step summed over devices; output shape; the "
          "model op of the convolution or dot inside, if any):")
    for row in top_instructions:
      print(f"  {row['ms']:8.1f}  {row['name']:<28} {row['shape']:<28} {row['op']}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(devices=args.devices, xla_flags=os.environ.get("XLA_FLAGS", ""),
                   step_ms=step_ms, ms_per_step_by_kind=dict(by_kind.most_common()),
                   ms_per_step_by_role=None if by_role is None else dict(by_role.most_common()),
                   top_instructions=top_instructions),
              f, indent=1)
  print(f"wrote {args.out}")


def _instructions(hlo_text: str):
  """({instruction name: its line}, {computation name: its body's lines}) of an HLO module."""
  instructions, computations, current = {}, {}, None
  for line in hlo_text.split("\n"):
    head = re.match(r"(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if head and not line.startswith(" "):
      current = computations.setdefault(head.group(1), [])
      continue
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
    if m:
      instructions[m.group(1)] = line
      if current is not None:
        current.append(line)
  return instructions, computations


def instruction_table(ms_by_event_name, hlo_text: str, top: int):
  """The `top` slowest instructions: name, ms, output shape and, for a fusion that holds a
  convolution or dot, that op's model name (e.g. .../dec_32x32_up/conv0)."""
  instructions, computations = _instructions(hlo_text)
  rows = []
  for name, ms in sorted(ms_by_event_name.items(), key=lambda kv: -kv[1]):
    line = instructions.get(name)
    if line is None:
      continue
    shape = line.split(" = ", 1)[1].split(" ", 1)[0]
    called = re.search(r"calls=%?([\w.\-]+)", line)
    body = computations.get(called.group(1), []) if called else [line]
    inner = [b for b in body if "convolution(" in b or " dot(" in b] or [line]
    op = re.search(r'op_name="([^"]+)"', inner[0])
    rows.append(dict(name=name, ms=ms, shape=shape, op=op.group(1) if op else ""))
    if len(rows) == top:
      break
  return rows


def roles(ms_by_event_name, hlo_text: str) -> collections.Counter:
  """{role: ms}: each traced op (an HLO instruction of the entry computation, by name) given a
  role from its kind and the model op its metadata names; events that are not instructions (the
  runtime's spans) are left out."""
  instructions, _ = _instructions(hlo_text)
  out = collections.Counter()
  for name, ms in ms_by_event_name.items():
    line = instructions.get(name)
    if line is None:
      continue
    m = re.search(r'op_name="([^"]+)"', line)
    op = m.group(1) if m else ""
    if name.startswith("all-reduce"):  # before the rest: its metadata names the ops it sums
      role = "all-reduce"
    elif name.startswith("ynn_fusion") or "convolution(" in line or " dot(" in line:
      role = "convolutions and dots"
    elif name.startswith("transpose"):
      role = "transposes"
    elif any(s in op for s in ("Dropout", "bernoulli", "threefry", "random")):
      role = "dropout random bits"
    elif "norm" in op:
      role = "GroupNorm"
    elif "silu" in op:
      role = "SiLU (normalisation fused)"
    else:
      role = "other"
    out[role] += ms
  return out


if __name__ == "__main__":
  main()
