"""Weight-only constants of a model: operator norms and sup bounds of its projections."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dynsys.config import ModelConfig
from dynsys.nn import Model
from dynsys.nn import params as layout
from dynsys.theory import exact
from dynsys.theory.exact import check_float32, float64
from dynsys.theory.lemmas import GELU_CURVE, GELU_SLOPE, SILU_CURVE, SILU_SLOPE


def _spectral(w: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(w, np.float64), 2))


@dataclasses.dataclass(frozen=True)
class WeightConstants:
    """Weight-only constants, float64. Norms of matrices are spectral.

    norm1, norm2 [L]: ‖w‖_∞ of each norm layer's scale; *_radius: sup ‖norm(x)‖ = ‖w‖_∞ √D
    (+ ‖b‖ for LayerNorm). query [L, N], key, value [L, K]: ‖W‖ of each head's projection
    [H, D]; *_bias: their bias norms. out [L]: ‖W_o‖ as a D×(N·H) matrix. SwiGLU: gate, up,
    mlp_in = ‖W_g‖, ‖W_u‖, ‖[W_g W_u]‖; GELU: up = mlp_in = ‖W_up‖. mlp_out [L]: ‖W_down‖.
    gate_cols, up_cols [L, F]: the norms ‖W_g[f, :]‖, ‖W_u[f, :]‖ of each unit's weights (the
    columns of W_g, W_u acting on row vectors; SwiGLU). final: ‖w_f‖_∞ of the final
    norm; final_radius: sup ‖N_f(x)‖ = ‖w_f‖_∞ √D (+ ‖b_f‖ for LayerNorm). head_rows [V, D]:
    the LM head's rows w_v; head_norm: max_v ‖w_v‖; head: max_v ‖w_v ⊙ w_f‖. block_params [L]:
    each block's "norm1", "attn", "norm2" and "mlp" parameters, final_params: the final
    norm's (float64 numpy trees, for `mlp_branch`, `final_norm` and the margin certificate).
    """

    config: ModelConfig
    norm1: np.ndarray
    norm1_radius: np.ndarray
    norm2: np.ndarray
    norm2_radius: np.ndarray
    query: np.ndarray
    query_bias: np.ndarray
    key: np.ndarray
    key_bias: np.ndarray
    value: np.ndarray
    value_bias: np.ndarray
    out: np.ndarray
    gate: np.ndarray | None
    up: np.ndarray
    mlp_in: np.ndarray
    mlp_out: np.ndarray
    gate_cols: np.ndarray | None
    up_cols: np.ndarray | None
    final: float
    final_radius: float
    head_rows: np.ndarray
    head_norm: float
    head: float
    block_params: tuple
    final_params: dict

    @property
    def query_max(self) -> np.ndarray:
        """[L, N] sup ‖q‖ = ‖W_q‖ · radius₁ + ‖b_q‖ (RoPE is a rotation)."""
        return self.query * self.norm1_radius[:, None] + self.query_bias

    @property
    def key_max(self) -> np.ndarray:
        """[L, K] sup ‖k‖ over any stream."""
        return self.key * self.norm1_radius[:, None] + self.key_bias

    @property
    def value_max(self) -> np.ndarray:
        """[L, K] sup ‖v‖ over any stream."""
        return self.value * self.norm1_radius[:, None] + self.value_bias

    def mlp_lipschitz(self, layer: int) -> float:
        """Lipschitz bound of the MLP on all its inputs ‖y‖ ≤ radius₂. SwiGLU
        y ↦ W_d(silu(W_g y) ⊙ W_u y): J = W_d [D₁ D₂] [W_g; W_u] with D₁ = diag(silu′(g) u),
        D₂ = diag(silu g), so ‖J‖ ≤ ‖W_d‖ ‖[W_g; W_u]‖ max_i √((1.1 |u_i|)² + g_i²), and
        |g_i| ≤ ‖W_g e_i‖ radius₂, |u_i| ≤ ‖W_u e_i‖ radius₂. GELU: ‖W_d‖ · 1.13 · ‖W_up‖."""
        if self.gate_cols is None:
            return float(self.mlp_out[layer] * GELU_SLOPE * self.mlp_in[layer])
        units = np.hypot(SILU_SLOPE * self.up_cols[layer], self.gate_cols[layer])
        return float(self.mlp_out[layer] * self.mlp_in[layer] * units.max()
                     * self.norm2_radius[layer])

    def mlp_curvature(self, layer: int, up_abs=None):
        """Bound on ‖D²MLP‖. SwiGLU: ‖W_d‖ (½ max_i |u_i| ‖W_g‖² + 2.2 ‖W_g‖ ‖W_u‖), with
        |u_i| ≤ up_abs [..., F] (default: ‖W_u e_i‖ radius₂). GELU: 0.8 ‖W_d‖ ‖W_up‖²."""
        if self.gate is None:
            return self.mlp_out[layer] * GELU_CURVE * self.up[layer] ** 2
        if up_abs is None:
            up_abs = self.up_cols[layer] * self.norm2_radius[layer]
        g, u = self.gate[layer], self.up[layer]
        return self.mlp_out[layer] * (SILU_CURVE * np.max(up_abs, axis=-1) * g * g
                                      + 2 * SILU_SLOPE * g * u)


    def mlp_branch(self, layer: int, x: np.ndarray) -> np.ndarray:
        """x ↦ MLP(norm₂ x) of block `layer` in float64 (dynsys.theory.exact), on streams
        x [..., D]."""
        tree = self.block_params[layer]
        return _branch(self.config, tree["norm2"], tree["mlp"], np.asarray(x, np.float64))

    def final_norm(self, x: np.ndarray) -> np.ndarray:
        """The final norm N_f in float64 on streams x [..., D]."""
        return _norm(self.config, self.final_params, np.asarray(x, np.float64))


_norm = exact.on_host(exact.norm)


@exact.on_host
def _branch(cfg: ModelConfig, norm: dict, mlp: dict, x):
    """x ↦ MLP(norm₂ x) in float64."""
    return exact.mlp(cfg, mlp, exact.norm(cfg, norm, x))


def weight_constants(model: Model) -> WeightConstants:
    """The operator norms and norm-layer constants of a model (numpy SVD, float64)."""
    cfg = model.config
    check_float32(cfg, "weight_constants")
    p = float64(model.params)
    D = cfg.hidden_size

    def norm(tree) -> tuple[float, float]:
        gain = float(np.abs(tree["scale"]).max())
        return gain, gain * math.sqrt(D) + float(np.linalg.norm(tree.get("bias", 0.0)))

    def heads(dense) -> tuple[np.ndarray, np.ndarray]:
        kernel = dense["kernel"]  # [heads, H, D]
        bias = dense.get("bias", np.zeros(kernel.shape[:2]))
        return (np.linalg.norm(kernel, 2, axis=(1, 2)),
                np.linalg.norm(bias, axis=-1))

    rows: dict[str, list] = {k: [] for k in (
        "norm1", "norm1_radius", "norm2", "norm2_radius", "query", "query_bias", "key",
        "key_bias", "value", "value_bias", "out", "gate", "up", "mlp_in", "mlp_out",
        "gate_cols", "up_cols")}
    for i in range(cfg.num_layers):
        block = layout.block(p, i)
        for name in ("norm1", "norm2"):
            gain, radius = norm(block[name])
            rows[name].append(gain)
            rows[f"{name}_radius"].append(radius)
        for name, dense in (("query", "q"), ("key", "k"), ("value", "v")):
            w, b = heads(block["attn"][dense])
            rows[name].append(w)
            rows[f"{name}_bias"].append(b)
        rows["out"].append(_spectral(block["attn"]["o"]["kernel"].reshape(D, -1)))
        mlp = block["mlp"]
        rows["mlp_out"].append(_spectral(mlp["down"]["kernel"]))
        up = mlp["up"]["kernel"]  # [F, D]
        rows["up"].append(_spectral(up))
        if cfg.mlp == "gelu":
            rows["mlp_in"].append(rows["up"][-1])
        else:
            gate = mlp["gate"]["kernel"]
            rows["gate"].append(_spectral(gate))
            rows["mlp_in"].append(_spectral(np.concatenate([gate, up])))
            rows["gate_cols"].append(np.linalg.norm(gate, axis=1))
            rows["up_cols"].append(np.linalg.norm(up, axis=1))
    head = p["embed"]["embedding"] if cfg.tie_embeddings else p["lm_head"]["kernel"]  # [V, D]
    scale = p["final_norm"]["scale"]
    final, final_radius = norm(p["final_norm"])
    arrays = {k: np.asarray(v) if v else None for k, v in rows.items()}
    return WeightConstants(
        config=cfg, final=final, final_radius=final_radius, head_rows=head,
        head_norm=float(np.linalg.norm(head, axis=1).max()),
        head=float(np.linalg.norm(head * scale, axis=1).max()),
        block_params=tuple({k: layout.block(p, i)[k] for k in ("norm1", "attn", "norm2", "mlp")}
                           for i in range(cfg.num_layers)),
        final_params=p["final_norm"], **arrays)


# --- the reference run --------------------------------------------------------------------------
