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

The MoE layer covers tmoe's token-choice policies: routers topk, sigmoid_bias and
group_limited (over either), router temperature and route_scale, Dropless or
CapacityFactor (drop_policy probability | position), shared experts, the Balancing terms
aux, seq_aux, z and bias_load_max (the aux-loss-free bias update: call model.after_step()
after each optimizer step; the bias is a parameter with requires_grad=False, left out of
param_groups), dense/MoE interleaving (moe_first_dense, moe_every) and TransformerExpert
(expert="transformer_expert"). Expert choice, hash routing and the training-time router
noise (jitter, noise_std: Philox draws) are not modelled.
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
ROUTERS = ("topk", "sigmoid_bias", "group_limited")
ROUTER_INNERS = ("topk", "sigmoid_bias")
EXPERTS = ("swiglu", "gelu_ffn", "transformer_expert")
FFN_EXPERTS = ("swiglu", "gelu_ffn")
CAPACITIES = ("dropless", "capacity_factor")
BALANCE_TERMS = ("aux", "seq_aux", "z", "bias_load_max")


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
    seq_aux_loss_weight: float = 0.0
    bias_update_rate: float = 1e-3
    router_temperature: float = 1.0
    router_jitter: float = 0.0
    router_noise_std: float = 0.0
    route_scale: float = 1.0
    n_groups: int = 1
    top_groups: int = 1
    capacity_factor: float = 1.25
    drop_policy: str = "probability"
    n_shared_experts: int = 0
    d_shared_expert: int = 0
    moe_every: int = 1
    moe_first_dense: int = 0
    expert_depth: int = 1
    expert_heads: int = 0
    tie_embeddings: bool = True
    linear_bias: bool = False
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    init_std: float = 0.02
    gelu_exact: bool = False
    # block kinds (tmoe policy names)
    positions: str = "rope"     # "rope" | "learned"
    ffn: str = "moe"            # "moe" | "dense"
    expert: str = "swiglu"      # "swiglu" | "gelu_ffn" | "transformer_expert"
    expert_inner: str = ""      # FFN of dense layers, shared experts, TransformerExpert; "" = expert
    router: str = "topk"        # "topk" | "sigmoid_bias" | "group_limited"
    router_inner: str = ""      # group_limited's inner router; "" = router
    capacity: str = "dropless"  # "dropless" | "capacity_factor"
    balance: Tuple[str, ...] = ("aux", "z")  # the Balancing<...> terms, in order
    norm: str = "rmsnorm"       # "rmsnorm" | "layernorm"

    MODEL_FIELDS = ("vocab_size", "context", "d_model", "n_layers", "n_heads", "d_ff", "n_experts", "top_k",
                    "d_expert", "router_renormalize", "aux_loss_weight", "z_loss_weight", "seq_aux_loss_weight",
                    "bias_update_rate", "router_temperature", "router_jitter", "router_noise_std", "route_scale",
                    "n_groups", "top_groups", "capacity_factor", "drop_policy", "n_shared_experts",
                    "d_shared_expert", "moe_every", "moe_first_dense", "expert_depth", "expert_heads",
                    "tie_embeddings", "linear_bias", "norm_eps", "rope_base", "init_std", "gelu_exact")

    @property
    def ffn_expert(self) -> str:
        """The feed-forward kind of dense layers, shared experts and a TransformerExpert's FFN."""
        if self.expert_inner:
            return self.expert_inner
        return "swiglu" if self.expert == "transformer_expert" else self.expert

    @property
    def inner_router(self) -> str:
        return self.router_inner or ("sigmoid_bias" if self.router == "sigmoid_bias" else "topk")

    def is_moe_layer(self, l: int) -> bool:
        """ModelConfig::is_moe_layer: after moe_first_dense dense layers, every moe_every-th."""
        return self.ffn == "moe" and l >= self.moe_first_dense and (l - self.moe_first_dense + 1) % self.moe_every == 0

    def validate(self) -> None:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError("d_model must split into n_heads heads of even size")
        if self.positions not in ("rope", "learned"):
            raise ValueError(f"positions {self.positions!r}: expected 'rope' or 'learned'")
        if self.ffn not in ("moe", "dense"):
            raise ValueError(f"ffn {self.ffn!r}: expected 'moe' or 'dense'")
        if self.expert not in EXPERTS:
            raise ValueError(f"expert {self.expert!r}: expected one of {EXPERTS}")
        if self.ffn_expert not in FFN_EXPERTS:
            raise ValueError(f"expert_inner {self.ffn_expert!r}: expected one of {FFN_EXPERTS}")
        if self.router not in ROUTERS:
            raise ValueError(f"router {self.router!r}: expected one of {ROUTERS}")
        if self.inner_router not in ROUTER_INNERS:
            raise ValueError(f"router_inner {self.inner_router!r}: expected one of {ROUTER_INNERS}")
        if self.capacity not in CAPACITIES:
            raise ValueError(f"capacity {self.capacity!r}: expected one of {CAPACITIES}")
        if self.drop_policy not in ("probability", "position"):
            raise ValueError(f"drop_policy {self.drop_policy!r}: expected 'probability' or 'position'")
        for term in self.balance:
            if term not in BALANCE_TERMS:
                raise ValueError(f"balance term {term!r}: expected one of {BALANCE_TERMS}")
        if "bias_load_max" in self.balance and self.inner_router != "sigmoid_bias":
            raise ValueError("the bias update (bias_load_max) needs a sigmoid_bias router")
        if self.norm not in ("rmsnorm", "layernorm"):
            raise ValueError(f"norm {self.norm!r}: expected 'rmsnorm' or 'layernorm'")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError("1 <= top_k <= n_experts")
        if self.n_experts % self.n_groups or not 1 <= self.top_groups <= self.n_groups:
            raise ValueError("n_groups must divide n_experts and 1 <= top_groups <= n_groups")
        if self.router == "group_limited" and self.n_groups > 1 and \
                self.top_k > self.top_groups * (self.n_experts // self.n_groups):
            raise ValueError("top_k exceeds the experts of the eligible groups")
        if self.router_jitter != 0 or self.router_noise_std != 0:
            # Philox-keyed training noise: not reproduced here
            raise ValueError("router_jitter / router_noise_std are not modelled by the reference (set them to 0)")
        if self.expert == "transformer_expert":
            h = self.expert_heads or self.n_heads
            if self.d_model % h or (self.d_model // h) % 2:
                raise ValueError("d_model must split into expert_heads heads of even size")

    @staticmethod
    def from_metadata(meta: Dict[str, str]) -> "RefConfig":
        """From the `__metadata__` strings of a parity dump: `model.<field>` and `block.<kind>`."""
        def parse(name: str, text: str):
            default = getattr(RefConfig, name)
            if isinstance(default, bool):
                if text not in ("true", "false"):
                    raise ValueError(f"model.{name} = {text!r}: expected true/false")
                return text == "true"
            if isinstance(default, str):
                return text
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
        kw["expert_inner"] = meta.get("block.expert_inner", "")
        kw["router"] = meta.get("block.router", "topk")
        kw["router_inner"] = meta.get("block.router_inner", "")
        kw["capacity"] = meta.get("block.capacity", "dropless")
        if "block.balance" in meta:
            kw["balance"] = tuple(x for x in meta["block.balance"].split(",") if x)
        kw["norm"] = meta["model.norm"]
        return RefConfig(**kw)

    @staticmethod
    def unmodelled_fields(meta: Dict[str, str]) -> List[str]:
        """`model.<f>` keys of a dump that RefConfig does not know (a new tmoe field)."""
        # preset names the compiled composition, which the dump spells out in block.* instead
        known = set(RefConfig.MODEL_FIELDS) | {"norm", "preset"}
        return sorted(k for k in meta if k.startswith("model.") and k[len("model."):] not in known)


def expert_capacity(factor: float, n: int, k: int, e: int) -> int:
    """tmoe's C = ceil(factor·n·k/e) (minus 1e-9 against rounding up exact products), in [1, n]."""
    c = math.ceil(factor * n * k / e - 1e-9)
    return min(max(int(c), 1), max(n, 1))


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


class TransformerExpertLayer(nn.Module):
    """One pre-norm layer of a TransformerExpert: h = x + Attn(RMSNorm(x)); y = h + FFN(RMSNorm(h))."""

    def __init__(self, cfg: RefConfig, dtype, device):
        super().__init__()
        heads = cfg.expert_heads or cfg.n_heads
        acfg = dataclasses.replace(cfg, n_heads=heads, positions="rope", linear_bias=False)
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, dtype=dtype, device=device)
        self.attn = Attention(acfg, dtype, device)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, dtype=dtype, device=device)
        self.ffn = FFN(cfg.d_model, cfg.d_expert, cfg.ffn_expert, False, cfg.gelu_exact, dtype, device)

    def forward(self, x):
        h = x + self.attn(self.attn_norm(x))
        return h + self.ffn(self.ffn_norm(h))


