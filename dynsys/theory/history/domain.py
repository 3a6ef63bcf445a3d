"""The abstract domain of the history-uniform certificate (proofs/history_uniform.md): affine
forms with ℓ2-block and box noise, and sound transformers for the operations of a llama block.

A form of dimension d is (c, G, X) with c [d], G [d, b, H], X [d, m]; it stands for the set

    { c + Σ_j G[:, j, :] β_j + X ε :  ‖β_j‖₂ ≤ 1 (j < b),  ‖ε‖_∞ ≤ 1 }

(b ℓ2 blocks of size H, m box symbols). Every quantity of one query's computation is a form
over the same symbols, created in one order, so two forms are combined by padding the shorter
symbol lists with zeros (`align`). The per-coordinate radius
rad_i = Σ_j ‖G[i, j]‖₂ + Σ_k |X[i, k]| is exact: c_i ± rad_i is the form's range in coordinate i.

Transformers (each sound in exact arithmetic; the F64 widening covers their float64 evaluation):
linear maps (exact), elementwise functions through a linear relaxation φ(t) ∈ λt + [β⁻, β⁺]
on each coordinate's interval (a new box symbol per coordinate of half-width (β⁺ − β⁻)/2),
products (affine-arithmetic: the quadratic term δa δb bounded by rad_a · rad_b, a new box
symbol), and `reduce` (all box symbols replaced by one per coordinate, their summed radius).
Functions take one query's forms; the caller vmaps them over queries."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dynsys.theory.exact import F64

GRID = 17  # points of the grid bounding a relaxation of silu / gelu


def point(c, block: int):
    """The form of a known vector c [d] (no symbols)."""
    return c, jnp.zeros((c.shape[0], 0, block), c.dtype), jnp.zeros((c.shape[0], 0), c.dtype)


def radius(f):
    """[d] the exact half-width of each coordinate's range."""
    _, g, x = f
    return jnp.sqrt(jnp.sum(g * g, -1)).sum(-1) + jnp.abs(x).sum(-1)


def norm_radius(f):
    """An upper bound on ‖y − c‖₂ over the form: the least of ‖rad‖₂, Σ_j ‖G_j‖₂ + ‖rad_X‖₂
    and √b ‖G‖₂ + ‖rad_X‖₂ (‖Σ_j G_j β_j‖ ≤ ‖G‖₂ ‖β‖₂ ≤ ‖G‖₂ √b), with ‖·‖₂ spectral norms
    (G = [G_1 … G_b] as a d × bH matrix, its norm from the eigenvalues of G Gᵀ) and rad_X the
    box symbols' per-coordinate radius."""
    _, g, x = f
    box = jnp.linalg.norm(jnp.abs(x).sum(-1))
    bound = jnp.linalg.norm(radius(f))
    b = g.shape[1]
    if b:
        # scaled to max |G| = 1; matmuls only (no LAPACK call inside jit)
        size = jnp.max(jnp.abs(g))
        finite = jnp.isfinite(size) & (size < 1e100)
        unit = jnp.where(finite & (size > 0), g / jnp.where(size > 0, size, 1.0), 0.0)
        blocks = jnp.einsum("djh,djk->jhk", unit, unit)  # G_jᵀ G_j [b, H, H]
        each = jnp.sqrt(top_eigenvalue(blocks)).sum() * size
        flat = unit.reshape(g.shape[0], -1)
        top = jnp.sqrt(top_eigenvalue(flat @ flat.T)) * size
        spectral = jnp.where(finite, jnp.minimum(each, top * b ** 0.5), jnp.inf)
        bound = jnp.minimum(bound, spectral + box)
    return bound


