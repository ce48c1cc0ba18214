"""Pure-PyTorch reference of tmoe's DecoderLM (docs/conventions.md is the arbiter).

Importable by the parity test (tests/reference/test_parity.py) and by benchmarks as the
PyTorch peer. Works with PyTorch 1.13 (no scaled_dot_product_attention, no nn.RMSNorm:
both are written out by hand) and needs no safetensors package: a reader and a writer for
the format are below.

    cfg = RefConfig(vocab_size=64, ..., ffn="moe", expert="swiglu", norm="rmsnorm")
    model = DecoderLMRef(cfg, dtype=torch.float64)
    model.load(read_safetensors(path)[0])          # tensors by registry name
    logits, ce, aux_total, total = model(ids, targets)

Every parameter's state_dict key equals tmoe's registry name (embed.weight,
layers.0.attn.qkv.weight, layers.1.moe.experts.3.w2.weight, ...), and parameters are
registered in registry order.
"""
from __future__ import annotations

import dataclasses
import json
import math
import struct
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "RefConfig", "DecoderLMRef", "read_safetensors", "write_safetensors", "param_tags", "decays",
    "param_groups", "warmup_cosine_lr", "warmup_steps",
]


# ----------------------------------------------------------------------------- config
@dataclasses.dataclass
class RefConfig:
    # tmoe::ModelConfig fields (same names, same defaults)
    vocab_size: int = 256
    context: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    d_ff: int = 1024
    n_experts: int = 8
    top_k: int = 2
    d_expert: int = 512
    router_renormalize: bool = True
    aux_loss_weight: float = 1e-2
    z_loss_weight: float = 1e-3
    tie_embeddings: bool = True
    linear_bias: bool = False
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    init_std: float = 0.02
    gelu_exact: bool = False
    # block kinds (tmoe policy names)
    positions: str = "rope"     # "rope" | "learned"
    ffn: str = "moe"            # "moe" | "dense"
    expert: str = "swiglu"      # "swiglu" | "gelu_ffn"
    router: str = "topk"        # "topk"
    norm: str = "rmsnorm"       # "rmsnorm" | "layernorm"

    MODEL_FIELDS = ("vocab_size", "context", "d_model", "n_layers", "n_heads", "d_ff", "n_experts", "top_k",
                    "d_expert", "router_renormalize", "aux_loss_weight", "z_loss_weight", "tie_embeddings",
                    "linear_bias", "norm_eps", "rope_base", "init_std", "gelu_exact")

    def validate(self) -> None:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError("d_model must split into n_heads heads of even size")
        if self.positions not in ("rope", "learned"):
            raise ValueError(f"positions {self.positions!r}: expected 'rope' or 'learned'")
        if self.ffn not in ("moe", "dense"):
            raise ValueError(f"ffn {self.ffn!r}: expected 'moe' or 'dense'")
        if self.expert not in ("swiglu", "gelu_ffn"):
            raise ValueError(f"expert {self.expert!r}: expected 'swiglu' or 'gelu_ffn'")
        if self.router != "topk":
            raise ValueError(f"router {self.router!r}: expected 'topk'")
        if self.norm not in ("rmsnorm", "layernorm"):
            raise ValueError(f"norm {self.norm!r}: expected 'rmsnorm' or 'layernorm'")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError("1 <= top_k <= n_experts")

    @staticmethod
    def from_metadata(meta: Dict[str, str]) -> "RefConfig":
        """From the `__metadata__` strings of a parity dump: `model.<field>` and `block.<kind>`."""
        def parse(name: str, text: str):
            default = getattr(RefConfig, name)
            if isinstance(default, bool):
                if text not in ("true", "false"):
                    raise ValueError(f"model.{name} = {text!r}: expected true/false")
                return text == "true"
            if isinstance(default, int):
                return int(text)
            return float(text)

        kw = {}
        for f in RefConfig.MODEL_FIELDS:
            key = "model." + f
            if key not in meta:
                raise KeyError(f"metadata lacks {key}")
            kw[f] = parse(f, meta[key])
        kw["positions"] = meta["block.positions"]
        kw["ffn"] = meta["block.ffn"]
        kw["expert"] = meta["block.expert"]
        kw["router"] = meta.get("block.router", "topk")
        kw["norm"] = meta["model.norm"]
        return RefConfig(**kw)


