"""The Llama-family decoder: NNX modules that hold parameters, and one pure `forward`.

Modules here only own parameters (every one with logical axis names); all computation is in
plain functions. Each layer keeps its own arrays and the forward loop is unrolled: a decode
step is bound by reading the weights, and XLA on CPU copies a layer's slice out of a stacked
`[layers, ...]` array before each matmul, which doubles that traffic (measured: 23 ms vs
11 ms for 30 MLP layers at batch 1).

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
  """A projection: kernel `[*in, *out]`, optional bias `[*out]`.

  `spec` is its einsum, e.g. "btd,dhe->bthe"; its letters name the axes.
  """

  def __init__(self, spec: str, in_shape, out_shape, in_axes, out_axes, *, bias: bool, dtype,
               rngs: nnx.Rngs):
    self.spec = spec
    self.kernel = _param(rngs, (*in_shape, *out_shape), dtype, (*in_axes, *out_axes))
    self.bias = _param(rngs, tuple(out_shape), dtype, tuple(out_axes), "zeros") if bias else None


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    D, H, K, E = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    dt = cfg.jnp_param_dtype
    self.q = Dense("btd,dhe->bthe", (D,), (H, E), ("embed",), ("heads", "head_dim"),
                   bias=cfg.qkv_bias, dtype=dt, rngs=rngs)
    self.k = Dense("btd,dke->btke", (D,), (K, E), ("embed",), ("kv_heads", "head_dim"),
                   bias=cfg.qkv_bias, dtype=dt, rngs=rngs)
    self.v = Dense("btd,dke->btke", (D,), (K, E), ("embed",), ("kv_heads", "head_dim"),
                   bias=cfg.qkv_bias, dtype=dt, rngs=rngs)
    self.o = Dense("bthe,hed->btd", (H, E), (D,), ("heads", "head_dim"), ("embed",),
                   bias=cfg.o_bias, dtype=dt, rngs=rngs)
    if cfg.qk_norm:
      self.q_norm = _param(None, (E,), dt, ("head_dim",), "ones")
      self.k_norm = _param(None, (E,), dt, ("head_dim",), "ones")
    else:
      self.q_norm = self.k_norm = None


class MLP(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    D, F = cfg.hidden_size, cfg.intermediate_size
    dt, b = cfg.jnp_param_dtype, cfg.mlp_bias
    self.gate = Dense("btd,df->btf", (D,), (F,), ("embed",), ("mlp",), bias=b, dtype=dt, rngs=rngs)
    self.up = Dense("btd,df->btf", (D,), (F,), ("embed",), ("mlp",), bias=b, dtype=dt, rngs=rngs)
    self.down = Dense("btf,fd->btd", (F,), (D,), ("mlp",), ("embed",), bias=b, dtype=dt, rngs=rngs)


class Block(nnx.Module):
  """One decoder layer."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    dt = cfg.jnp_param_dtype
    self.attn_norm = _param(None, (cfg.hidden_size,), dt, ("embed",), "ones")
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = _param(None, (cfg.hidden_size,), dt, ("embed",), "ones")
    self.mlp = MLP(cfg, rngs=rngs)


class Transformer(nnx.Module):

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    cfg = self.config = config
    dt = cfg.jnp_param_dtype
    self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), dt, ("vocab", "embed"))
    self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
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


ATTN_CHUNK = 128  # queries per attention chunk: keeps a chunk's scores in cache (CPU) / VMEM-sized