def outer_ellipsoid(f):
    """A PSD matrix Q [d, d] whose ellipsoid c + Q^½·(unit ball) contains the form: its support
    function h(k) = Σ_j ‖G_jᵀk‖ + Σ_k |X_kᵀk| is ≤ √(kᵀQk) in every direction k. With
    Q_j = G_j G_jᵀ (Q_k = X_k X_kᵀ for a box column, a segment), weights s_j = ‖G_j‖_F (s_k =
    ‖X_k‖) and S = Σ s: Q = S (Σ_j Q_j/s_j + Σ_k Q_k/s_k), since by Cauchy–Schwarz
    Σ_j √(kᵀQ_jk) = Σ_j √s_j √(kᵀQ_jk/s_j) ≤ √S √(Σ_j kᵀQ_jk/s_j). Widened by 1 + F64."""
    _, g, x = f
    sg, sx = jnp.sqrt(jnp.sum(g * g, (0, 2))), jnp.sqrt(jnp.sum(x * x, 0))
    inv = lambda s: jnp.where(s > 0, 1 / jnp.where(s > 0, s, 1.0), 0.0)  # noqa: E731
    q = (jnp.einsum("djh,ejh,j->de", g, g, inv(sg)) + jnp.einsum("dk,ek,k->de", x, x, inv(sx)))
    return q * (sg.sum() + sx.sum()) * (1 + F64)


def top_eigenvalue(m, squarings: int = 6):
    """An upper bound on the largest eigenvalue of symmetric PSD matrices m [..., k, k]:
    λ_max^(2^J) = ‖M^(2^J)‖₂ ≤ ‖M^(2^J)‖_F, computed by J squarings with the scale carried in
    logs (within k^(2^−J) of λ_max); widened by 1 + 2⁻³⁰ for the float64 products."""
    log = jnp.zeros(m.shape[:-2])
    nonzero = jnp.sum(m * m, (-2, -1)) > 0
    for _ in range(squarings + 1):
        c = jnp.sqrt(jnp.sum(m * m, (-2, -1)))
        safe = jnp.where(c > 0, c, 1.0)
        m = m / safe[..., None, None]
        log = 2 * (log + jnp.log(safe))  # M^(2^(i+1)) = exp(log) m² at every step
        m = m @ m
    log = log + jnp.log(jnp.maximum(jnp.sqrt(jnp.sum(m * m, (-2, -1))), 1e-300))
    return jnp.where(nonzero, jnp.exp(log / 2 ** (squarings + 1)), 0.0) * (1 + 2.0 ** -30)


def align(*forms):
    """The forms with their symbol lists padded to the longest (symbols are created in one
    order, so a shorter list is a prefix of a longer one)."""
    b = max(f[1].shape[1] for f in forms)
    m = max(f[2].shape[1] for f in forms)
    return [(c, jnp.pad(g, ((0, 0), (0, b - g.shape[1]), (0, 0))),
             jnp.pad(x, ((0, 0), (0, m - x.shape[1])))) for c, g, x in forms]


def add(a, b):
    (ca, ga, xa), (cb, gb, xb) = align(a, b)
    return ca + cb, ga + gb, xa + xb


def linear(f, w, bias=None):
    """y = W y + b, exact: W [o, d]."""
    c, g, x = f
    c = w @ c if bias is None else w @ c + bias
    return c, jnp.einsum("od,djh->ojh", w, g), w @ x


def scale(f, s):
    """Coordinatewise y ↦ s ⊙ y (s [d] or a scalar), exact."""
    c, g, x = f
    s = jnp.asarray(s)
    return s * c, (s[..., None, None] if s.ndim else s) * g, (s[..., None] if s.ndim else s) * x


def widen(f, half):
    """The form plus a fresh box symbol per coordinate of half-width half [d] (≥ 0)."""
    c, g, x = f
    return c, g, jnp.concatenate([x, jnp.diag(half)], 1)


