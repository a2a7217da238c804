"""The training objective as pure functions: branch caches -> cache path -> target loss.

Everything a train step computes from a batch (see `psynth.train.batch`):
1. `branch_caches`: the workers' shared prefix (once per example), then their rows (rest of
   p_i ++ o_i) through the *base* model (LoRA off), keeping only the slots of o_i valid:
   the branch caches, as at inference.
2. `synth_logits`: re-encode (shared_start or sequential), calibrate with the mapper, merge,
   and run the synthesizer rows (prompt ++ target) after the merged span with the LoRA on.
3. `loss_terms`: summed cross-entropy over target tokens (and, optionally, summed KL from the
   text synthesizer's distribution), with the token count: the step divides sums by counts
   over the whole global batch, so splitting it into micro-batches or devices changes nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from psynth.cache import ops, reencode
from psynth.model.kv_cache import KVCache
from psynth.cache.mappers import CacheMapper
from psynth.model import rope
from psynth.model.transformer import Transformer, forward, init_cache


def branch_caches(model: Transformer, prefix_tokens, prefix_positions, worker_tokens,
                  worker_positions, out_start, *, scan: bool = False) -> KVCache:
  """`[L, B*N, W]` caches whose valid slots are the branch outputs o_i (at positions |p_i|+j).

  The B prefixes `[B, P]` are run once and tiled to the N rows of their example; each row
  (`[B*N, W]`) then runs after its prefix."""
  B, P = prefix_tokens.shape
  BN, W = worker_tokens.shape
  cache = init_cache(model.config, B, P + W)
  _, cache = forward(model, prefix_tokens, prefix_positions, cache, last_only=True,
                     attend_cache=False, lora=False, scan=scan)
  _, cache = forward(model, worker_tokens, worker_positions, ops.tile_rows(cache, BN // B),
                     last_only=True, lora=False, scan=scan)
  rows = ops.take_slots(cache, P, W)
  keep = jnp.arange(W)[None, :] >= out_start[:, None]
  return jax.lax.stop_gradient(rows.replace(valid=rows.valid & keep))


def synth_logits(model: Transformer, mapper: CacheMapper | None, branches: KVCache,
                 lengths_BxN, synth_tokens, synth_positions, *, mode: str = "shared_start",
                 lora: bool = True, scan: bool = False, remat: bool = False) -> jax.Array:
  """float32 logits `[B, T, V]` of the synthesizer rows read against the merged branches
  (`lengths_BxN`: 0 for the empty branches that pad an example with fewer)."""
  T = synth_tokens.shape[1]
  if mode == "after_prefix":  # it needs a real shared prefix cache, which training lacks
    raise ValueError("training position mode 'after_prefix' is not supported; use "
                     "shared_start or sequential")
  inv_freq, _ = rope.inv_freq_and_scale(model.config.rope, model.config.head_dim)
  lengths_BxN = jnp.asarray(lengths_BxN)
  starts_BxN, synth_start = reencode.branch_starts(lengths_BxN, mode)
  merged = ops.extend(reencode.merge(branches, starts_BxN, jnp.asarray(inv_freq), mapper,
                                     lengths_BxN), T)
  positions = jnp.where(synth_positions >= 0, synth_positions + synth_start[:, None], -1)
  logits, _ = forward(model, synth_tokens, positions, merged, lora=lora, scan=scan, remat=remat)
  return logits


def text_logits(model: Transformer, teacher_tokens, teacher_positions, *,
                scan: bool = False) -> jax.Array:
  """The text synthesizer (base model, branch texts in the prompt): logits `[B, Tt, V]`."""
  B, Tt = teacher_tokens.shape
  logits, _ = forward(model, teacher_tokens, teacher_positions, init_cache(model.config, B, Tt),
                      attend_cache=False, lora=False, scan=scan)
  return jax.lax.stop_gradient(logits)


def loss_terms(logits_BxTxV, batch, teacher_logits=None) -> dict[str, jax.Array]:
  """Sums over scored tokens: `ce`, `kl` (text synthesizer || cache synthesizer), `tokens`."""
  labels = jnp.roll(batch["synth_tokens"], -1, axis=1)  # position t predicts token t+1
  mask = batch["loss_mask"]
  logp = jax.nn.log_softmax(logits_BxTxV, axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  out = dict(ce=(nll * mask).sum(), tokens=mask.sum(), kl=jnp.zeros((), jnp.float32))
  if teacher_logits is not None:
    t = jnp.take_along_axis(teacher_logits, batch["teacher_index"][..., None], axis=1)
    logp_t = jax.nn.log_softmax(t, axis=-1)
    kl = (jnp.exp(logp_t) * (logp_t - logp)).sum(-1)
    out["kl"] = (kl * mask).sum()
  return out


def compute(model: Transformer, mapper, batch, *, mode: str = "shared_start", lora: bool = True,
            kl: bool = False, scan: bool = False, remat: bool = False) -> dict[str, jax.Array]:
  """All loss sums of one (micro-)batch. The branch caches are computed here, per batch, from
  the workers' rows (memory does not grow with the data set)."""
  branches = branch_caches(model, batch["prefix_tokens"], batch["prefix_positions"],
                           batch["worker_tokens"], batch["worker_positions"], batch["out_start"],
                           scan=scan)
  logits = synth_logits(model, mapper, branches, batch["branch_lengths"], batch["synth_tokens"],
                        batch["synth_positions"], mode=mode, lora=lora, scan=scan, remat=remat)
  teacher = (text_logits(model, batch["teacher_tokens"], batch["teacher_positions"], scan=scan)
             if kl else None)
  return loss_terms(logits, batch, teacher)
