#!/usr/bin/env python3
"""Optimizer parity of tmoe (label `reference`).

    python3 test_optim_parity.py <reference_optim_dump>

Writes fixed float64 tensors (initial parameters and 20 steps of gradients for four
tensors of 37, 4096, 9001 and 5 elements: sizes off and on the 4096-element chunk, one
spanning three chunks) to a temporary directory, runs the C++ program once per optimizer
configuration (tmoe::StandardOptimizers chosen by name; format in optim_dump.cpp), and
compares the parameters and every state array after the 20th step:
  - sgd (plain, momentum 0.9, momentum 0.9 with dampening 0.1, Nesterov 0.9; each with
    weight decay 0 and 1e-2) and adamw (betas (0.9, 0.95), weight decay 0.1, peak lr
    1e-3 / 3e-3 / 1e-2 under warm-up + cosine and one constant lr) against torch.optim.SGD
    and torch.optim.AdamW (foreach=False) in float64, one parameter group per tensor (the
    last tensor in the no-decay group, weight decay 0) and the lr of each step set in the
    groups before the step, as a schedule does; state by PyTorch's names
    (momentum_buffer, exp_avg, exp_avg_sq);
  - lion and sign_momentum (threshold 0 and 0.3) against the NumPy float64 reference
    below, written from the equations in docs/concepts/optimizer.md (no code shared with
    the C++), for sign_momentum also with fast-forgetting moments (lion_beta2 0.9, beta2
    0.5) that reach the cap. Checks against vacuity: with threshold 0.3 some updates must
    be zeroed and some kept, the fast configurations must cap some at lr, and lion must
    meet c = 0 (sign(0) = 0).
Tolerance: max |tmoe − reference| <= 1e-12 on parameters and state. Both sides compute
the same IEEE double operations in the same order; they may differ only where one side
fuses a multiply-add (GCC contracts a*b + c with -march=native; PyTorch's vectorised add
with alpha is an FMA), i.e. by a few ulps per step: ~1e-16 on values of order 1. A wrong
equation (bias correction, dampening at step 1, coupled vs decoupled decay, Nesterov
term, threshold, cap) changes results by >= 1e-6.
PyTorch is a required dependency of this test: without it the test fails, it does not skip
(as test_parity.py). Prints one line per configuration; exits 1 if any check fails.
"""
from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
except ImportError as exc:  # torch is a required dependency of this test: fail, never skip
    print(f"test_optim_parity.py: FAILED: cannot import torch/numpy with {sys.executable}: {exc}", file=sys.stderr)
    sys.exit(1)

TOL = 1e-12
STEPS = 20
SIZES = (37, 4096, 9001, 5)  # the last tensor is the no-decay group


# ---------------------------------------------------------------- fixed inputs
def make_inputs():
    """Initial params and STEPS gradients per tensor, from a fixed seed.

    Gradient of coordinate i at step t: mean_i·scale_i(t) + sigma_i·noise, with per-coordinate
    signal-to-noise ratios spread over decades (so sign_momentum's r lands on both sides of
    its threshold), every 7th coordinate's gradient shrinking by 0.6 per step (the second
    moment then forgets faster than the momentum: r > 1, the cap), every 13th exactly zero at
    a few steps, and coordinate 3 of each tensor always zero (Lion: c = 0, sign(0) = 0).
    """
    rng = np.random.RandomState(20240611)
    params = [rng.standard_normal(n) * 0.5 for n in SIZES]
    grads = [[None] * len(SIZES) for _ in range(STEPS)]
    for k, n in enumerate(SIZES):
        idx = np.arange(n)
        mean = 0.5 * rng.standard_normal(n)
        sigma = np.exp(rng.uniform(math.log(0.02), math.log(2.0), n))
        shrink = idx % 7 == 0
        for t in range(STEPS):
            scale = np.where(shrink, 0.6 ** t, 1.0)
            g = scale * (mean + sigma * rng.standard_normal(n))
            if t % 4 == 1:
                g[idx % 13 == 0] = 0.0
            g[3 % n] = 0.0
            grads[t][k] = g
    return params, grads


