#!/usr/bin/env python3
"""PyTorch peer of bench_parallel (data parallel): the model of peer_torch.py
(tests/reference/torch_ref.py) wrapped in DistributedDataParallel over gloo on this machine,
trained with a FIXED GLOBAL batch so tokens/s compare directly across rank counts: each step
is --global-micro micro-batches of --batch x --seq tokens, split evenly over the R ranks
(global_micro/R micro-batches per rank, gradient accumulation under ddp.no_sync() on all but
the last), then clip_grad_norm_ 1.0 and AdamW as peer_torch.py. float32 on the CPU.

For each R in --ranks, R processes are spawned (torch.multiprocessing, 127.0.0.1, a free port),
each with torch.set_num_threads(--threads-per-rank) and OpenBLAS limited to as many threads
(OPENBLAS_NUM_THREADS, unless already set). Steps after warmup are timed from a barrier; the
median step is reported. Rank 0 prints one JSON line per R (after one '#' comment line).

Unused parameters: an expert can receive no token in a micro-batch and then gets no gradient,
which plain DDP rejects. find_unused_parameters=True (--unused find) accepts it, but in torch
1.13 it is wrong together with no_sync(): a parameter used in an accumulated (no_sync)
micro-batch and unused on every rank in the last, synchronising one is not all-reduced, so the
replicas drift apart (pytorch/pytorch#69031, fixed only by PR #124193 in 2024). The default,
--unused touch, adds 0 * sum(p) over every parameter to each micro-batch loss, so every
parameter is in every graph and DDP runs with find_unused_parameters=False: exact gradients
(an expert no rank routed to in the whole step gets a zero gradient, not None, so AdamW still
decays it), at the cost of one extra pass over the parameters per micro-batch. At the
reference shape (2048 assignments over 8 experts per micro-batch) an expert practically never
starves, and both modes then compute the same step.

usage: /usr/bin/python3 bench/peer_torch_ddp.py [--ranks 1 2 4] [--threads-per-rank 1] [--steps 6]
           [--warmup 2] [--batch 4] [--seq 256] [--global-micro 4] [--unused touch|find]
           [key=value ...]   (model fields, as peer_torch.py: d_model=64 or model.d_model=64)
"""
import argparse
import contextlib
import ctypes
import datetime
import json
import os
import re
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_torch import blas_in_use, sgemm_gflops  # noqa: E402  (also puts tests/reference on sys.path)
from torch_ref import DecoderLMRef, RefConfig, param_groups  # noqa: E402


def make_config(overrides):
    """peer_torch.py's reference shape and its key=value override rule."""
    cfg = RefConfig(vocab_size=256, context=256, d_model=256, n_layers=4, n_heads=8, n_experts=8, top_k=2,
                    d_expert=512)
    for ov in overrides:
        key, _, val = ov.partition("=")
        key = key.removeprefix("model.")
        cur = getattr(cfg, key)
        setattr(cfg, key, (val == "true") if isinstance(cur, bool) else type(cur)(val))
    cfg.validate()
    return cfg


def flops_per_token(cfg, t):
    """peer_torch.py's model FLOPs per token, DESIGN.md: 6 N_active + 6 L T C."""
    c, e, k, h = cfg.d_model, cfg.n_experts, cfg.top_k, cfg.d_expert
    mats = 3 if cfg.expert == "swiglu" else 2
    n_active = cfg.n_layers * (4 * c * c + c * e + k * mats * c * h) + cfg.vocab_size * c
    return 6 * n_active + 6 * cfg.n_layers * t * c


