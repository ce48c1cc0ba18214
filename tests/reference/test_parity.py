#!/usr/bin/env python3
"""PyTorch parity of tmoe (label `reference`).

    python3 test_parity.py <dir>

For every <dir>/*.safetensors written by reference_parity_dump (parity_dump.cpp): rebuild
the model in PyTorch (torch_ref.py; float64 for fp64 variants, float32 for fp32 ones) from
the file's __metadata__, load the initial weights, run the batch, and compare with tmoe:
  - the forward: out.ce, out.aux (weighted balancing losses), out.total, out.logits;
  - every parameter gradient grad.<name> (the set of names must match exactly);
  - per MoE layer of that forward, the routing: rows per expert and assignments dropped by
    capacity (exact integers; a capacity_factor variant must drop some, else it fails as
    vacuous) and each balancing term's unweighted value (forward.layers.<l>.*);
  - 5 steps of torch.optim.AdamW (foreach=False, parameter groups by the conventions' decay
    rule, clip_grad_norm_, the warm-up + cosine schedule computed by hand) against
    step5.<name>, plus the per-step gradient norms, learning rates and losses the Trainer
    reported; after each optimizer step the reference applies the router-bias update
    (BiasUpdate: b += γ·sign(mean load − load), outside autograd) and compares the bias with
    trace.step<s>.<name> (a variant with the update must move it, else it fails as vacuous).
    The bias is a buffer: its gradient must be exactly 0 and AdamW does not see it.
The MoE variants (issue 4) cover router temperature and route_scale, Switch routing with
capacity dropping (probability and position policies), GroupLimited<SigmoidBias> with
Balancing<AuxLoss, SeqAuxLoss, ZLoss, BiasUpdate>, a shared expert and a leading dense layer,
shared experts on TopK, and a two-layer TransformerExpert; the tolerances below hold for them
unchanged (measured ≤ 2e-15 on forwards and gradients, ≤ 2e-13 on step-5 weights; the bias,
a sum of ±γ, matches exactly).
Prints a table of ‖a−b‖/‖b‖ (a = tmoe, b = PyTorch) and max |a−b| per quantity with the
tolerance each check used; exits 1 if any check fails or the directory holds no dump.

Tolerances (relative, ‖a−b‖/‖b‖ over the whole tensor; for grads and step5 the worst
parameter counts):
  fp64 forward / grads: 1e-10. Both sides run in IEEE double and differ only in summation
    order (tmoe's blocked GEMM and chunked reductions vs. PyTorch's BLAS), so they agree
    to a few ulps times the depth of the network: ~1e-15..1e-13 is expected. 1e-10 leaves
    three orders of margin, while every convention mistake we guard against is far larger:
    eps outside the sqrt of RMSNorm (≈ eps/2 = 5e-6 relative), tanh vs erf GELU (≈ 1e-4),
    RoPE pairs interleaved instead of halves, a wrong gate normalisation or slot order, a
    missing term of the balancing losses (aux·0.01 ≈ 1e-2 of the loss), all ≥ 1e-6.
  fp64 after 5 AdamW steps: 1e-9 on the weights (all parameters together, and the worst
    parameter) and on the update θ₅−θ₀ (worst parameter); measured ~1e-14 except for one
    case. A schedule, decay-group, clipping or bias-correction mistake moves the weights
    by ≥ 1e-4 relative. The exception is Adam's noise floor: an element whose exact
    gradient is 0 — the key bias of attention (with linear_bias), since softmax is
    invariant to adding q·b_k to a whole row of scores — gets rounding noise of ~1e-17 on
    each side, and Adam turns it into a step of lr·g/(|g|+eps) ≈ 1e-11 with eps = 1e-8.
    That noise dominates the qkv.bias tensor, whose other entries moved little
    (measured 1e-10..2e-10 relative, 1e-11 absolute). So the per-parameter step5 checks
    also pass when max |a−b| ≤ 1e-8: five steps of lr = 1e-2 on a noise gradient up to
    1e-15 (100x what we see) move an element by at most 5·1e-2·1e-15/1e-8 = 5e-9, and
    1e-8 is still 100x below the smallest update a convention mistake makes (≥ 1e-6).
  fp64 grad norms per step: 1e-10; learning rates per step: 1e-14 (same formula, same
    doubles; only pow/cos ulps can differ).
  fp32 forward / grads: 1e-4 (worst parameter). fp32 has eps ≈ 6e-8; the dot products are
    ≤ 64 long and the nets 2 layers deep, so ~1e-6 is typical, but small gradients built
    from cancelling terms (router weights, whose loss terms are scaled by 1e-2/1e-3) lose
    relative accuracy; 1e-4 keeps a 100x margin over what we measure yet still flags every
    convention error listed above except eps placement (5e-6), which the fp64 variants
    catch.
  fp32 after 5 steps: 1e-4 on the weights, 1e-3 on the update θ₅−θ₀ (measured ~6e-7 and
    ~5e-6). tmoe's AdamW keeps fp32 state but does its arithmetic in double, PyTorch in
    fp32, and the ~1e-6 gradient differences feed five steps of a trajectory through
    clipping and Adam's division by sqrt(v); the update bound leaves 200x margin while a
    wrong schedule, decay group, clip or bias correction changes updates by ≥ 1e-2. No
    absolute floor in fp32: variant (d) has no parameter with an exactly-zero gradient
    (no biases). With one (an attention key bias), fp32 gradient noise (~1e-9) is
    comparable to Adam's eps and could move it by up to ~lr per step, which needs its
    own treatment rather than a looser bound here.
  fp32 grad norms: 1e-5; learning rates: 1e-14 (double on both sides).
"""
from __future__ import annotations