class TransformerExpert(nn.Module):
    """An expert that is a small transformer (expert_depth layers, RMSNorm, RoPE, no biases).
    It gets its routed rows in token order; each run of rows from one sequence (token //
    seq_len) is a segment, attended causally on its own with RoPE positions 0..len-1 (the
    index within the routed subsequence)."""

    def __init__(self, cfg: RefConfig, dtype, device):
        super().__init__()
        self.layers = nn.ModuleList(TransformerExpertLayer(cfg, dtype, device) for _ in range(cfg.expert_depth))

    def forward(self, x, tokens, seq_len):
        seq = torch.div(tokens, seq_len, rounding_mode="floor")
        _, lens = torch.unique_consecutive(seq, return_counts=True)
        outs = []
        start = 0
        for ln in lens.tolist():
            h = x[start:start + ln].unsqueeze(0)          # (1, len, C): one sequence
            for layer in self.layers:
                h = layer(h)
            outs.append(h[0])
            start += ln
        return torch.cat(outs, dim=0)


class Router(nn.Module):
    """The router matrix (E, C) and, for sigmoid_bias routers, the per-expert selection bias:
    a buffer in tmoe (no gradient, not touched by the optimizer, moved by the bias update),
    here a parameter with requires_grad=False so it keeps tmoe's registry name and order."""

    def __init__(self, c, e, has_bias, dtype, device):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(e, c, dtype=dtype, device=device))
        if has_bias:
            self.bias = nn.Parameter(torch.zeros(e, dtype=dtype, device=device), requires_grad=False)
        else:
            self.bias = None

    def forward(self, x):
        return F.linear(x, self.weight)