def openblas_set_threads(n):
    """Sets the thread count of the OpenBLAS this process loaded (pthread builds ignore
    torch.set_num_threads); returns False when there is none."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if re.search(r"libopenblas[^/]*\.so", line)}
    except OSError:
        return False
    for lib in libs:
        try:
            ctypes.CDLL(lib).openblas_set_num_threads(ctypes.c_int(n))
            return True
        except (OSError, AttributeError):
            pass
    return False


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, world, port, args, cfg):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(args.threads_per_rank)
    openblas_set_threads(args.threads_per_rank)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=args.timeout))
    try:
        run_rank(rank, world, args, cfg)
    finally:
        dist.destroy_process_group()


def run_rank(rank, world, args, cfg):
    b, t, g = args.batch, args.seq, args.global_micro
    micro = g // world  # micro-batches per rank per step
    cores = os.cpu_count() or 1
    used = min(cores, world * args.threads_per_rank)

    # The peak of the job's cores, measured by rank 0 while the others wait (as bench_parallel).
    dist.barrier()
    peak = 0.0
    if rank == 0:
        torch.set_num_threads(used)
        openblas_set_threads(used)
        peak = sgemm_gflops()
        torch.set_num_threads(args.threads_per_rank)
        openblas_set_threads(args.threads_per_rank)
    dist.barrier()

    torch.manual_seed(0)  # the same init on every rank (DDP also broadcasts rank 0's parameters)
    model = DecoderLMRef(cfg, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    find_unused = args.unused == "find"
    touched = [] if find_unused else [p for p in model.parameters() if p.requires_grad]
    ddp = DDP(model, find_unused_parameters=find_unused)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    torch.manual_seed(0)  # the same data on every rank; each rank reads its own micro-batches
    data = torch.randint(0, cfg.vocab_size, (1 << 16,))

    def batch(piece):
        starts = [(piece * 977 + r * 4099) % (data.numel() - t - 1) for r in range(b)]
        x = torch.stack([data[s:s + t] for s in starts])
        y = torch.stack([data[s + 1:s + t + 1] for s in starts])
        return x, y

    def step(i):
        """One optimizer step over global micro-batches i*g + rank*micro + j, j < micro;
        returns the sum of this rank's micro-batch losses."""
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for j in range(micro):
            x, y = batch(i * g + rank * micro + j)
            sync = j == micro - 1
            with (contextlib.nullcontext() if sync else ddp.no_sync()):
                _, _, _, loss = ddp(x, y)
                if touched:  # every parameter in the graph (see the module note)
                    loss = loss + 0.0 * torch.stack([p.sum() for p in touched]).sum()
                # DDP averages over ranks; 1/micro makes the gradient the global mean.
                (loss / micro).backward()
            total += float(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return total

    for i in range(args.warmup):
        step(i)
    times = []
    local_loss = 0.0
    for i in range(args.steps):
        dist.barrier()
        t0 = time.perf_counter()
        local_loss = step(args.warmup + i)
        times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    loss_t = torch.tensor([local_loss], dtype=torch.float64)
    dist.all_reduce(loss_t)  # mean loss of the last step's global batch
    if rank == 0:
        tokens = g * b * t
        tok_s = tokens / step_s
        flops = flops_per_token(cfg, t)
        print(json.dumps({
            "impl": "torch_ddp", "ranks": world, "threads_per_rank": args.threads_per_rank,
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
            "global_tokens_per_step": tokens, "micro_per_rank": micro,
            "tokens_per_s": round(tok_s, 1), "step_ms": round(1e3 * step_s, 1),
            "num_params": n_params,
            "grad_bytes_per_step_per_rank_theory": round(2.0 * (world - 1) / world * 4 * n_params),
            "unused": args.unused, "find_unused_parameters": find_unused,
            "model_gflop_per_token": flops / 1e9, "achieved_gflops": round(tok_s * flops / 1e9, 2),
            "sgemm_peak_gflops": round(peak, 2), "cores": used, "mfu": round(tok_s * flops / 1e9 / peak, 4),
            "loss": round(float(loss_t) / g, 4),
            "torch": torch.__version__, "blas": blas_in_use()}), flush=True)
    dist.barrier()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--threads-per-rank", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--global-micro", type=int, default=4)
    ap.add_argument("--unused", choices=["touch", "find"], default="touch",
                    help="touch: 0*sum(p) of every parameter in each loss, find_unused_parameters=False "
                         "(exact); find: find_unused_parameters=True (wrong with no_sync in torch 1.13 "
                         "when an expert starves in the last micro-batch on every rank)")
    ap.add_argument("--timeout", type=int, default=900, help="gloo collective timeout, seconds")
    ap.add_argument("overrides", nargs="*", help="model.key=value")
    # key=value words anywhere (argparse would read one after --ranks 1 2 as a rank count)
    argv = sys.argv[1:]
    kv = [a for a in argv if "=" in a and not a.startswith("-")]
    args = ap.parse_args([a for a in argv if a not in kv])
    args.overrides = kv
    if args.steps < 1 or args.warmup < 0 or args.threads_per_rank < 1 or args.global_micro < 1:
        ap.error("--steps and --threads-per-rank and --global-micro must be >= 1, --warmup >= 0")
    bad = [r for r in args.ranks if r < 1 or args.global_micro % r != 0]
    if bad:
        print(f"peer_torch_ddp: --global-micro {args.global_micro} does not split evenly over "
              f"{', '.join(map(str, bad))} rank(s); every R in --ranks must divide it", file=sys.stderr)
        return 2
    try:
        cfg = make_config(args.overrides)
    except (AttributeError, ValueError) as exc:
        print(f"peer_torch_ddp: bad model override: {exc}", file=sys.stderr)
        return 2
    if args.seq > cfg.context:
        print(f"peer_torch_ddp: --seq {args.seq} exceeds model context {cfg.context}", file=sys.stderr)
        return 2

    # Children inherit this environment: one OpenBLAS pool of threads-per-rank per rank.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads_per_rank))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads_per_rank))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    print(f"# torch {torch.__version__}, BLAS {blas_in_use()}; DDP gloo; model vocab {cfg.vocab_size} "
          f"context {cfg.context} d_model {cfg.d_model} layers {cfg.n_layers} heads {cfg.n_heads} "
          f"experts {cfg.n_experts} top-{cfg.top_k} d_expert {cfg.d_expert} ({cfg.expert}); global batch "
          f"{args.global_micro} x ({args.batch} x {args.seq}) tokens; {args.threads_per_rank} thread(s) per rank",
          flush=True)
    for r in args.ranks:
        try:
            mp.spawn(worker, args=(r, free_port(), args, cfg), nprocs=r, join=True)
        except ProcessException as exc:  # a rank raised or died; spawn ended the others
            print(f"peer_torch_ddp: the run with {r} rank(s) failed: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