def ball(f, size):
    """The form plus a ball of radius `size` (a scalar ≥ 0): as d/H blocks of size H on
    consecutive coordinates (their product contains the ball) when H divides d, else a box."""
    c, g, _ = f
    d, H = c.shape[0], g.shape[2]
    if d % H:
        return widen(f, jnp.full((d,), size))
    eye = jnp.eye(d).reshape(d, d // H, H) * size
    return add_blocks(f, eye)


def add_blocks(f, blocks):
    """The form plus fresh ℓ2 blocks: blocks [d, k, H], ‖β‖₂ ≤ 1 each."""
    c, g, x = f
    return c, jnp.concatenate([g, blocks], 1), x


def reduce(f, extra=0.0):
    """All box symbols replaced by one per coordinate of their summed radius (+ extra [d]):
    a superset. Only where no other live form uses the old box symbols."""
    c, g, x = f
    return c, g, jnp.diag(jnp.abs(x).sum(-1) + extra)


def relaxed(f, lam, low, high):
    """φ(y) for φ(t) ∈ λ t + [low, high] on each coordinate's range: λ ⊙ y + mid + box."""
    c, g, x = scale(f, lam)
    return widen((c + (low + high) / 2, g, x), (high - low) / 2)


def product(a, b, ball: bool = False):
    """a ⊙ b (b may have dimension 1: broadcast): c_a c_b + c_a δb + c_b δa + δa δb, the last
    term in a box of half-width rad_a rad_b, or (b of dimension 1, ball=True) in a ball of
    radius ‖δa‖₂ rad_b."""
    a, b = align(a, b)
    ca, cb = a[0], b[0]
    zero = jnp.zeros_like(ca * cb)
    lin = add(scale((zero, *a[1:]), cb), scale((zero, *b[1:]), ca))
    if ball:
        return globals()["ball"]((ca * cb, *lin[1:]), norm_radius(a) * radius(b)[0])
    half = jnp.broadcast_to(radius(a) * radius(b), zero.shape)
    return widen((ca * cb, *lin[1:]), half)


# --- relaxations of one coordinate's function on [lo, hi] -----------------------------------
# Each returns (λ, β⁻, β⁺) with φ(t) − λ t ∈ [β⁻, β⁺] for every t ∈ [lo, hi].


def relax_square(lo, hi):
    """t²: λ = lo + hi; t² − λt is convex with its minimum at the midpoint m, −m², and equal
    values −lo·hi at both ends."""
    m, h = (lo + hi) / 2, (hi - lo) / 2
    return 2 * m, -m * m, -m * m + h * h + F64 * (m * m + h * h)


def relax_rsqrt(lo, hi):
    """t^(−1/2) on [lo, hi] ⊂ (0, ∞), convex: λ = f′(m) at the midpoint m, so f − λt is convex
    with its minimum at m and its maximum at an end."""
    m = (lo + hi) / 2
    lam = -0.5 * m ** -1.5
    g = lambda t: t ** -0.5 - lam * t  # noqa: E731
    top = jnp.maximum(g(lo), g(hi))
    return lam, g(m) - F64 * jnp.abs(g(m)), top + F64 * jnp.abs(top)


def relax_grid(fn, curve):
    """A relaxation of a scalar function fn with |fn″| ≤ curve on ℝ: λ = the chord slope, and
    fn − λt bounded on a grid of GRID points, widened by curve Δ²/8 (the interpolation error
    of a C² function between grid points Δ apart)."""

    def relax(lo, hi):
        t = lo[..., None] + (hi - lo)[..., None] * jnp.linspace(0.0, 1.0, GRID)
        width = hi - lo
        chord = (fn(hi) - fn(lo)) / jnp.where(width > 0, width, 1.0)
        lam = jnp.where(width > 1e-6, chord, jax.grad(lambda s: fn(s).sum())((lo + hi) / 2))
        h = fn(t) - lam[..., None] * t
        slack = curve * (width / (GRID - 1)) ** 2 / 8 + F64 * (jnp.abs(h).max(-1) + 1e-300)
        return lam, h.min(-1) - slack, h.max(-1) + slack

    return relax


def silu(t):
    return t * jax.nn.sigmoid(t)


def gelu(t):
    return jax.nn.gelu(t, approximate=False)


def elementwise(f, relax):
    """φ applied coordinatewise to a form, through the relaxation `relax` on its ranges."""
    r = radius(f)
    return relaxed(f, *relax(f[0] - r, f[0] + r))
