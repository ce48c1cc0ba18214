#!/usr/bin/env python3
"""PyTorch peer of bench_train_step: the same model (tests/reference/torch_ref.py, which
follows docs/conventions.md), the same shape and batch, a full training step (forward,
backward, clip, AdamW), in float32 on the CPU. One JSON line per thread setting.

With --autocast bf16 the forward runs under torch.autocast(cpu, bfloat16) (fp32 master
weights, bf16 matmuls); torch 1.13 has no fp16 autocast on the CPU.

usage: /usr/bin/python3 bench/peer_torch.py [--threads 1 2] [--steps 5] [--warmup 2] [--autocast bf16] [key=value ...]
"""
import contextlib
import resource
import argparse
import json
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from torch_ref import DecoderLMRef, RefConfig, param_groups  # noqa: E402


def blas_in_use() -> str:
    cfg = torch.__config__.show()
    m = re.search(r"BLAS_INFO=([^,\s]+)", cfg)
    libs = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if re.search(r"lib(openblas|blas|mkl|blis)[^/]*\.so", line):
                    libs.append(line.split()[-1])
    except OSError:
        pass
    core = "?"
    for lib in set(libs):
        if "openblas" in lib:
            try:
                import ctypes
                fn = ctypes.CDLL(lib).openblas_get_corename
                fn.restype = ctypes.c_char_p
                core = fn().decode()
            except (OSError, AttributeError):
                pass
    return f"{m.group(1) if m else 'unknown'} via {sorted(set(libs)) or ['?']}, OpenBLAS kernel {core}"


def sgemm_gflops(n: int = 1024) -> float:
    a = torch.rand(n, n)
    b = torch.rand(n, n)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--autocast", choices=["none", "bf16"], default="none")
    ap.add_argument("overrides", nargs="*", help="model.key=value")
    args = ap.parse_args()
    cfg = RefConfig(vocab_size=256, context=256, d_model=256, n_layers=4, n_heads=8, n_experts=8, top_k=2,
                    d_expert=512)
    for ov in args.overrides:
        key, _, val = ov.partition("=")
        key = key.removeprefix("model.")
        cur = getattr(cfg, key)
        setattr(cfg, key, (val == "true") if isinstance(cur, bool) else type(cur)(val))
    b, t = args.batch, args.seq
    print(f"# torch {torch.__version__}, BLAS {blas_in_use()}", flush=True)
    for th in args.threads:
        torch.set_num_threads(th)
        torch.manual_seed(0)
        model = DecoderLMRef(cfg, dtype=torch.float32)
        opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, foreach=False)
        data = torch.randint(0, cfg.vocab_size, (1 << 16,))
        n_active = 0

        def step(i):
            starts = [(i * 977 + r * 4099) % (data.numel() - t - 1) for r in range(b)]
            x = torch.stack([data[s:s + t] for s in starts])
            y = torch.stack([data[s + 1:s + t + 1] for s in starts])
            opt.zero_grad(set_to_none=True)
            ctx = (torch.autocast(device_type="cpu", dtype=torch.bfloat16) if args.autocast == "bf16"
                   else contextlib.nullcontext())
            with ctx:
                _, _, _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return float(loss)

        for i in range(args.warmup):
            step(i)
        times = []
        loss = 0.0
        for i in range(args.steps):
            t0 = time.perf_counter()
            loss = step(args.warmup + i)
            times.append(time.perf_counter() - t0)
        sec = sorted(times)[len(times) // 2] * args.steps  # median step, as bench_train_step
        tok_s = args.steps * b * t / sec
        # model FLOPs per token, DESIGN.md: 6 N_active + 6 L T C
        c, e, k, h = cfg.d_model, cfg.n_experts, cfg.top_k, cfg.d_expert
        mats = 3 if cfg.expert == "swiglu" else 2
        n_active = cfg.n_layers * (4 * c * c + c * e + k * mats * c * h) + cfg.vocab_size * c
        flops = 6 * n_active + 6 * cfg.n_layers * t * c
        peak = sgemm_gflops()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        print(json.dumps({"impl": "pytorch", "precision": "fp32" if args.autocast == "none" else "autocast_bf16",
                          "peak_rss_mib": round(rss, 1), "threads": th, "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"), "tokens_per_s": round(tok_s, 1),
                          "step_ms": round(1e3 * sec / args.steps, 1), "model_gflop_per_token": flops / 1e9,
                          "achieved_gflops": round(tok_s * flops / 1e9, 2), "sgemm_peak_gflops": round(peak, 2),
                          "mfu": round(tok_s * flops / 1e9 / peak, 4), "loss": round(loss, 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