# ----------------------------------------------------------------------------- layers
class _Weight(nn.Module):
    """A bare parameter holder so the state_dict key reads `<name>.weight`."""

    def __init__(self, *shape, dtype=None, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*shape, dtype=dtype, device=device))


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · w   (eps inside the square root)."""

    def __init__(self, c, eps, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(c, dtype=dtype, device=device))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LayerNorm(nn.Module):
    """y = (x − mean) / sqrt(var + eps) · w + b, biased variance."""

    def __init__(self, c, eps, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(c, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(c, dtype=dtype, device=device))

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


def _norm(cfg: RefConfig, dtype, device):
    cls = RMSNorm if cfg.norm == "rmsnorm" else LayerNorm
    return cls(cfg.d_model, cfg.norm_eps, dtype=dtype, device=device)


def _gelu(x, exact: bool):
    return F.gelu(x, approximate="none" if exact else "tanh")


class Attention(nn.Module):
    """Causal MHA: qkv rows [0,C) q, [C,2C) k, [2C,3C) v; head h = features [h·hd,(h+1)·hd)."""

    def __init__(self, cfg: RefConfig, dtype, device):
        super().__init__()
        c = cfg.d_model
        self.c, self.h, self.hd = c, cfg.n_heads, c // cfg.n_heads
        self.rotary = cfg.positions == "rope"
        self.rope_base = cfg.rope_base
        self.qkv = nn.Linear(c, 3 * c, bias=cfg.linear_bias, dtype=dtype, device=device)
        self.out = nn.Linear(c, c, bias=cfg.linear_bias, dtype=dtype, device=device)
        self._rope_cache: Dict[Tuple, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._mask_cache: Dict[Tuple, torch.Tensor] = {}

    def _cos_sin(self, t, dtype, device):
        key = (t, dtype, device)
        if key not in self._rope_cache:
            half = self.hd // 2
            # θᵢ = base^(−2i/hd), a = p·θᵢ; computed in float64 and rounded once, as tmoe does.
            i = torch.arange(half, dtype=torch.float64)
            theta = torch.tensor(self.rope_base, dtype=torch.float64).pow(-2.0 * i / self.hd)
            a = torch.arange(t, dtype=torch.float64)[:, None] * theta[None, :]
            self._rope_cache[key] = (a.cos().to(dtype=dtype, device=device), a.sin().to(dtype=dtype, device=device))
        return self._rope_cache[key]

    def _rope(self, x, cos, sin):
        # x (B, H, T, hd): y_i = x_i cos − x_{i+hd/2} sin, y_{i+hd/2} = x_{i+hd/2} cos + x_i sin
        half = self.hd // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def forward(self, x):
        b, t, c = x.shape
        qkv = self.qkv(x)
        q, k, v = qkv.split(c, dim=-1)
        q = q.view(b, t, self.h, self.hd).transpose(1, 2)
        k = k.view(b, t, self.h, self.hd).transpose(1, 2)
        v = v.view(b, t, self.h, self.hd).transpose(1, 2)
        if self.rotary:
            cos, sin = self._cos_sin(t, x.dtype, x.device)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        # q kᵀ / sqrt(hd), with the scale applied to q (T/hd times fewer multiplies than on
        # the (T, T) scores; the same value up to rounding)
        s = (q * (1.0 / math.sqrt(self.hd))) @ k.transpose(-1, -2)
        mkey = (t, x.device)
        if mkey not in self._mask_cache:  # True above the diagonal: token i sees 0..i
            self._mask_cache[mkey] = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        s = s.masked_fill(self._mask_cache[mkey], float("-inf"))
        y = torch.softmax(s, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class FFN(nn.Module):
    """SwiGLU: (silu(x W1ᵀ) ⊙ x W3ᵀ) W2ᵀ; GeluFFN: gelu(x W1ᵀ + b1) W2ᵀ + b2."""

    def __init__(self, c, hidden, kind, bias, gelu_exact, dtype, device):
        super().__init__()
        self.swiglu = kind == "swiglu"
        self.exact = gelu_exact
        # Registration order = tmoe's declaration order: w1, (w3), w2.
        self.w1 = nn.Linear(c, hidden, bias=bias, dtype=dtype, device=device)
        if self.swiglu:
            self.w3 = nn.Linear(c, hidden, bias=bias, dtype=dtype, device=device)
        self.w2 = nn.Linear(hidden, c, bias=bias, dtype=dtype, device=device)

    def forward(self, x):
        if self.swiglu:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(_gelu(self.w1(x), self.exact))


class MoE(nn.Module):
    """Top-k routed experts, dropless, with the Switch load-balancing loss and the z-loss.

    Dispatch as tmoe does it: a stable sort of the (token, slot) pairs by expert, one gather
    of the routed rows, each expert's GEMMs once over its contiguous slice, one scatter back
    to (token, slot) order, and the weighted sum over slots in slot order 0..k−1. No dense
    all-experts product, so it doubles as an efficient benchmark peer.
    """

    def __init__(self, cfg: RefConfig, dtype, device):
        super().__init__()
        self.e, self.k = cfg.n_experts, cfg.top_k
        self.renormalize = cfg.router_renormalize
        self.aux_w, self.z_w = cfg.aux_loss_weight, cfg.z_loss_weight
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False, dtype=dtype, device=device)
        self.experts = nn.ModuleList(
            FFN(cfg.d_model, cfg.d_expert, cfg.expert, False, cfg.gelu_exact, dtype, device)
            for _ in range(cfg.n_experts))
        self.last_counts: Optional[torch.Tensor] = None
        self.last_aux: Optional[torch.Tensor] = None
        self.last_z: Optional[torch.Tensor] = None

    def forward(self, x):
        shp = x.shape
        c = shp[-1]
        xf = x.reshape(-1, c)
        n, e, k = xf.shape[0], self.e, self.k
        logits = self.router(xf)                           # (N, E), model's compute dtype
        probs = torch.softmax(logits, dim=-1)
        lse = torch.logsumexp(logits, dim=-1)
        # Top-k with ties to the lower expert index: a stable descending sort.
        sel_logits, ids = torch.sort(logits, dim=-1, descending=True, stable=True)
        sel_logits, ids = sel_logits[:, :k], ids[:, :k]    # slot 0 = largest logit
        if self.renormalize:
            gates = torch.softmax(sel_logits, dim=-1)
        else:
            gates = probs.gather(1, ids)
        # plan: rows grouped by expert, token order within an expert
        flat_ids = ids.reshape(-1)                         # (N k), token-major
        order = torch.sort(flat_ids, stable=True).indices  # dispatch row -> flat (token, slot)
        counts = torch.bincount(flat_ids, minlength=e)
        xe = xf.index_select(0, torch.div(order, k, rounding_mode="floor"))
        outs = []
        start = 0
        for ex, cnt in zip(self.experts, counts.tolist()):
            if cnt:
                outs.append(ex(xe[start:start + cnt]))
            start += cnt
        ye = torch.cat(outs, dim=0)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        y_slots = ye.index_select(0, inverse).view(n, k, c)  # back to (token, slot) order
        out = gates[:, 0:1] * y_slots[:, 0]
        for j in range(1, k):
            out = out + gates[:, j:j + 1] * y_slots[:, j]
        # balancing terms over this micro-batch (f carries no gradient)
        f = counts.to(probs.dtype) / float(n * k)
        aux = e * (f * probs.mean(0)).sum()
        z = (lse * lse).mean()
        self.last_counts, self.last_aux, self.last_z = counts.detach(), aux.detach(), z.detach()
        return out.view(shp), self.aux_w * aux + self.z_w * z


class Block(nn.Module):
    def __init__(self, cfg: RefConfig, dtype, device):
        super().__init__()
        self.attn_norm = _norm(cfg, dtype, device)
        self.attn = Attention(cfg, dtype, device)
        self.ffn_norm = _norm(cfg, dtype, device)
        self.is_moe = cfg.ffn == "moe"
        if self.is_moe:
            self.moe = MoE(cfg, dtype, device)
        else:
            self.ffn = FFN(cfg.d_model, cfg.d_ff, cfg.expert, cfg.linear_bias, cfg.gelu_exact, dtype, device)

    def forward(self, x):
        h = x + self.attn(self.attn_norm(x))
        if self.is_moe:
            f, loss = self.moe(self.ffn_norm(h))
        else:
            f, loss = self.ffn(self.ffn_norm(h)), None
        return h + f, loss


class DecoderLMRef(nn.Module):
    """embedding (+ learned positions) -> n_layers pre-norm blocks -> final norm -> head."""

    def __init__(self, cfg: RefConfig, dtype=torch.float32, device=None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        v, c = cfg.vocab_size, cfg.d_model
        self.embed = _Weight(v, c, dtype=dtype, device=device)
        if cfg.positions == "learned":
            self.pos_embed = _Weight(cfg.context, c, dtype=dtype, device=device)
        self.layers = nn.ModuleList(Block(cfg, dtype, device) for _ in range(cfg.n_layers))
        self.final_norm = _norm(cfg, dtype, device)
        if not cfg.tie_embeddings:
            self.head = _Weight(v, c, dtype=dtype, device=device)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None):
        """Conventions' init (with torch's RNG, not tmoe's Philox): N(0, init_std), output
        projections N(0, init_std/sqrt(2L)), norms 1, biases 0."""
        out_std = self.cfg.init_std / math.sqrt(2.0 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            tags = param_tags(name)
            if "norm" in tags:
                p.fill_(0.0 if name.endswith(".bias") else 1.0)
            elif "bias" in tags:
                p.zero_()
            else:
                std = out_std if (name.endswith("attn.out.weight") or name.endswith("w2.weight")) else self.cfg.init_std
                p.normal_(0.0, std, generator=generator)

    def load(self, tensors: Dict[str, torch.Tensor], strict: bool = True) -> None:
        """Copies parameters by registry name (converting dtype). With strict, the names in
        `tensors` that look like parameters must be exactly the model's."""
        own = dict(self.named_parameters())
        missing = [n for n in own if n not in tensors]
        if missing:
            raise KeyError(f"load: {len(missing)} parameters missing, e.g. {missing[:5]}")
        with torch.no_grad():
            for n, p in own.items():
                t = tensors[n]
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(f"load: {n} has shape {tuple(t.shape)}, the model wants {tuple(p.shape)}")
                p.copy_(t.to(dtype=p.dtype, device=p.device))
        if strict:
            extra = [n for n in tensors if n not in own and "." in n and n.split(".")[0] in
                     ("embed", "pos_embed", "layers", "final_norm", "head")]
            if extra:
                raise KeyError(f"load: tensors that are not parameters of this model: {extra[:5]}")

    def moe_layers(self) -> List[MoE]:
        return [b.moe for b in self.layers if b.is_moe]

    def forward(self, ids: torch.Tensor, targets: Optional[torch.Tensor] = None):
        """ids, targets (B, T) integer tensors -> (logits (B,T,V), ce, aux_total, total).
        ce is None without targets (and total then equals aux_total)."""
        b, t = ids.shape
        if t > self.cfg.context:
            raise ValueError(f"T = {t} exceeds context {self.cfg.context}")
        ids = ids.long()
        x = F.embedding(ids, self.embed.weight)
        if self.cfg.positions == "learned":
            x = x + self.pos_embed.weight[:t]
        aux_total = x.new_zeros(())
        for blk in self.layers:
            x, loss = blk(x)
            if loss is not None:
                aux_total = aux_total + loss
        h = self.final_norm(x)
        w = self.embed.weight if self.cfg.tie_embeddings else self.head.weight
        logits = h @ w.t()
        ce = None
        total = aux_total
        if targets is not None:
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long())
            total = ce + aux_total
        return logits, ce, aux_total, total