def write_inputs(path, params, grads):
    with open(path, "wb") as f:
        f.write(struct.pack("<qq", len(SIZES), STEPS))
        for n in SIZES:
            f.write(struct.pack("<q", n))
        for p in params:
            f.write(np.ascontiguousarray(p, dtype="<f8").tobytes())
        for t in range(STEPS):
            for g in grads[t]:
                f.write(np.ascontiguousarray(g, dtype="<f8").tobytes())


def read_output(path):
    """(slot names, [(params, {slot: state})] per tensor)."""
    with open(path, "rb") as f:
        buf = f.read()
    off = 0

    def i64():
        nonlocal off
        (v,) = struct.unpack_from("<q", buf, off)
        off += 8
        return v

    def f64(n):
        nonlocal off
        a = np.frombuffer(buf, dtype="<f8", count=n, offset=off).copy()
        off += 8 * n
        return a

    k, used = i64(), i64()
    names = []
    for _ in range(used):
        ln = i64()
        names.append(buf[off:off + ln].decode())
        off += ln
    if k != len(SIZES):
        raise RuntimeError(f"output holds {k} tensors, expected {len(SIZES)}")
    tensors = []
    for n in SIZES:
        p = f64(n)
        tensors.append((p, {nm: f64(n) for nm in names}))
    if off != len(buf):
        raise RuntimeError(f"output has {len(buf) - off} trailing bytes")
    return names, tensors


# ---------------------------------------------------------------- schedules
def warmup_cosine(peak, steps=STEPS, warmup=3, min_ratio=0.1):
    lrs = []
    for s in range(steps):
        if s < warmup:
            lrs.append(peak * (s + 1) / warmup)
        else:
            prog = (s - warmup) / (steps - warmup - 1)
            lo = peak * min_ratio
            lrs.append(lo + 0.5 * (peak - lo) * (1 + math.cos(math.pi * prog)))
    return lrs


# ---------------------------------------------------------------- references
def torch_reference(cfg, params, grads):
    ps = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params]
    groups = [{"params": [p], "weight_decay": wd} for p, wd in zip(ps, cfg["wd"])]
    lr0 = cfg["lr"][0]
    if cfg["optimizer"] == "sgd":
        opt = torch.optim.SGD(groups, lr=lr0, momentum=cfg.get("momentum", 0.0),
                              dampening=cfg.get("dampening", 0.0), nesterov=bool(cfg.get("nesterov", 0)),
                              foreach=False)
        slots = ["momentum_buffer"] if cfg.get("momentum", 0.0) > 0 else []
    elif cfg["optimizer"] == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr0, betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["adam_eps"],
                                foreach=False)
        slots = ["exp_avg", "exp_avg_sq"]
    else:
        raise ValueError(cfg["optimizer"])
    for t in range(STEPS):
        for g in opt.param_groups:
            g["lr"] = cfg["lr"][t]
        for p, gr in zip(ps, grads[t]):
            p.grad = torch.tensor(gr, dtype=torch.float64)
        opt.step()
    out = []
    for p in ps:
        st = opt.state[p]
        out.append((p.detach().numpy().copy(), {s: st[s].detach().numpy().copy() for s in slots}))
    return slots, out, {}


def lion_reference(cfg, params, grads):
    """Lion, elementwise in float64 NumPy, straight from the equations."""
    b1, b2 = cfg["lion_beta1"], cfg["lion_beta2"]
    ps = [p.copy() for p in params]
    ms = [np.zeros_like(p) for p in params]
    zero_c = 0
    for t in range(STEPS):
        lr = cfg["lr"][t]
        for k in range(len(ps)):
            g = grads[t][k]
            c = b1 * ms[k] + (1 - b1) * g
            zero_c += int(np.count_nonzero(c == 0))
            ps[k] = ps[k] * (1 - lr * cfg["wd"][k]) - lr * np.sign(c)
            ms[k] = b2 * ms[k] + (1 - b2) * g
    return ["exp_avg"], [(p, {"exp_avg": m}) for p, m in zip(ps, ms)], {"sign(0)": zero_c}