import glob
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import torch
except ImportError as exc:  # torch is a required dependency of this test: fail, never skip
    print(f"test_parity.py: FAILED: cannot import torch with {sys.executable}: {exc}", file=sys.stderr)
    sys.exit(1)

from torch_ref import (DecoderLMRef, RefConfig, param_groups, param_tags, read_safetensors,  # noqa: E402
                       warmup_cosine_lr)

TOLERANCES = {
    "fp64": {"forward": 1e-10, "grad": 1e-10, "step5": 1e-9, "update": 1e-9, "step5_atol": 1e-8,
             "grad_norm": 1e-10, "lr": 1e-14},
    "fp32": {"forward": 1e-4, "grad": 1e-4, "step5": 1e-4, "update": 1e-3, "step5_atol": None,
             "grad_norm": 1e-5, "lr": 1e-14},
}
PREFIXES = ("batch.", "out.", "grad.", "step5.", "trace.")


def errors(a: torch.Tensor, b: torch.Tensor):
    """(‖a−b‖/‖b‖, max|a−b|) in float64; a zero reference counts as exact only if a is zero too."""
    a = a.detach().to(torch.float64).reshape(-1)
    b = b.detach().to(torch.float64).reshape(-1)
    if a.shape != b.shape:
        return math.inf, math.inf
    d = a - b
    nb = b.norm().item()
    nd = d.norm().item()
    rel = nd / nb if nb > 0 else (0.0 if nd == 0 else math.inf)
    mx = d.abs().max().item() if d.numel() else 0.0
    return rel, mx


class Report:
    def __init__(self):
        self.rows = []
        self.failed = False

    def check(self, variant, quantity, rel, mx, tol_name, tol, where="", atol=None):
        """Passes when rel <= tol, or (with atol) when max |a−b| <= atol."""
        ok = rel <= tol or (atol is not None and mx <= atol)
        self.failed |= not ok
        used = f"{tol_name}={tol:g}" + (f" or max<={atol:g}" if atol is not None else "")
        self.rows.append((variant, quantity, rel, mx, used, "ok" if ok else "FAIL", where))

    def fail(self, variant, what):
        self.failed = True
        self.rows.append((variant, what, math.nan, math.nan, "-", "FAIL", ""))

    def print(self):
        hdr = ("variant", "quantity", "rel ‖a−b‖/‖b‖", "max |a−b|", "tolerance", "", "worst")
        w = [max(len(str(r[i])) if i not in (2, 3) else 13 for r in self.rows + [hdr]) for i in range(len(hdr))]
        print(" | ".join(str(h).ljust(w[i]) for i, h in enumerate(hdr)))
        print("-+-".join("-" * x for x in w))
        for r in self.rows:
            cells = [r[0], r[1], f"{r[2]:.3e}", f"{r[3]:.3e}", r[4], r[5], r[6]]
            print(" | ".join(str(c).ljust(w[i]) for i, c in enumerate(cells)))