# ----------------------------------------------------------------------------- optimisation
def param_tags(name: str) -> set:
    """The conventions' tags of a parameter, from its registry name."""
    tags = set()
    if name.endswith(".bias"):
        tags.add("bias")
    if name == "embed.weight":
        tags.add("embedding")
    elif name == "pos_embed.weight":
        tags.add("position")
    elif name == "head.weight":
        tags.add("head")
    elif name.startswith("final_norm.") or ".attn_norm." in name or ".ffn_norm." in name:
        tags.add("norm")
    elif ".attn." in name:
        tags.add("attention")
    elif ".moe.router." in name:
        tags.add("router")
    elif ".moe.experts." in name:
        tags.add("expert")
    elif ".ffn." in name:
        tags.add("ffn")
    else:
        raise ValueError(f"unknown parameter name {name!r}")
    return tags


def decays(name: str) -> bool:
    """No weight decay on norm, bias, embedding, position; decay on every other matrix."""
    return not (param_tags(name) & {"norm", "bias", "embedding", "position"})


def param_groups(model: nn.Module, weight_decay: float):
    dec, nodec = [], []
    for n, p in model.named_parameters():
        (dec if decays(n) else nodec).append(p)
    return [{"params": dec, "weight_decay": weight_decay}, {"params": nodec, "weight_decay": 0.0}]