def attention(q_BxTxHxE, k_BxSxKxE, v_BxSxKxE, q_pos_BxT, kv_pos_BxS, kv_valid_BxS, *,
              causal_chunks: bool = False) -> jax.Array:
  """Grouped-query attention; a query sees valid slots at positions <= its own.

  Scores and softmax are float32. Queries go in chunks so each chunk's scores stay small.
  With `causal_chunks`, k/v are the same tokens as q, in order (slot i is token i of this
  call), so chunk c needs only slots before its end: the masked half is never computed.
  """
  B, T, H, E = q_BxTxHxE.shape
  S, K = k_BxSxKxE.shape[1], k_BxSxKxE.shape[2]
  G = H // K
  # [B, K, G, T, E]: the G query heads sharing a KV head form one matmul with them.
  q = (q_BxTxHxE * jnp.asarray(E ** -0.5, q_BxTxHxE.dtype)).reshape(B, T, K, G, E)
  q = q.transpose(0, 2, 3, 1, 4)
  k = k_BxSxKxE.transpose(0, 2, 1, 3)  # [B, K, S, E]
  v = v_BxSxKxE.transpose(0, 2, 1, 3)
  outs = []
  for start in range(0, T, ATTN_CHUNK):
    stop = min(start + ATTN_CHUNK, T)
    C, n = stop - start, (stop if causal_chunks else S)
    q_c = q[:, :, :, start:stop].reshape(B, K, G * C, E)
    scores = jnp.einsum("bkme,bkse->bkms", q_c, k[:, :, :n], preferred_element_type=jnp.float32)
    visible = kv_valid_BxS[:, None, :n] & (kv_pos_BxS[:, None, :n] <= q_pos_BxT[:, start:stop, None])
    scores = jnp.where(visible[:, None, None], scores.reshape(B, K, G, C, n), _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(B, K, G * C, n)
    outs.append(jnp.einsum("bkms,bkse->bkme", probs, v[:, :, :n]).reshape(B, K, G, C, E))
  out = jnp.concatenate(outs, axis=3) if len(outs) > 1 else outs[0]
  return out.transpose(0, 3, 1, 2, 4).reshape(B, T, H, E)


def _block(cfg: ModelConfig, blk: Block, x, cos, sin, k_cache, v_cache, end, positions,
           slot_pos, slot_valid, attend_cache: bool):
  """One decoder layer over this layer's cache `[B, S, K, E]`; returns x and the new k, v."""
  attn = blk.attn
  h = rms_norm(x, blk.attn_norm[...], cfg.rms_norm_eps)
  q, k, v = dense(attn.q, h), dense(attn.k, h), dense(attn.v, h)
  if attn.q_norm is not None:
    q = rms_norm(q, attn.q_norm[...], cfg.rms_norm_eps)
    k = rms_norm(k, attn.k_norm[...], cfg.rms_norm_eps)
  q = constrain(rope_lib.apply_rope(q, cos, sin), ("batch", "seq", "heads", "head_dim"))
  k = rope_lib.apply_rope(k, cos, sin)
  k, v = k.astype(k_cache.dtype), v.astype(v_cache.dtype)
  if attend_cache:
    zero = jnp.zeros((), jnp.int32)
    k_all = jax.lax.dynamic_update_slice(k_cache, k, (zero, end, zero, zero))
    v_all = jax.lax.dynamic_update_slice(v_cache, v, (zero, end, zero, zero))
    out = attention(q, k_all.astype(q.dtype), v_all.astype(q.dtype), positions, slot_pos,
                    slot_valid)
  else:
    out = attention(q, k.astype(q.dtype), v.astype(q.dtype), positions, positions,
                    positions >= 0, causal_chunks=True)
  x = x + dense(attn.o, out)
  h = rms_norm(x, blk.mlp_norm[...], cfg.rms_norm_eps)
  m = jax.nn.silu(dense(blk.mlp.gate, h)) * dense(blk.mlp.up, h)
  x = x + dense(blk.mlp.down, m)
  return constrain(x, ("batch", "seq", "embed")), k, v


def forward(model: Transformer, tokens_BxT: jax.Array, positions_BxT: jax.Array, cache: KVCache,
            *, last_only: bool = False, attend_cache: bool = True) -> tuple[jax.Array, KVCache]:
  """Runs `tokens` at absolute `positions` on top of `cache`; returns (logits, new cache).

  Serves prefill (T > 1) and decode (T == 1) alike. A position < 0 marks a padding token: it
  is written to the cache as an invalid slot and nothing attends to it. Each token attends
  to every valid slot whose position is <= its own, so causality comes from positions, not
  slot order. With `last_only`, logits are `[B, 1, V]` for each row's last real token (its
  highest position) -- all that prefill for generation needs.
  `attend_cache=False` is the first prefill into an empty cache: tokens attend only to each
  other (same result, without scoring the empty slots). It requires each row's real tokens
  in increasing position order, as any prompt is.
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

  new_k, new_v = [], []
  for layer, blk in enumerate(model.layers):
    x, k, v = _block(cfg, blk, x, cos, sin, cache.k[layer], cache.v[layer], end, positions_BxT,
                     slot_pos, slot_valid, attend_cache)
    new_k.append(k)
    new_v.append(v)
  # One write of every layer's new K/V: in place when the caller donates the cache.
  at = (zero, zero, end, zero, zero)
  k_all = jax.lax.dynamic_update_slice(cache.k, jnp.stack(new_k), at)
  v_all = jax.lax.dynamic_update_slice(cache.v, jnp.stack(new_v), at)

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
