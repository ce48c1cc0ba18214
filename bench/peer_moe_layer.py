#!/usr/bin/env python3
"""PyTorch peer of bench_moe_layer: the same MoE layer (router Linear without bias, softmax,
top-k on the logits, gates renormalised over the k picks, dropless, SwiGLU experts, optional
shared SwiGLU experts applied to every token, Switch load-balancing loss and router z-loss),
the same configurations and token count, fp32 on the CPU, forward + backward (the layer's
output against a fixed upstream gradient, plus the weighted balancing losses).

Written the way an efficient eager PyTorch MoE is written (Mixtral/DeepSeek style): one
sort of the (token, expert) assignments by expert, one index_select gather, one set of
matmuls per expert over its contiguous slice (torch.split), the gate multiplied into the rows and one
index_add_ combine. The model FLOPs are those of the tmoe layer: 2 x d_model x E for the
router, 2 x 3 x d_model x d_expert for each of the k routed experts and for the shared ones.
Weights are drawn independently (same init std as tmoe, not the same values), so routing is
random and close to uniform on both sides; --check runs it on tmoe's own weights instead.

Memory: every step allocates (N k, d_model) buffers of 32-268 MB. glibc serves allocations
above 32 MB with a fresh mmap and unmaps them on free, so each step pays the page faults of
all of them again (on this VM most of the step time at 64-128 experts). Run it with
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 (glibc keeps freed memory for reuse,
what jemalloc/tcmalloc do and PyTorch's CPU tuning guide recommends); the JSON line says
which allocator setting it ran with ("malloc": "keep" or "default").

usage: /usr/bin/python3 bench/peer_moe_layer.py [--threads 1 2] [--tokens 4096] [--steps 5]
                                                [--warmup 2] [--configs top2,fine64,...]
One JSON line per configuration and thread count.

       /usr/bin/python3 bench/peer_moe_layer.py --check PREFIX [--configs ...]
loads PREFIX<config>.safetensors written by `bench_moe_layer --dump PREFIX` (tmoe's weights,
input, upstream gradient, output, dx, balancing loss and weight gradients), runs this layer
on the same weights and input, and prints the largest relative differences: the check that
both sides compute the same function. Exit status 1 if any exceeds 1e-3.
"""
import argparse
import json
import os
import re
import sys
import time

import torch
import torch.nn.functional as F

# name: (experts, top_k, d_expert, shared experts, d_shared) -- as bench_moe_layer.cpp
CONFIGS = {
    "top2": (8, 2, 1024, 0, 0),
    "fine64": (64, 8, 128, 2, 128),
    "e16": (16, 4, 512, 0, 0),
    "e32": (32, 8, 256, 0, 0),
    "e64": (64, 16, 128, 0, 0),
    "e128": (128, 32, 64, 0, 0),
}
D_MODEL = 512
INIT_STD = 0.02
AUX_W, Z_W = 1e-2, 1e-3


def blas_in_use() -> str:
    cfg = torch.__config__.show()
    m = re.search(r"BLAS_INFO=([^,\s]+)", cfg)
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if re.search(r"lib(openblas|blas|mkl|blis)[^/]*\.so", line):
                    libs.add(line.split()[-1])
    except OSError:
        pass
    core = "?"
    for lib in libs:
        if "openblas" in lib:
            try:
                import ctypes
                fn = ctypes.CDLL(lib).openblas_get_corename
                fn.restype = ctypes.c_char_p
                core = fn().decode()
            except (OSError, AttributeError):
                pass
    return f"{m.group(1) if m else 'unknown'} via {sorted(libs) or ['?']}, OpenBLAS kernel {core}"


def sgemm_gflops(n: int = 1024) -> float:
    a, b = torch.rand(n, n), torch.rand(n, n)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


class SwiGLU(torch.nn.Module):
    """y = (silu(x W1^T) * x W3^T) W2^T, weights (H, C), (H, C), (C, H) as tmoe's SwiGLU."""

    def __init__(self, c: int, h: int, out_std: float):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(h, c) * INIT_STD)
        self.w3 = torch.nn.Parameter(torch.randn(h, c) * INIT_STD)
        self.w2 = torch.nn.Parameter(torch.randn(c, h) * out_std)

    def forward(self, x):
        return F.linear(F.silu(F.linear(x, self.w1)) * F.linear(x, self.w3), self.w2)