def sign_momentum_reference(cfg, params, grads):
    """The seed's rule, elementwise in float64 NumPy, straight from the equations."""
    b1, b2 = cfg["lion_beta1"], cfg["lion_beta2"]
    bv, eps, tau = cfg["beta2"], cfg["adam_eps"], cfg["sign_threshold"]
    ps = [p.copy() for p in params]
    ms = [np.zeros_like(p) for p in params]
    vs = [np.zeros_like(p) for p in params]
    counts = {"zeroed": 0, "capped": 0, "between": 0}
    for t in range(STEPS):
        lr, step = cfg["lr"][t], t + 1
        for k in range(len(ps)):
            g = grads[t][k]
            c = b1 * ms[k] + (1 - b1) * g
            vs[k] = bv * vs[k] + (1 - bv) * g ** 2
            vhat = vs[k] / (1 - bv ** step)
            r = np.abs(c) / (np.sqrt(vhat) + eps)
            keep = r >= tau
            u = np.sign(c) * np.minimum(1.0, r) * keep
            counts["zeroed"] += int(np.count_nonzero(~keep & (c != 0)))
            counts["capped"] += int(np.count_nonzero(keep & (r > 1)))
            counts["between"] += int(np.count_nonzero(keep & (r <= 1) & (r > 0)))
            ps[k] = ps[k] * (1 - lr * cfg["wd"][k]) - lr * u
            ms[k] = b2 * ms[k] + (1 - b2) * g
    return (["exp_avg", "exp_avg_sq"], [(p, {"exp_avg": m, "exp_avg_sq": v}) for p, m, v in zip(ps, ms, vs)],
            counts)


# ---------------------------------------------------------------- configurations
def configs():
    n = len(SIZES)

    def wd(x):
        return [x] * (n - 1) + [0.0]

    out = []
    sgd_lr = warmup_cosine(0.05)
    for wdv in (0.0, 1e-2):
        tag = f"wd{wdv:g}"
        out.append((f"sgd_plain_{tag}", {"optimizer": "sgd", "lr": sgd_lr, "wd": wd(wdv)}))
        out.append((f"sgd_momentum_{tag}", {"optimizer": "sgd", "momentum": 0.9, "lr": sgd_lr, "wd": wd(wdv)}))
        out.append((f"sgd_momentum_damp0.1_{tag}",
                    {"optimizer": "sgd", "momentum": 0.9, "dampening": 0.1, "lr": sgd_lr, "wd": wd(wdv)}))
        out.append((f"sgd_nesterov_{tag}",
                    {"optimizer": "sgd", "momentum": 0.9, "nesterov": 1, "lr": sgd_lr, "wd": wd(wdv)}))
    adam = {"optimizer": "adamw", "beta1": 0.9, "beta2": 0.95, "adam_eps": 1e-8, "wd": wd(0.1)}
    for peak in (1e-3, 3e-3, 1e-2):
        out.append((f"adamw_cosine_lr{peak:g}", dict(adam, lr=warmup_cosine(peak))))
    out.append(("adamw_constant_lr3e-3", dict(adam, lr=[3e-3] * STEPS)))
    lion = {"optimizer": "lion", "lion_beta1": 0.9, "lion_beta2": 0.99, "lr": warmup_cosine(3e-4)}
    out.append(("lion_wd0", dict(lion, wd=wd(0.0))))
    out.append(("lion_wd1", dict(lion, wd=wd(1.0))))
    out.append(("lion_betas0.95,0.98_wd1", dict(lion, lion_beta1=0.95, lion_beta2=0.98, wd=wd(1.0))))
    sm = {"optimizer": "sign_momentum", "lion_beta1": 0.9, "lion_beta2": 0.99, "beta2": 0.95, "adam_eps": 1e-8,
          "lr": warmup_cosine(1e-3)}
    for tau in (0.0, 0.3):
        out.append((f"sign_momentum_tau{tau:g}_wd0", dict(sm, sign_threshold=tau, wd=wd(0.0))))
        out.append((f"sign_momentum_tau{tau:g}_wd0.3", dict(sm, sign_threshold=tau, wd=wd(0.3))))
    # Momentum and second moment that forget fast: shrinking gradients leave |c| > sqrt(v̂),
    # so the cap at lr is taken too.
    fast = dict(sm, lion_beta2=0.9, beta2=0.5)
    out.append(("sign_momentum_tau0_fast_wd0.3", dict(fast, sign_threshold=0.0, wd=wd(0.3))))
    out.append(("sign_momentum_tau0.3_fast_wd0.3", dict(fast, sign_threshold=0.3, wd=wd(0.3))))
    return out


