"""The Llama-family decoder: NNX modules that hold parameters, and one pure `forward`.

Modules here only own parameters (every one with logical axis names); all computation is in
plain functions. The blocks' parameters are stacked along a leading `layers` axis and the
forward pass scans over them, so a 30-layer model compiles as fast as a 1-layer one.

Einsum letters: b batch, t query tokens, s cache slots, d embed, h heads, k kv heads,
g query heads per kv head (GQA group), e head_dim, f mlp.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from psynth.cache.kv_cache import KVCache
from psynth.model.config import ModelConfig
from psynth.model import rope as rope_lib
from psynth.sharding import constrain

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: a fully masked (padding) row stays NaN-free


def _param(rngs: nnx.Rngs | None, shape, dtype, axes, init="normal") -> nnx.Param:
  if init == "ones":
    value = jnp.ones(shape, dtype)
  elif init == "zeros":
    value = jnp.zeros(shape, dtype)
  else:
    value = (0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
  return nnx.Param(value, logical_axes=tuple(axes))


class Dense(nnx.Module):
  """A projection stacked over layers: kernel `[layers, *in, *out]`, optional bias `[layers, *out]`.

  `spec` is the per-layer einsum, e.g. "btd,dhe->bthe"; its letters name the axes.
  """

  def __init__(self, num_layers: int, spec: str, in_shape, out_shape, in_axes, out_axes, *,
               bias: bool, dtype, rngs: nnx.Rngs):
    self.spec = spec
    self.kernel = _param(rngs, (num_layers, *in_shape, *out_shape), dtype,
                         ("layers", *in_axes, *out_axes))
    self.bias = (_param(rngs, (num_layers, *out_shape), dtype, ("layers", *out_axes), "zeros")
                 if bias else None)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    L, D, H, K, E = cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    dt = cfg.jnp_param_dtype
    self.q = Dense(L, "btd,dhe->bthe", (D,), (H, E), ("embed",), ("heads", "head_dim"),
                   bias=cfg.qkv_bias, dtype=dt, rngs=rngs)
    self.k = Dense(L, "btd,dke->btke", (D,), (K, E), ("embed",), ("kv_heads", "head_dim"),
                   bias=cfg.qkv_bias, dtype=dt, rngs=rngs)
    self.v = Dense(L, "btd,dke->btke", (D,), (K, E), ("embed",), ("kv_heads", "head_dim"),
                   bias=cfg.qkv_bias, dtype=dt, rngs=rngs)
    self.o = Dense(L, "bthe,hed->btd", (H, E), (D,), ("heads", "head_dim"), ("embed",),
                   bias=cfg.o_bias, dtype=dt, rngs=rngs)
    if cfg.qk_norm:
      self.q_norm = _param(None, (L, E), dt, ("layers", "head_dim"), "ones")
      self.k_norm = _param(None, (L, E), dt, ("layers", "head_dim"), "ones")
    else:
      self.q_norm = self.k_norm = None


class MLP(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    L, D, F = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
    dt, b = cfg.jnp_param_dtype, cfg.mlp_bias
    self.gate = Dense(L, "btd,df->btf", (D,), (F,), ("embed",), ("mlp",), bias=b, dtype=dt, rngs=rngs)
    self.up = Dense(L, "btd,df->btf", (D,), (F,), ("embed",), ("mlp",), bias=b, dtype=dt, rngs=rngs)
    self.down = Dense(L, "btf,fd->btd", (F,), (D,), ("mlp",), ("embed",), bias=b, dtype=dt, rngs=rngs)


class Block(nnx.Module):
  """All decoder layers, each parameter with a leading `layers` axis."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    dt = cfg.jnp_param_dtype
    self.attn_norm = _param(None, (cfg.num_layers, cfg.hidden_size), dt, ("layers", "embed"), "ones")
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = _param(None, (cfg.num_layers, cfg.hidden_size), dt, ("layers", "embed"), "ones")
    self.mlp = MLP(cfg, rngs=rngs)


class Transformer(nnx.Module):

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    cfg = self.config = config
    dt = cfg.jnp_param_dtype
    self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), dt, ("vocab", "embed"))
    self.blocks = Block(cfg, rngs=rngs)
    self.final_norm = _param(None, (cfg.hidden_size,), dt, ("embed",), "ones")
    self.lm_head = (None if cfg.tie_word_embeddings else
                    _param(rngs, (cfg.hidden_size, cfg.vocab_size), dt, ("embed", "vocab")))


def init_cache(cfg: ModelConfig, batch: int, slots: int) -> KVCache:
  return KVCache.init(cfg.num_layers, batch, slots, cfg.num_kv_heads, cfg.head_dim, cfg.jnp_dtype)


# ----------------------------------------------------------------------------- computation


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  # Statistics in float32 whatever the activation dtype, rounded back before the scale (as HF).
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (weight * normed.astype(x.dtype)).astype(x.dtype)


def dense(layer: Dense, x: jax.Array) -> jax.Array:
  y = jnp.einsum(layer.spec, x, layer.kernel[...].astype(x.dtype))
  if layer.bias is not None:
    y = y + layer.bias[...].astype(x.dtype)
  return y