def warmup_steps(warmup_fraction: float, steps: int) -> int:
    x = warmup_fraction * steps
    return int(math.floor(x + 0.5))  # C++ llround: halves away from zero (x >= 0)


def warmup_cosine_lr(s: int, lr: float, steps: int, warmup_fraction: float, min_lr_ratio: float) -> float:
    """lr of 0-based step s: W warm-up steps lr·(s+1)/W, then cosine from lr to lr·min_lr_ratio
    reached at the last step."""
    w = warmup_steps(warmup_fraction, steps)
    if s < w:
        return lr * (s + 1) / w
    span = steps - w
    progress = (s - w) / (span - 1) if span > 1 else 1.0
    lo = lr * min_lr_ratio
    return lo + 0.5 * (lr - lo) * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------- safetensors
_DTYPES = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}
_NAMES = {dt: name for name, (dt, _) in _DTYPES.items()}


def read_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """-> (tensors by name, __metadata__). Layout: u64 LE header length N, N bytes of JSON,
    then the data section; every tensor's [begin, end) must tile the data section."""
    import sys
    if sys.byteorder != "little":
        raise RuntimeError("read_safetensors: big-endian hosts are not supported")
    with open(path, "rb") as fh:
        blob = fh.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: {len(blob)} bytes, too short for a safetensors header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ValueError(f"{path}: header length {n} runs past the end of the {len(blob)}-byte file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header is not a JSON object")
    data = memoryview(blob)[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    tensors: Dict[str, torch.Tensor] = {}
    spans = []
    for name, ent in header.items():
        dt = ent["dtype"]
        if dt not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dt}")
        tdt, size = _DTYPES[dt]
        shape = [int(d) for d in ent["shape"]]
        b, e = (int(o) for o in ent["data_offsets"])
        numel = math.prod(shape)
        if not (0 <= b <= e <= len(data)) or e - b != numel * size:
            raise ValueError(f"{path}: tensor {name!r}: data_offsets [{b}, {e}) do not fit shape {shape} of {dt}")
        spans.append((b, e, name))
        if numel == 0:
            tensors[name] = torch.empty(shape, dtype=tdt)
        else:
            tensors[name] = torch.frombuffer(bytearray(data[b:e]), dtype=tdt).reshape(shape)
    spans.sort()
    cursor = 0
    for b, e, name in spans:
        if b != cursor:
            raise ValueError(f"{path}: tensor {name!r} starts at {b}, expected {cursor} (gap or overlap)")
        cursor = e
    if cursor != len(data):
        raise ValueError(f"{path}: {len(data) - cursor} trailing bytes in the data section")
    return tensors, {str(k): str(v) for k, v in meta.items()}


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes `tensors` in the given order; the header is padded with spaces so the data
    section starts on an 8-byte boundary (as tmoe writes it)."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks = []
    off = 0
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        if t.dtype not in _NAMES:
            raise ValueError(f"write_safetensors: tensor {name!r} has unsupported dtype {t.dtype}")
        if t.dtype == torch.bfloat16:
            raw = t.view(torch.int16).numpy().tobytes()
        else:
            raw = t.numpy().tobytes()
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path + ".tmp", "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for raw in chunks:
            fh.write(raw)
    import os
    os.replace(path + ".tmp", path)