def check_routing(variant, cfg, model, meta, tol, rep) -> bool:
    """The initial forward's routing per MoE layer against tmoe's (forward.layers.<l>.*): rows
    per expert and assignments dropped by capacity (exact integers), each balancing term's
    unweighted value (forward tolerance). A capacity variant must drop something, else the
    capacity check would be vacuous. Returns False when the dump lacks the routing keys of
    an MoE layer (or has them for a dense one)."""
    moe = {l: blk.moe for l, blk in enumerate(model.layers) if blk.is_moe}
    dumped = sorted({int(k.split(".")[2]) for k in meta if k.startswith("forward.layers.")})
    if dumped != sorted(moe):
        rep.fail(variant, f"MoE layers: tmoe {dumped}, reference {sorted(moe)}")
        return False
    dropped_total = 0
    for l, m in moe.items():
        key = f"forward.layers.{l}."
        kept = [int(x) for x in meta[key + "kept"].split(",")]
        dropped = [int(x) for x in meta[key + "dropped"].split(",")]
        ok = kept == m.last_counts.tolist() and dropped == m.last_dropped.tolist()
        dropped_total += sum(m.last_dropped.tolist())
        rep.check(variant, f"layer {l} rows/dropped per expert", 0.0 if ok else math.inf, 0.0 if ok else math.inf,
                  "exact", 0.0, f"tmoe {kept}/{dropped}" + ("" if ok else f" torch {m.last_counts.tolist()}/"
                                                                      f"{m.last_dropped.tolist()}"))
        terms = dict(t.split("=") for t in meta[key + "terms"].split(",") if t)
        if sorted(terms) != sorted(m.last_terms):
            rep.fail(variant, f"layer {l} balancing terms: tmoe {sorted(terms)}, reference {sorted(m.last_terms)}")
            continue
        for name, text in terms.items():
            rel, mx = errors(torch.tensor([float(text)], dtype=torch.float64),
                             torch.tensor([m.last_terms[name]], dtype=torch.float64))
            rep.check(variant, f"layer {l} term {name}", rel, mx, "forward", tol["forward"])
    if cfg.capacity == "capacity_factor":
        print(f"{variant}: capacity C = {meta.get('model.capacity_factor')}·N·k/E drops {dropped_total} assignments")
        if dropped_total == 0:
            rep.fail(variant, "the capacity variant dropped nothing: its capacity check is vacuous")
    return True