def write_config(path, cfg):
    with open(path, "w") as f:
        for key, val in cfg.items():
            if isinstance(val, list):
                f.write(key + " " + " ".join(repr(float(x)) for x in val) + "\n")
            elif isinstance(val, str):
                f.write(f"{key} {val}\n")
            else:
                f.write(f"{key} {val!r}\n")


def main():
    if len(sys.argv) != 2:
        print("usage: test_optim_parity.py <reference_optim_dump>", file=sys.stderr)
        return 2
    exe = sys.argv[1]
    params, grads = make_inputs()
    failures = []
    print(f"torch {torch.__version__}, numpy {np.__version__}; tensors {SIZES}, {STEPS} steps; tolerance {TOL:g}")
    print(f"{'configuration':32s} {'max|dp|':>10s} {'max|dstate|':>11s}  bitwise  notes")
    with tempfile.TemporaryDirectory(prefix="tmoe_optim_parity_") as tmp:
        data = os.path.join(tmp, "data.bin")
        write_inputs(data, params, grads)
        for name, cfg in configs():
            cfg_path = os.path.join(tmp, name + ".txt")
            out_path = os.path.join(tmp, name + ".out")
            write_config(cfg_path, cfg)
            run = subprocess.run([exe, data, cfg_path, out_path], capture_output=True, text=True)
            if run.returncode != 0:
                failures.append(f"{name}: the C++ program failed ({run.returncode}): {run.stderr.strip()}")
                print(f"{name:32s} C++ FAILED: {run.stderr.strip()}")
                continue
            names, got = read_output(out_path)
            if cfg["optimizer"] in ("sgd", "adamw"):
                ref_names, ref, notes = torch_reference(cfg, params, grads)
            elif cfg["optimizer"] == "lion":
                ref_names, ref, notes = lion_reference(cfg, params, grads)
            else:
                ref_names, ref, notes = sign_momentum_reference(cfg, params, grads)
            if names != ref_names:
                failures.append(f"{name}: state slots {names}, reference {ref_names}")
            dp = ds = 0.0
            bitwise = True
            moved = 0.0
            for k, ((gp, gs), (rp, rs)) in enumerate(zip(got, ref)):
                dp = max(dp, float(np.max(np.abs(gp - rp))))
                bitwise &= bool(np.array_equal(gp, rp))
                moved = max(moved, float(np.max(np.abs(rp - params[k]))))
                for s in ref_names:
                    if s in gs:
                        ds = max(ds, float(np.max(np.abs(gs[s] - rs[s]))))
                        bitwise &= bool(np.array_equal(gs[s], rs[s]))
            ok = dp <= TOL and ds <= TOL and math.isfinite(dp) and math.isfinite(ds)
            if not ok:
                failures.append(f"{name}: max |dp| {dp:.3g}, max |dstate| {ds:.3g} > {TOL:g}")
            if not moved > 0:
                failures.append(f"{name}: the reference parameters did not move (vacuous)")
            note = " ".join(f"{k}={v}" for k, v in notes.items())
            if cfg["optimizer"] == "lion" and notes["sign(0)"] == 0:
                failures.append(f"{name}: no coordinate had c = 0 (sign(0) untested)")
            if cfg.get("sign_threshold", 0) > 0 and (notes["zeroed"] == 0 or notes["between"] == 0):
                failures.append(f"{name}: the threshold zeroed nothing or everything: {note}")
            if "fast" in name and notes["capped"] == 0:
                failures.append(f"{name}: no update was capped at lr: {note}")
            print(f"{name:32s} {dp:10.3g} {ds:11.3g}  {'yes' if bitwise else 'no ':3s}      {note}"
                  f"{'' if ok else '  FAIL'}")
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print("\nall optimizer configurations match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
