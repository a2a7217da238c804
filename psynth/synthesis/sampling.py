"""Next-token choice from last-position logits: greedy, or temperature + nucleus (top-p)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample(logits_BxV: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array,
           *, greedy: bool) -> jax.Array:
  """Token ids `[B]`. `greedy` is static; temperature/top_p are traced (no recompiles)."""
  if greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits = logits_BxV.astype(jnp.float32) / temperature
  # Keep the smallest set of tokens whose probability mass reaches top_p (always >= 1 token).
  sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  cutoff_idx = jnp.sum(mass_before < top_p, axis=-1, keepdims=True) - 1
  cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx, axis=-1)
  logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