def run_variant(path: str, rep: Report) -> None:
    tensors, meta = read_safetensors(path)
    variant = meta.get("variant", os.path.basename(path))
    precision = meta["precision"]
    if precision not in TOLERANCES:
        rep.fail(variant, f"unknown precision {precision!r}")
        return
    tol = TOLERANCES[precision]
    dtype = torch.float64 if precision == "fp64" else torch.float32
    cfg = RefConfig.from_metadata(meta)
    unknown = RefConfig.unmodelled_fields(meta)
    if unknown:
        print(f"note: {variant}: metadata fields the reference does not model: {unknown}")
    model = DecoderLMRef(cfg, dtype=dtype)
    print(f"{variant}: router {cfg.router}/{cfg.inner_router}, capacity {cfg.capacity}, balance "
          f"{','.join(cfg.balance)}, expert {cfg.expert}/{cfg.ffn_expert}, moe layers "
          f"{[l for l in range(cfg.n_layers) if cfg.is_moe_layer(l)]}")

    # ---- names: file parameters == grad.* == step5.* == the reference's parameters
    names = [n for n in tensors if not n.startswith(PREFIXES)]
    own = [n for n, _ in model.named_parameters()]
    sets = {
        "weights": set(names),
        "grad.*": {n[len("grad."):] for n in tensors if n.startswith("grad.")},
        "step5.*": {n[len("step5."):] for n in tensors if n.startswith("step5.")},
    }
    for what, s in sets.items():
        if s != set(own):
            rep.fail(variant, f"parameter names ({what}) differ: only tmoe {sorted(s - set(own))[:4]}, "
                              f"only torch {sorted(set(own) - s)[:4]}")
            return
    if names != own:
        print(f"note: {variant}: registry order differs from the reference's registration order")
    model.load({n: tensors[n] for n in names})

    ids = tensors["batch.inputs"].long()
    tg = tensors["batch.targets"].long()

    # ---- forward + backward (inference mode: no bias-update load is counted)
    model.eval()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # unrouted experts (and the router bias) get zero gradients, as in tmoe
    logits, ce, aux, total = model(ids, tg)
    total.backward()
    for q, ref in (("ce", ce), ("aux", aux), ("total", total), ("logits", logits)):
        rel, mx = errors(tensors["out." + q], ref)
        rep.check(variant, q, rel, mx, "forward", tol["forward"])
    if not check_routing(variant, cfg, model, meta, tol, rep):
        return
    worst = (-1.0, 0.0, "")
    sq_d = sq_b = gmax = 0.0
    for n, p in model.named_parameters():
        rel, mx = errors(tensors["grad." + n], p.grad)
        d = (tensors["grad." + n].double() - p.grad.double())
        sq_d += d.pow(2).sum().item()
        sq_b += p.grad.double().pow(2).sum().item()
        gmax = max(gmax, mx)
        if rel > worst[0]:
            worst = (rel, mx, n)
    rep.check(variant, f"grads, all {len(own)} (global)", math.sqrt(sq_d / sq_b), gmax, "grad", tol["grad"])
    rep.check(variant, "grads, worst parameter", worst[0], worst[1], "grad", tol["grad"], worst[2])

    # ---- 5 AdamW steps
    steps = int(meta["train.steps"])
    lr = float(meta["train.lr"])
    wd = float(meta["train.weight_decay"])
    clip = float(meta["train.grad_clip"])
    warm = float(meta["train.warmup_fraction"])
    min_ratio = float(meta["train.min_lr_ratio"])
    betas = (float(meta["train.beta1"]), float(meta["train.beta2"]))
    eps = float(meta["train.adam_eps"])
    if int(meta.get("train.grad_accum", "1")) != 1:
        rep.fail(variant, "grad_accum != 1 is not replayed by this test")
        return
    tm_norms = [float(x) for x in meta["trainer.grad_norms"].split(",")]
    tm_lrs = [float(x) for x in meta["trainer.lrs"].split(",")]
    tm_losses = [float(x) for x in meta["trainer.losses"].split(",")] if "trainer.losses" in meta else None
    buffers = [n for n in own if "buffer" in param_tags(n)]
    own_params = dict(model.named_parameters())
    trace_worst = (-1.0, 0.0, "")

    model.load({n: tensors[n] for n in names})
    model.train()
    opt = torch.optim.AdamW(param_groups(model, wd), lr=lr, betas=betas, eps=eps, weight_decay=wd, foreach=False)
    norms, lrs, losses = [], [], []
    for s in range(steps):
        opt.zero_grad(set_to_none=False)
        _, _, _, tot = model(ids, tg)
        losses.append(tot.item())
        tot.backward()
        params = list(model.parameters())
        if clip > 0:
            gn = torch.nn.utils.clip_grad_norm_(params, clip).item()
        else:
            gn = torch.norm(torch.stack([p.grad.detach().norm() for p in params])).item()
        norms.append(gn)
        lr_s = warmup_cosine_lr(s, lr, steps, warm, min_ratio)
        lrs.append(lr_s)
        for g in opt.param_groups:
            g["lr"] = lr_s
        opt.step()
        model.after_step()  # router-bias update (BiasUpdate), after the optimizer step as tmoe's Trainer
        for n in buffers:  # the bias trajectory, step by step
            key = f"trace.step{s}.{n}"
            if key not in tensors:
                rep.fail(variant, f"the dump lacks {key}")
                return
            rel, mx = errors(tensors[key], own_params[n])
            if rel > trace_worst[0]:
                trace_worst = (rel, mx, f"{n} @ step {s}")
    clipped = [i for i, g in enumerate(norms) if clip > 0 and g > clip]
    print(f"{variant}: torch grad norms {['%.6f' % g for g in norms]}; clipped at steps {clipped} "
          f"(max_norm {clip:g}); lrs {['%.6g' % x for x in lrs]}")
    rel, mx = errors(torch.tensor(tm_norms), torch.tensor(norms))
    rep.check(variant, "grad norms, 5 steps", rel, mx, "grad_norm", tol["grad_norm"])
    rel, mx = errors(torch.tensor(tm_lrs, dtype=torch.float64), torch.tensor(lrs, dtype=torch.float64))
    rep.check(variant, "learning rates, 5 steps", rel, mx, "lr", tol["lr"])
    if tm_losses is not None:
        rel, mx = errors(torch.tensor(tm_losses, dtype=torch.float64), torch.tensor(losses, dtype=torch.float64))
        rep.check(variant, "losses, 5 steps", rel, mx, "forward", tol["forward"])
    if buffers:
        if "bias_load_max" in cfg.balance:
            moved = any(bool((own_params[n] != tensors[n].to(own_params[n].dtype)).any()) for n in buffers)
            if not moved:
                rep.fail(variant, "the router bias never moved: the bias-update check is vacuous")
        rep.check(variant, f"router bias after each step ({len(buffers)}x{steps})", trace_worst[0], trace_worst[1],
                  "step5", tol["step5"], trace_worst[2])

    worst_w = (-1.0, 0.0, "")
    worst_u = (-1.0, 0.0, "")
    a_all, b_all = [], []
    with torch.no_grad():
        for n, p in model.named_parameters():
            rel, mx = errors(tensors["step5." + n], p)
            a_all.append(tensors["step5." + n].double().reshape(-1))
            b_all.append(p.double().reshape(-1))
            if rel > worst_w[0]:
                worst_w = (rel, mx, n)
            init = tensors[n].double()
            rel, mx = errors(tensors["step5." + n].double() - init, p.double() - init)
            if rel > worst_u[0]:
                worst_u = (rel, mx, n)
    rel, mx = errors(torch.cat(a_all), torch.cat(b_all))
    rep.check(variant, "step5 weights, all (global)", rel, mx, "step5", tol["step5"])
    rep.check(variant, "step5 weights, worst parameter", worst_w[0], worst_w[1], "step5", tol["step5"], worst_w[2],
              atol=tol["step5_atol"])
    rep.check(variant, "step5 update θ5−θ0, worst param", worst_u[0], worst_u[1], "update", tol["update"], worst_u[2],
              atol=tol["step5_atol"])


def main(argv):
    if len(argv) != 2:
        print("usage: test_parity.py <dump-dir>", file=sys.stderr)
        return 2
    torch.set_num_threads(min(2, torch.get_num_threads()))
    files = sorted(glob.glob(os.path.join(argv[1], "*.safetensors")))
    rep = Report()
    if not files:
        print(f"test_parity.py: FAILED: no *.safetensors in {argv[1]}", file=sys.stderr)
        return 1
    print(f"torch {torch.__version__}; {len(files)} variants from {argv[1]}")
    for f in files:
        try:
            run_variant(f, rep)
        except Exception as exc:  # a broken dump is a failure, with the reason
            import traceback
            traceback.print_exc()
            rep.fail(os.path.basename(f), f"error: {exc}")
    print()
    print("a = tmoe, b = PyTorch reference; tolerances (see the module docstring for why):")
    for prec, t in TOLERANCES.items():
        print(f"  {prec}: " + ", ".join(f"{k}={v:g}" for k, v in t.items() if v is not None))
    print()
    rep.print()
    print()
    print("FAILED" if rep.failed else "PASSED")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