def _stable_topk_indices(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest keys per row, largest first, ties to the lower index
    (torch.topk does not promise a tie order): a stable ascending sort of -keys."""
    return torch.sort(-keys, dim=-1, stable=True).indices[:, :k]


class MoE(nn.Module):
    """A token-choice MoE layer written straight from tmoe's documented formulas.

    route    raw = x Wrᵀ; l = raw · (1/temperature)
             topk:          p = softmax(l), keys = l
             sigmoid_bias:  s = σ(l), p = s / Σ s, keys = s + bias
             group_limited: groups of E/G consecutive experts scored by the sum of their two
                            largest keys; keys outside the top_groups best groups (ties: lower
                            group) become -inf
             ids = the k largest keys (ties: lower expert), slot 0 = largest
             gates: topk renormalised softmax(l[ids]) / unnormalised p[ids];
                    sigmoid_bias renormalised s[ids]/Σ s[ids] / unnormalised s[ids];
                    then × route_scale
    capacity C = ceil(f·N·k/E) per expert; assignment a = t·k + j; probability keeps the C
             largest gates (ties: earlier a), position the C earliest a; a dropped assignment
             contributes nothing
    dispatch a stable sort of the kept assignments by expert, each expert once over its rows
             (in token order); combine in slot order, plus the shared experts on every token
    balance  aux = E Σ_e f_e P̄_e, f_e = routed_e/(N k) (before capacity);
             seq_aux = mean over sequences of E Σ_e (c_se/(k T)) · mean_{t∈s} p_te;
             z = mean_t logsumexp(raw_t)² (raw logits: before temperature);
             loss = Σ weight · term over the Balancing list (bias_load_max is no loss)
    bias     after_step(): bias_e += γ·sign(mean load − load_e), load = routed counts of the
             training forwards since the last update (outside autograd)
    """

    def __init__(self, cfg: RefConfig, dtype, device):
        super().__init__()
        self.e, self.k = cfg.n_experts, cfg.top_k
        self.renormalize = cfg.router_renormalize
        self.inner = cfg.inner_router
        self.grouped = cfg.router == "group_limited" and 1 < cfg.n_groups and cfg.top_groups < cfg.n_groups
        self.n_groups, self.top_groups = cfg.n_groups, cfg.top_groups
        self.temperature, self.route_scale = cfg.router_temperature, cfg.route_scale
        self.capacity = cfg.capacity
        self.capacity_factor, self.drop_policy = cfg.capacity_factor, cfg.drop_policy
        self.balance = cfg.balance
        self.weights = {"aux": cfg.aux_loss_weight, "seq_aux": cfg.seq_aux_loss_weight, "z": cfg.z_loss_weight,
                        "bias_load_max": 0.0}
        self.gamma = cfg.bias_update_rate
        self.transformer = cfg.expert == "transformer_expert"
        self.router = Router(cfg.d_model, cfg.n_experts, self.inner == "sigmoid_bias", dtype, device)
        if self.transformer:
            self.experts = nn.ModuleList(TransformerExpert(cfg, dtype, device) for _ in range(cfg.n_experts))
        else:
            self.experts = nn.ModuleList(
                FFN(cfg.d_model, cfg.d_expert, cfg.expert, False, cfg.gelu_exact, dtype, device)
                for _ in range(cfg.n_experts))
        if cfg.n_shared_experts > 0:
            width = cfg.n_shared_experts * (cfg.d_shared_expert or cfg.d_expert)
            self.shared_experts = FFN(cfg.d_model, width, cfg.ffn_expert, False, cfg.gelu_exact, dtype, device)
        else:
            self.shared_experts = None
        self.last_counts: Optional[torch.Tensor] = None   # rows processed per expert (after capacity)
        self.last_routed: Optional[torch.Tensor] = None   # assignments per expert (before capacity)
        self.last_dropped: Optional[torch.Tensor] = None  # assignments dropped per expert
        self.last_terms: Dict[str, float] = {}            # unweighted balancing terms
        self.last_aux: Optional[torch.Tensor] = None
        self.last_z: Optional[torch.Tensor] = None
        self.step_load: Optional[torch.Tensor] = None     # routed counts of the training forwards

    def _group_mask(self, keys):
        n, e = keys.shape
        g = self.n_groups
        size = e // g
        kg = keys.view(n, g, size)
        score = kg.max(-1).values if size == 1 else kg.topk(2, dim=-1).values.sum(-1)
        best = _stable_topk_indices(score, self.top_groups)                 # ties: lower group
        allowed = torch.zeros(n, g, dtype=torch.bool, device=keys.device).scatter(1, best, True)
        return keys.masked_fill(~allowed.repeat_interleave(size, dim=1), float("-inf"))

    def _capacity_keep(self, flat_ids, gates_flat, n):
        kept = torch.ones_like(flat_ids, dtype=torch.bool)
        if self.capacity != "capacity_factor":
            return kept
        cap = expert_capacity(self.capacity_factor, n, self.k, self.e)
        gd = gates_flat.detach()
        for x in range(self.e):
            idx = (flat_ids == x).nonzero().squeeze(1)                       # ascending a = t·k + j
            if idx.numel() <= cap:
                continue
            if self.drop_policy == "probability":                          # largest gates, ties: earlier a
                idx = idx[torch.sort(-gd[idx], stable=True).indices]
            kept[idx[cap:]] = False
        return kept

    def forward(self, x):
        shp = x.shape
        c = shp[-1]
        seq_len = shp[-2] if x.dim() == 3 else shp[0]
        xf = x.reshape(-1, c)
        n, e, k = xf.shape[0], self.e, self.k
        raw = self.router(xf)                              # (N, E), model's compute dtype
        logits = raw * (1.0 / self.temperature)
        if self.inner == "topk":
            probs = torch.softmax(logits, dim=-1)
            keys = logits.detach()
        else:
            s = torch.sigmoid(logits)
            probs = s / s.sum(-1, keepdim=True)
            keys = s.detach() + self.router.bias.detach()
        if self.grouped:
            keys = self._group_mask(keys)
        ids = _stable_topk_indices(keys, k)                # (N, k), slot 0 = largest key
        if self.inner == "topk":
            gates = torch.softmax(logits.gather(1, ids), dim=-1) if self.renormalize else probs.gather(1, ids)
        else:
            sg = s.gather(1, ids)
            gates = sg / sg.sum(-1, keepdim=True) if self.renormalize else sg
        flat_ids = ids.reshape(-1)                         # assignment a = t·k + j
        gates_flat = gates.reshape(-1)
        kept = self._capacity_keep(flat_ids, gates_flat, n)
        kept_a = kept.nonzero().squeeze(1)
        order = kept_a[torch.sort(flat_ids[kept_a], stable=True).indices]   # dispatch row -> assignment
        routed = torch.bincount(flat_ids, minlength=e)
        counts = torch.bincount(flat_ids[order], minlength=e)
        tok = torch.div(order, k, rounding_mode="floor")
        xe = xf.index_select(0, tok)
        outs = []
        start = 0
        for ex, cnt in zip(self.experts, counts.tolist()):
            if cnt:
                rows = xe[start:start + cnt]
                outs.append(ex(rows, tok[start:start + cnt], seq_len) if self.transformer else ex(rows))
            start += cnt
        ye = torch.cat(outs, dim=0) if outs else xf.new_zeros(0, c)
        g = (self.route_scale * gates_flat).index_select(0, order)
        y_assign = xf.new_zeros(n * k, c).index_copy(0, order, g[:, None] * ye).view(n, k, c)
        out = self.shared_experts(xf) if self.shared_experts is not None else None
        for j in range(k):                                 # slot order, as tmoe
            out = y_assign[:, j] if out is None else out + y_assign[:, j]
        # balancing terms over this micro-batch (the routed counts carry no gradient)
        terms: Dict[str, torch.Tensor] = {}
        f = routed.to(probs.dtype) / float(n * k)
        if "aux" in self.balance:
            terms["aux"] = e * (f * probs.mean(0)).sum()
        if "seq_aux" in self.balance:
            seqs = n // seq_len
            seq_of = torch.div(torch.arange(n * k, device=x.device), k * seq_len, rounding_mode="floor")
            cnt_se = torch.zeros(seqs, e, dtype=probs.dtype, device=x.device).index_put_(
                (seq_of, flat_ids), torch.ones(n * k, dtype=probs.dtype, device=x.device), accumulate=True)
            p_se = probs.view(seqs, seq_len, e).mean(1)
            terms["seq_aux"] = (e * (cnt_se / float(k * seq_len)) * p_se).sum(-1).mean()
        lse = torch.logsumexp(raw, dim=-1)
        if "z" in self.balance:
            terms["z"] = (lse * lse).mean()
        if "bias_load_max" in self.balance:
            terms["bias_load_max"] = probs.new_tensor(routed.max().item() * e / float(n * k))
        loss = probs.new_zeros(())
        for name in self.balance:                          # Balancing<...> order
            if name != "bias_load_max":
                loss = loss + self.weights[name] * terms[name]
        if self.training:
            self.step_load = routed.detach().clone() if self.step_load is None else self.step_load + routed
        self.last_counts, self.last_routed, self.last_dropped = counts.detach(), routed.detach(), (routed - counts)
        self.last_terms = {nm: float(v) for nm, v in terms.items()}
        self.last_aux = terms["aux"].detach() if "aux" in terms else None
        self.last_z = terms["z"].detach() if "z" in terms else None
        return out.view(shp), loss

    @torch.no_grad()
    def after_step(self) -> None:
        """The aux-loss-free bias update, after the optimizer step (a no-op without a bias or
        without the bias_load_max term): b_e += γ sign(mean_e load − load_e), in double."""
        load, self.step_load = self.step_load, None
        if self.router.bias is None or "bias_load_max" not in self.balance or load is None:
            return
        load = load.to(torch.float64)
        d = load.sum() / self.e - load
        b = self.router.bias
        b.copy_((b.to(torch.float64) + self.gamma * torch.sign(d)).to(b.dtype))


class Block(nn.Module):
    def __init__(self, cfg: RefConfig, dtype, device, layer: int = 0):
        super().__init__()
        self.attn_norm = _norm(cfg, dtype, device)
        self.attn = Attention(cfg, dtype, device)
        self.ffn_norm = _norm(cfg, dtype, device)
        self.is_moe = cfg.is_moe_layer(layer)
        if self.is_moe:
            self.moe = MoE(cfg, dtype, device)
        else:  # a dense model, or a dense layer of an MoE model (width d_ff, the experts' FFN kind)
            self.ffn = FFN(cfg.d_model, cfg.d_ff, cfg.ffn_expert, cfg.linear_bias, cfg.gelu_exact, dtype, device)

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
        self.layers = nn.ModuleList(Block(cfg, dtype, device, l) for l in range(cfg.n_layers))
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

    def after_step(self) -> None:
        """Call after each optimizer step: the MoE layers' router-bias updates (BiasUpdate)."""
        for m in self.moe_layers():
            m.after_step()

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
    """The conventions' tags of a parameter, from its registry name. The router bias
    (sigmoid_bias routers) is a buffer: no gradient, not trained by the optimizer."""
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
        tags.add("norm")  # also the norms inside a TransformerExpert
    elif ".moe.router." in name:
        tags.add("router")
        if name.endswith(".moe.router.bias"):
            tags.add("buffer")
    elif ".moe.experts." in name:
        tags.add("expert")  # also a TransformerExpert's attention and FFN
    elif ".moe.shared_experts." in name:
        tags.add("ffn")
    elif ".attn." in name:
        tags.add("attention")
    elif ".ffn." in name:
        tags.add("ffn")
    else:
        raise ValueError(f"unknown parameter name {name!r}")
    return tags


def decays(name: str) -> bool:
    """No weight decay on norm, bias, embedding, position; decay on every other matrix."""
    return not (param_tags(name) & {"norm", "bias", "embedding", "position"})


def param_groups(model: nn.Module, weight_decay: float):
    """AdamW groups by the decay rule; buffers (the router bias) are left out, as tmoe's
    Trainer skips them."""
    dec, nodec = [], []
    for n, p in model.named_parameters():
        if "buffer" in param_tags(n):
            continue
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
