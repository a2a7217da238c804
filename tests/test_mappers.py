"""The mapper registry: a new kind is one class; the eager merge and the lazy prefill view
both apply it the way it says."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from psynth.cache import mappers, reencode
from psynth.cache.mappers import base
from psynth.convert.hf_checkpoint import load_params
from psynth.model import rope
from psynth.model.config import ModelConfig
from psynth.synthesis.fanout import encode_branches
from psynth.synthesis.generate import Engine


class ValueGate(base.CacheMapper):
  """A kind written for this test: one value scale per (branch, layer), keys untouched."""

  kind = "value_gate"

  def __init__(self, num_layers, num_kv_heads, *, rngs):
    super().__init__(num_layers, num_kv_heads)
    self.w = base.MapperParam(jnp.full((3,), 0.5, jnp.float32))

  def coefficients(self, lengths_BxN):
    g = jnp.tanh(base.features(lengths_BxN, self.num_layers) @ self.w[...])  # [B, N, L]
    return jnp.broadcast_to(g[..., None, None], g.shape + (1, self.num_kv_heads))

  def apply(self, k, v, valid, c):
    return k, jnp.where(valid[..., None, None], v * c[..., 0, None, :, None], v)


@pytest.fixture
def value_gate():
  base.register(ValueGate)
  yield
  del base.REGISTRY["value_gate"]


def test_a_registered_kind_is_made_by_name_and_applied_alike_eager_and_lazy(
    value_gate, tiny_checkpoint):
  path, _ = tiny_checkpoint("llama_gqa")
  model = load_params(ModelConfig.from_hf(path), path)
  cfg = model.config
  m = mappers.make("value_gate", cfg.num_layers, cfg.num_kv_heads)
  assert isinstance(m, ValueGate)
  assert jax.tree.leaves(nnx.state(m, mappers.MapperParam))  # trained as a mapper
  br = encode_branches(Engine(model), [[1, 2, 3], [4, 5]], [[7, 8, 9, 10], [11]])
  inv_freq = jnp.asarray(rope.inv_freq_and_scale(cfg.rope, cfg.head_dim)[0])
  lengths, starts = jnp.asarray(br.lengths)[None], jnp.zeros((1, 2), jnp.int32)
  eager = reencode.merge(br.cache, starts, inv_freq, m, lengths)
  plain = reencode.merge(br.cache, starts, inv_freq)
  np.testing.assert_array_equal(np.asarray(eager.k), np.asarray(plain.k))  # keys untouched
  assert not np.array_equal(np.asarray(eager.v), np.asarray(plain.v))
  merged, view = reencode.lazy_merge(br.cache, starts, inv_freq, m, lengths)
  for layer in range(cfg.num_layers):
    k, v = view(layer, merged.k[layer], merged.v[layer])
    np.testing.assert_allclose(np.asarray(k), np.asarray(eager.k[layer]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(v), np.asarray(eager.v[layer]), rtol=0, atol=1e-6)


def test_kinds_cannot_be_taken_twice():
  with pytest.raises(ValueError, match="'affine' is already taken"):
    base.register(type("Again", (base.CacheMapper,), {"kind": "affine"}))