def attention(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, mask_BxTxS) -> jax.Array:
  """Grouped-query attention over cache slots; scores and softmax in float32."""
  B, T, H, E = q_BxTxHxE.shape
  K = k_BxSxKxE.shape[2]
  q = q_BxTxHxE.reshape(B, T, K, H // K, E)
  scores = jnp.einsum("btkge,bske->bkgts", q, k_BxSxKxE, preferred_element_type=jnp.float32)
  scores = jnp.where(mask_BxTxS[:, None, None], scores * (E ** -0.5), _NEG)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxSxKxE.dtype)
  out = jnp.einsum("bkgts,bske->btkge", probs, v_BxSxKxE)
  return out.reshape(B, T, H, E)


def _block(cfg: ModelConfig, blk: Block, x, cos, sin, k_all, v_all, layer, end, mask):
  """One decoder layer; writes this layer's new K/V at slot `end` of the stacked cache."""
  attn = blk.attn
  h = rms_norm(x, blk.attn_norm[...], cfg.rms_norm_eps)
  q, k, v = dense(attn.q, h), dense(attn.k, h), dense(attn.v, h)
  if attn.q_norm is not None:
    q = rms_norm(q, attn.q_norm[...], cfg.rms_norm_eps)
    k = rms_norm(k, attn.k_norm[...], cfg.rms_norm_eps)
  q = constrain(rope_lib.apply_rope(q, cos, sin), ("batch", "seq", "heads", "head_dim"))
  k = rope_lib.apply_rope(k, cos, sin).astype(k_all.dtype)
  zero = jnp.zeros((), jnp.int32)
  # In-place update of the loop-carried cache: XLA aliases a dynamic_update_slice on a carry.
  k_all = jax.lax.dynamic_update_slice(k_all, k[None], (layer, zero, end, zero, zero))
  v_all = jax.lax.dynamic_update_slice(v_all, v.astype(v_all.dtype)[None], (layer, zero, end, zero, zero))
  k_layer = jax.lax.dynamic_index_in_dim(k_all, layer, keepdims=False)
  v_layer = jax.lax.dynamic_index_in_dim(v_all, layer, keepdims=False)
  out = attention(q, k_layer.astype(q.dtype), v_layer.astype(q.dtype), mask)
  x = x + dense(attn.o, out)
  h = rms_norm(x, blk.mlp_norm[...], cfg.rms_norm_eps)
  m = jax.nn.silu(dense(blk.mlp.gate, h)) * dense(blk.mlp.up, h)
  x = x + dense(blk.mlp.down, m)
  return constrain(x, ("batch", "seq", "embed")), k_all, v_all


def forward(model: Transformer, tokens_BxT: jax.Array, positions_BxT: jax.Array, cache: KVCache,
            *, last_only: bool = False) -> tuple[jax.Array, KVCache]:
  """Runs `tokens` at absolute `positions` on top of `cache`; returns (logits, new cache).

  Serves prefill (T > 1) and decode (T == 1) alike. A position < 0 marks a padding token: it
  is written to the cache as an invalid slot and nothing attends to it. Each token attends
  to every valid slot whose position is <= its own, so causality comes from positions, not
  slot order. With `last_only`, logits are `[B, 1, V]` for each row's last real token (its
  highest position) -- all that prefill for generation needs.
  Logits are float32.
  """
  cfg = model.config
  B, T = tokens_BxT.shape
  if cache.slots < T:
    raise ValueError(f"cache has {cache.slots} slots, fewer than the {T} tokens to write")
  dtype = cfg.jnp_dtype
  x = constrain(model.embed[...][tokens_BxT].astype(dtype), ("batch", "seq", "embed"))

  inv_freq, scale = rope_lib.inv_freq_and_scale(cfg.rope, cfg.head_dim)
  cos, sin = rope_lib.cos_sin(positions_BxT, jnp.asarray(inv_freq), scale)

  end = cache.end
  zero = jnp.zeros((), jnp.int32)
  slot_pos = jax.lax.dynamic_update_slice(cache.positions, positions_BxT.astype(jnp.int32), (zero, end))
  slot_valid = jax.lax.dynamic_update_slice(cache.valid, positions_BxT >= 0, (zero, end))
  mask_BxTxS = slot_valid[:, None, :] & (slot_pos[:, None, :] <= positions_BxT[:, :, None])

  graphdef, block_state = nnx.split(model.blocks)

  def body(carry, xs):
    x, k_all, v_all = carry
    layer_state, layer = xs
    blk = nnx.merge(graphdef, layer_state)
    return _block(cfg, blk, x, cos, sin, k_all, v_all, layer, end, mask_BxTxS), None

  (x, k_all, v_all), _ = jax.lax.scan(
      body, (x, cache.k, cache.v), (block_state, jnp.arange(cfg.num_layers, dtype=jnp.int32)))

  if last_only:
    last = jnp.argmax(positions_BxT, axis=1)  # [B]
    x = jnp.take_along_axis(x, last[:, None, None], axis=1)
  x = rms_norm(x, model.final_norm[...], cfg.rms_norm_eps)
  if model.lm_head is None:
    logits = jnp.einsum("btd,vd->btv", x, model.embed[...].astype(dtype),
                        preferred_element_type=jnp.float32)
  else:
    logits = jnp.einsum("btd,dv->btv", x, model.lm_head[...].astype(dtype),
                        preferred_element_type=jnp.float32)
  new_cache = cache.replace(k=k_all, v=v_all, positions=slot_pos, valid=slot_valid, end=end + T)
  return constrain(logits, ("batch", "seq", "vocab")), new_cache
