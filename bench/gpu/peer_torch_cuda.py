#!/usr/bin/env python3
"""PyTorch eager peer of the issue-7 GPU benchmark: the reference model of the parity tests
(tests/reference/torch_ref.py) at vocab 32000, context 1024, d_model 1024, 8 layers, 16
heads, 16 SwiGLU experts of hidden 2816, top-2, batch 16, on the GPU under bf16 autocast
(fp32 master weights, as tmoe's MixedBf16), a full training step (forward, backward, clip,
AdamW). Prints one JSON line: tokens/s and MFU against a bf16 matmul peak measured in the
same run (8192^3). Needs a CUDA device.

usage: python3 bench/gpu/peer_torch_cuda.py [--steps 10] [--warmup 3] [--batch 16] [--seq 1024] [key=value ...]
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "reference"))
from torch_ref import DecoderLMRef, RefConfig, param_groups  # noqa: E402


def bf16_peak_tflops(n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * n ** 3 / sorted(times)[len(times) // 2] / 1e12


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("overrides", nargs="*", help="model.key=value")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"impl": "pytorch-cuda", "skipped": "no CUDA device"}))
        return 0
    cfg = RefConfig(vocab_size=32000, context=1024, d_model=1024, n_layers=8, n_heads=16, n_experts=16, top_k=2,
                    d_expert=2816, expert="swiglu", tie_embeddings=False)
    for ov in args.overrides:
        key, _, val = ov.partition("=")
        key = key.removeprefix("model.")
        cur = getattr(cfg, key)
        setattr(cfg, key, (val == "true") if isinstance(cur, bool) else type(cur)(val))
    torch.manual_seed(0)
    model = DecoderLMRef(cfg, dtype=torch.float32, device="cuda")
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
    b, t = args.batch, args.seq
    data = torch.randint(0, cfg.vocab_size, (1 << 20,), device="cuda")

    def step(i):
        starts = [(i * 977 + r * 4099) % (data.numel() - t - 1) for r in range(b)]
        x = torch.stack([data[s:s + t] for s in starts])
        y = torch.stack([data[s + 1:s + t + 1] for s in starts])
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            _, _, _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for i in range(args.warmup):
        step(i)
    torch.cuda.synchronize()
    times, loss = [], None
    for i in range(args.steps):
        t0 = time.perf_counter()
        loss = step(args.warmup + i)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    sec = sorted(times)[len(times) // 2]
    tok_s = b * t / sec
    c, e, k, h = cfg.d_model, cfg.n_experts, cfg.top_k, cfg.d_expert
    n_active = cfg.n_layers * (4 * c * c + c * e + k * 3 * c * h) + 2 * cfg.vocab_size * c
    flops = 6 * n_active + 6 * cfg.n_layers * t * c
    peak = bf16_peak_tflops()
    print(json.dumps({"impl": "pytorch-cuda", "torch": torch.__version__, "device": torch.cuda.get_device_name(),
                      "precision": "autocast_bf16", "tokens_per_s": round(tok_s, 1), "step_ms": round(1e3 * sec, 1),
                      "model_gflop_per_token": flops / 1e9, "bf16_peak_tflops": round(peak, 1),
                      "mfu": round(tok_s * flops / 1e12 / peak, 4), "loss": round(float(loss), 4),
                      "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