class MoELayer(torch.nn.Module):
    def __init__(self, c, e, k, h, n_shared, h_shared):
        super().__init__()
        self.e, self.k = e, k
        out_std = INIT_STD / (2.0 ** 0.5)  # init_std / sqrt(2 n_layers), n_layers = 1
        self.router = torch.nn.Parameter(torch.randn(e, c) * INIT_STD)
        self.experts = torch.nn.ModuleList(SwiGLU(c, h, out_std) for _ in range(e))
        # n shared experts of width h_s are one SwiGLU of width n h_s (as tmoe declares them)
        self.shared = SwiGLU(c, n_shared * h_shared, out_std) if n_shared > 0 else None

    def active_weights(self, c, h, h_shared_total):
        return c * self.e + self.k * 3 * c * h + (3 * c * h_shared_total if self.shared is not None else 0)

    def forward(self, x):
        n = x.shape[0]
        e, k = self.e, self.k
        logits = F.linear(x, self.router)                      # (N, E)
        probs = torch.softmax(logits, dim=-1)
        top_logits, top_ids = logits.topk(k, dim=-1)           # (N, k), largest first
        gates = torch.softmax(top_logits, dim=-1)              # renormalised over the k picks
        flat_ids = top_ids.reshape(-1)                         # assignment a = t k + j
        sorted_ids, order = torch.sort(flat_ids, stable=True)  # by expert, token order within
        tok = order // k
        counts = torch.bincount(flat_ids, minlength=e)
        xs = x.index_select(0, tok)                            # dispatch: (N k, C)
        # split, not slicing: the backward of a slice writes a zero tensor of the whole
        # (N k, C) buffer per expert (E x that memory), split's backward is one concatenation
        ys = [self.experts[i](xi) for i, xi in enumerate(xs.split(counts.tolist())) if xi.shape[0]]
        ys = torch.cat(ys) * gates.reshape(-1).index_select(0, order).unsqueeze(1)
        out = self.shared(x) if self.shared is not None else torch.zeros_like(x)
        out = out.index_add(0, tok, ys)                        # combine
        # Switch aux loss E sum_i f_i P_i (f: share of assignments, no gradient), z-loss
        f = counts.to(x.dtype) / (n * k)
        aux = e * torch.dot(f, probs.mean(0))
        z = torch.logsumexp(logits, dim=-1).pow(2).mean()
        return out, AUX_W * aux + Z_W * z


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    hlen = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + hlen])
    data = blob[8 + hlen:]
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        assert v["dtype"] == "F32", (name, v["dtype"])
        b, e = v["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[b:e]), dtype=torch.float32).reshape(v["shape"])
    return out


def tmoe_names(layer):
    """tmoe registry name -> parameter of this layer."""
    m = {"moe.router.weight": layer.router}
    for i, ex in enumerate(layer.experts):
        for w in ("w1", "w2", "w3"):
            m[f"moe.experts.{i}.{w}.weight"] = getattr(ex, w)
    if layer.shared is not None:
        for w in ("w1", "w2", "w3"):
            m[f"moe.shared_experts.{w}.weight"] = getattr(layer.shared, w)
    return m


def check(prefix, configs) -> int:
    worst = 0.0
    for name in configs:
        e, k, h, ns, hs = CONFIGS[name]
        t = read_safetensors(f"{prefix}{name}.safetensors")
        layer = MoELayer(D_MODEL, e, k, h, ns, hs)
        params = tmoe_names(layer)
        assert set(params) == {n for n in t if not n.startswith("grad.") and n not in ("x", "dout", "out", "dx", "loss")}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(t[n])
        x = t["x"].clone().requires_grad_(True)
        out, bal = layer(x)
        torch.autograd.backward([out, bal], [t["dout"], torch.ones_like(bal)])

        def rel(a, b):
            return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))

        diffs = {"out": rel(out.detach(), t["out"]), "dx": rel(x.grad, t["dx"]),
                 "loss": rel(bal.detach().reshape(1), t["loss"])}
        gw = 0.0
        for n, p in params.items():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            gw = max(gw, rel(g, t["grad." + n]))
        diffs["weight grads"] = gw
        worst = max(worst, *diffs.values())
        print(f"{name}: {x.shape[0]} tokens, max relative difference to tmoe: " +
              ", ".join(f"{a} {b:.2e}" for a, b in diffs.items()), flush=True)
    return 0 if worst <= 1e-3 else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--check", metavar="PREFIX")
    args = ap.parse_args()
    if args.check:
        return check(args.check, args.configs.split(","))
    n, c = args.tokens, D_MODEL
    print(f"# torch {torch.__version__}, BLAS {blas_in_use()}, OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default')}", flush=True)
    for name in args.configs.split(","):
        e, k, h, ns, hs = CONFIGS[name]
        torch.manual_seed(0)
        layer = MoELayer(c, e, k, h, ns, hs)
        x = torch.randn(n, c, requires_grad=True)
        dout = torch.randn(n, c) / n
        active = layer.active_weights(c, h, ns * hs)
        for th in args.threads:
            torch.set_num_threads(th)
            peak = sgemm_gflops()
            tf, tb = [], []
            loss_v = 0.0
            for it in range(args.warmup + args.steps):
                layer.zero_grad(set_to_none=True)
                x.grad = None
                t0 = time.perf_counter()
                out, bal = layer(x)
                t1 = time.perf_counter()
                # d/d(out) = dout, d/d(bal) = 1, as tmoe's backward(dout, ..., grad_scale = 1)
                torch.autograd.backward([out, bal], [dout, torch.ones_like(bal)])
                t2 = time.perf_counter()
                loss_v = float(bal)
                if it >= args.warmup:
                    tf.append(t1 - t0)
                    tb.append(t2 - t1)
            tot = sorted(a + b for a, b in zip(tf, tb))
            step = tot[len(tot) // 2]
            tok_s = n / step
            gflops = 6 * active * tok_s / 1e9
            blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
            malloc = "keep" if os.environ.get("MALLOC_MMAP_MAX_") == "0" else "default"
            print(json.dumps({"impl": "pytorch", "config": name, "experts": e, "top_k": k, "d_expert": h,
                              "shared": ns, "d_shared": hs, "threads": th, "blas_threads": blas, "malloc": malloc, "tokens": n,
                              "active_weights": active, "tokens_per_s": round(tok_s, 1),
                              "step_ms": round(1e3 * step, 2), "fwd_ms": round(1e3 * sorted(tf)[len(tf) // 2], 2),
                              "bwd_ms": round(1e3 * sorted(tb)[len(tb) // 2], 2),
                              "achieved_gflops": round(gflops, 2), "sgemm_peak_gflops": round(peak, 2),
                              "mfu": round(gflops / peak, 4), "loss": round(loss_v, 6)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
