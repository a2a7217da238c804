"""The Llama-family decoder: NNX modules that hold parameters, and one pure `forward`.

Modules here only own parameters (every one with logical axis names); all computation is in
plain functions. Each layer keeps its own arrays and the forward loop is unrolled by default:
a decode step is bound by reading the weights, and XLA on CPU copies a layer's slice out of a
stacked `[layers, ...]` array before each matmul, adding to that traffic
(`results/cpu_design_notes.md`). `forward(scan=True)` stacks them per call and scans instead,
which compiles one layer (large models, accelerators).

Einsum letters: b batch, t query tokens, s cache slots, d embed, h heads, k kv heads,
g query heads per kv head (GQA group), e head_dim, f mlp.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from psynth.model import attention as attention_lib
from psynth.model.kv_cache import KVCache
from psynth.model.config import ModelConfig
from psynth.model import rotary
from psynth.model import rope as rope_lib
from psynth.sharding import constrain

def _param(rngs: nnx.Rngs | None, shape, dtype, axes, init="normal") -> nnx.Param:
  if init == "ones":
    value = jnp.ones(shape, dtype)
  elif init == "zeros":
    value = jnp.zeros(shape, dtype)
  else:
    value = (0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
  return nnx.Param(value, logical_axes=tuple(axes))


class Dense(nnx.Module):
  """A projection: kernel `[*in, *out]`, optional bias `[*out]`, optional LoRA.

  `spec` is its einsum, e.g. "btd,dhe->bthe"; its letters name the axes (the kernel's input
  axes are x's last ones, so it runs as one 2-D matmul: `_project`). A LoRA adapter
  (`add_lora`) adds `lora_a [*in, rank]` and `lora_b [rank, *out]` as `nnx.LoRAParam`s.
  """

  def __init__(self, spec: str, in_shape, out_shape, in_axes, out_axes, *, bias: bool, dtype,
               rngs: nnx.Rngs):
    self.spec = spec
    self.in_axes, self.out_axes = tuple(in_axes), tuple(out_axes)
    self.kernel = _param(rngs, (*in_shape, *out_shape), dtype, (*in_axes, *out_axes))
    self.bias = _param(rngs, tuple(out_shape), dtype, tuple(out_axes), "zeros") if bias else None
    self.lora_a = self.lora_b = None
    self.lora_scale = 0.0


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


def _project(x: jax.Array, w: jax.Array, n_in: int) -> jax.Array:
  """x `[..., *in]` times w `[*in, *out]` as one 2-D matmul: `[..., *out]`.

  Written as a plain matmul over flattened axes, not an einsum over named head axes: given
  the einsum, XLA sometimes moved a transpose from the (small) activation onto the weight
  and copied every layer's o kernel on every call.
  """
  lead, ins, outs = x.shape[:x.ndim - n_in], w.shape[:n_in], w.shape[n_in:]
  y = x.reshape(-1, math.prod(ins)) @ w.reshape(math.prod(ins), -1)
  return y.reshape(*lead, *outs)


def dense(layer: Dense, x: jax.Array, lora: bool = False) -> jax.Array:
  n_in = len(layer.in_axes)
  y = _project(x, layer.kernel[...].astype(x.dtype), n_in)
  if layer.bias is not None:
    y = y + layer.bias[...].astype(x.dtype)
  if lora and layer.lora_a is not None:
    h = _project(x, layer.lora_a[...].astype(x.dtype), n_in)  # [..., rank]
    y = y + layer.lora_scale * _project(h, layer.lora_b[...].astype(x.dtype), 1)
  return y


def _zero_after(x: jax.Array) -> jax.Array:
  """An int32 0 computed from x (bit 0 of its first element, min 0; XLA does not fold it).

  Added to an index, it orders the indexing op after x exists, which plain data flow would
  not: XLA schedules (and decides on copies) by data dependencies alone.
  """
  first = jax.lax.stop_gradient(x.reshape(-1)[0]).astype(jnp.float32)
  bits = jax.lax.bitcast_convert_type(first, jnp.int32)
  return jnp.minimum(bits & 1, 0)


def _block(cfg: ModelConfig, blk: Block, x, cos, sin, positions, layer_cache, lora: bool):
  """One decoder layer; `layer_cache` is None or this layer's (k, v, positions, valid) slots.

  Returns x and this call's k, v `[B, T, K, E]` (in the cache dtype), for the caller to store.
  """
  attn = blk.attn
  h = rms_norm(x, blk.attn_norm[...], cfg.rms_norm_eps)
  q, k, v = dense(attn.q, h, lora), dense(attn.k, h, lora), dense(attn.v, h, lora)
  if attn.q_norm is not None:
    q = rms_norm(q, attn.q_norm[...], cfg.rms_norm_eps)
    k = rms_norm(k, attn.k_norm[...], cfg.rms_norm_eps)
  q = constrain(rotary.apply_rope(q, cos, sin), ("batch", "seq", "heads", "head_dim"))
  k = rotary.apply_rope(k, cos, sin)
  cache_dtype = x.dtype if layer_cache is None else layer_cache[0].dtype
  # Round k/v to the cache dtype first, so attention sees exactly what a later call will.
  k, v = k.astype(cache_dtype), v.astype(cache_dtype)
  out = attention_lib.attend(cfg.attention, q, k.astype(q.dtype), v.astype(q.dtype), positions,
                             layer_cache)
  x = x + dense(attn.o, out, lora)
  h = rms_norm(x, blk.mlp_norm[...], cfg.rms_norm_eps)
  m = jax.nn.silu(dense(blk.mlp.gate, h, lora)) * dense(blk.mlp.up, h, lora)
  x = x + dense(blk.mlp.down, m, lora)
  return constrain(x, ("batch", "seq", "embed")), k, v


def forward(model: Transformer, tokens_BxT: jax.Array, positions_BxT: jax.Array, cache: KVCache,
            *, last_only: bool = False, logits_at: jax.Array | None = None,
            attend_cache: bool = True, lora: bool = False,
            cache_view=None, write: bool = True, scan: bool = False,
            remat: bool = False) -> tuple[jax.Array, KVCache]:
  """Runs `tokens` at absolute `positions` on top of `cache`; returns (logits, new cache).

  Serves prefill (T > 1) and decode (T == 1) alike; the tokens are written at slots
  [end, end + T). A position < 0 marks a padding token: it is stored as an invalid slot and
  nothing attends to it. A token attends to every valid cache slot whose position is <= its
  own (so cached slots need no order: a merge of branches that all start at 0 is a cache
  like any other) and to the tokens of this call up to itself, which must therefore come in
  increasing position order, as any prompt does.
  `last_only`: logits `[B, 1, V]` for each row's last real token only (prefill needs no more).
  `logits_at`: `[B, J]` indices into this call's tokens: logits `[B, J, V]` of those only
  (scoring a continuation without the vocabulary-wide logits of every prompt token).
  `attend_cache=False`: skip scoring the cache, for a first prefill into an empty one.
  `lora`: switch the LoRA adapter on (the synthesizer); off, the model is the base model,
  bit for bit (the adapter's arrays are not even read).
  `cache_view(layer, k, v) -> (k, v)`: applied to each layer's cache slots `[B, S, K, E]` as
  attention reads them, e.g. re-encoding and mapping branch caches on the fly (a layer's
  slice is small; the whole cache is never rewritten).
  `write=False`: leave `cache` alone and return, instead of it, a cache holding only this
  call's T tokens (slots [0, T)): a first token needs no merged cache to exist yet.
  `scan`: run the layers as one `lax.scan` over their weights stacked in this call: XLA
  compiles one layer instead of L (seconds instead of a minute for a train step), at the
  cost of copying the weights into the stack once per call (worth it for calls that take
  seconds: training, evaluation; not for a decode step). A model whose layers are stored
  stacked (`psynth.model.stacking.stack_layers`: `model.scan_layers`) always scans, with no
  copy. `remat`: recompute each layer's
  activations in the backward pass instead of keeping them (with `scan`).
  Logits are float32.
  """
  cfg = model.config
  B, T = tokens_BxT.shape
  if write and not isinstance(cache.end, jax.core.Tracer) and int(cache.end) + T > cache.slots:
    raise ValueError(f"cache has {cache.slots} slots; {int(cache.end)} are used and "
                     f"{T} more do not fit")
  positions_BxT = jnp.asarray(positions_BxT, jnp.int32)
  dtype = cfg.jnp_dtype
  x = constrain(model.embed[...][tokens_BxT].astype(dtype), ("batch", "seq", "embed"))

  inv_freq, scale = rope_lib.inv_freq_and_scale(cfg.rope, cfg.head_dim)
  cos, sin = rotary.cos_sin(positions_BxT, jnp.asarray(inv_freq), scale)

  run = _scanned_layers if scan or isinstance(model.layers, Block) else _unrolled_layers
  if run is _scanned_layers and cache.is_per_layer:
    raise ValueError("a scanned layer loop reads a stacked cache; pass cache.stacked()")
  x, new_k, new_v = run(model, x, cos, sin, positions_BxT, cache if attend_cache else None,
                        cache_view, lora, remat)
  if write:
    new_cache = _write(cache, new_k, new_v, positions_BxT, x)
  else:
    new_cache = cache.replace(k=new_k, v=new_v, positions=positions_BxT,
                              valid=positions_BxT >= 0, end=jnp.int32(T))
  return _logits(model, x, positions_BxT, last_only, logits_at), _laid_out(new_cache)


def _laid_out(cache: KVCache) -> KVCache:
  """The cache leaves laid out as they came (KV heads over the tensor axis), so a donated
  cache is reused in place, step after step."""
  if cache.is_per_layer:
    lay = lambda kv: tuple(constrain(a, cache.layer_axes) for a in kv)
    return cache.replace(k=lay(cache.k), v=lay(cache.v))
  return cache.replace(k=constrain(cache.k, cache.logical_axes),
                       v=constrain(cache.v, cache.logical_axes))


def _logits(model: Transformer, x, positions_BxT, last_only: bool, at_BxJ=None) -> jax.Array:
  """float32 logits of the last layer's x: every token's, each row's last real one, or those
  at the indices `at_BxJ`."""
  if last_only:
    at_BxJ = jnp.argmax(positions_BxT, axis=1)[:, None]  # [B, 1]
  if at_BxJ is not None:
    x = jnp.take_along_axis(x, at_BxJ[:, :, None], axis=1)
  x = rms_norm(x, model.final_norm[...], model.config.rms_norm_eps)
  if model.lm_head is None:
    logits = jnp.einsum("btd,vd->btv", x, model.embed[...].astype(x.dtype),
                        preferred_element_type=jnp.float32)
  else:
    logits = jnp.einsum("btd,dv->btv", x, model.lm_head[...].astype(x.dtype),
                        preferred_element_type=jnp.float32)
  return constrain(logits, ("batch", "seq", "vocab"))


def _layer_cache(cache: KVCache | None, layer, k_l, v_l, cache_view):
  """What layer `layer` attends to besides its own tokens: its cache slots, viewed."""
  if cache is None:
    return None
  if cache_view is not None:
    k_l, v_l = cache_view(layer, k_l, v_l)
  return (k_l, v_l, cache.positions, cache.valid)


def _unrolled_layers(model: Transformer, x, cos, sin, positions, cache, cache_view, lora, remat):
  """Every layer in turn, each with its own weights: (x, new k, new v `[L, B, T, K, E]`)."""
  del remat  # the unrolled loop keeps what autodiff keeps
  new_k, new_v = [], []
  for layer, blk in enumerate(model.layers):
    k_l = v_l = None
    if cache is not None and cache.is_per_layer:
      k_l, v_l = cache.k[layer], cache.v[layer]  # read in place, no copy
    elif cache is not None:
      # Read when the layer runs: with a constant index, XLA's CPU scheduler hoisted all 30
      # layers' cache copies (re-laid out for the matmuls) to the start, all live at once.
      take = lambda a: jax.lax.dynamic_index_in_dim(a, layer + _zero_after(x), keepdims=False)
      k_l, v_l = take(cache.k), take(cache.v)
    x, k, v = _block(model.config, blk, x, cos, sin, positions,
                     _layer_cache(cache, layer, k_l, v_l, cache_view), lora)
    new_k.append(k)
    new_v.append(v)
  return x, jnp.stack(new_k), jnp.stack(new_v)


def _scanned_layers(model: Transformer, x, cos, sin, positions, cache, cache_view, lora, remat):
  """The layers as one `lax.scan` over their weights: stored stacked (one `Block` of
  `[L, ...]` arrays, `psynth.model.stacking`), or stacked here, per call (every layer has the
  same structure, LoRA included): (x, new k, new v `[L, B, T, K, E]`)."""
  if isinstance(model.layers, Block):
    graphdef, stacked = nnx.split(model.layers)
  else:
    graphdef, _ = nnx.split(model.layers[0])
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[nnx.state(b) for b in model.layers])

  def body(x, xs):
    layer, weights, k_l, v_l = xs
    blk = nnx.merge(graphdef, weights)
    x, k, v = _block(model.config, blk, x, cos, sin, positions,
                     _layer_cache(cache, layer, k_l, v_l, cache_view), lora)
    return x, (k, v)

  if remat:
    body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
  kv = (None, None) if cache is None else (cache.k, cache.v)
  x, (new_k, new_v) = jax.lax.scan(body, x, (jnp.arange(model.config.num_layers), stacked, *kv))
  return x, new_k, new_v


def _write(cache: KVCache, k_LxBxTxKxE, v_LxBxTxKxE, positions_BxT, x) -> KVCache:
  """`cache` with this call's K/V written at slots [end, end + T); x: the last layer's output."""
  zero, end = jnp.zeros((), jnp.int32), cache.end
  # One write of every layer's new K/V, in place. Its index depends on the last layer's x,
  # hence on every layer's cache reads: with a plain index, XLA could not prove the reads
  # come first and copied the whole cache before writing (each decode step, donated or not).
  at = (zero, zero, end + _zero_after(x), zero, zero)
  T = positions_BxT.shape[1]
  if cache.is_per_layer:
    put = lambda layers, new: tuple(jax.lax.dynamic_update_slice(a, n, at[1:])
                                    for a, n in zip(layers, new))
    k, v = put(cache.k, k_LxBxTxKxE), put(cache.v, v_LxBxTxKxE)
  else:
    k = jax.lax.dynamic_update_slice(cache.k, k_LxBxTxKxE, at)
    v = jax.lax.dynamic_update_slice(cache.v, v_LxBxTxKxE, at)
  return cache.replace(
      k=k, v=v,
      positions=jax.lax.dynamic_update_slice(cache.positions, positions_BxT, (zero, end)),
      valid=jax.lax.dynamic_update_slice(cache.valid, positions_BxT >= 0, (zero, end)),
      end=end + T)
