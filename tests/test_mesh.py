"""Under an 8-device CPU mesh (rows over data, KV heads over tensor) cache synthesis gives the
same numbers as on one device."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from psynth import sharding
from psynth.cache import mappers
from psynth.convert.hf_checkpoint import load_params
from psynth.model.config import ModelConfig
from psynth.model.lora import add_lora
from psynth.synthesis.fanout import encode_branches
from psynth.synthesis.generate import Engine
from psynth.synthesis.adapter import Adapter
from psynth.synthesis.synthesize import cache_prefill


def test_cache_synthesis_sharded_equals_single_device(tiny_checkpoint):
  assert jax.device_count() == 8, "conftest asks XLA for 8 CPU devices"
  path, _ = tiny_checkpoint("llama_gqa")  # 4 heads, 2 KV heads
  cfg = ModelConfig.from_hf(path)

  def run(mesh):
    model = add_lora(load_params(cfg, path), rank=4, alpha=8, rngs=nnx.Rngs(0))
    for blk in model.layers:  # a non-trivial adapter
      blk.attn.v.lora_b.set_value(jnp.full_like(blk.attn.v.lora_b[...], 0.03))
    mapper = mappers.make("per_head", cfg.num_layers, cfg.num_kv_heads,
                                    rngs=nnx.Rngs(1))
    mapper.w2.set_value(jnp.full_like(mapper.w2[...], 0.2))
    rng = np.random.RandomState(0)
    prompts = [[1, 2, 3] + rng.randint(0, 128, i + 2).tolist() for i in range(4)]
    outputs = [rng.randint(0, 128, 5 + 3 * i).tolist() for i in range(4)]
    if mesh is not None:
      sharding.shard_params(model, mesh)
    engine = Engine(model)
    br = encode_branches(engine, prompts, outputs)
    if mesh is not None:
      br.cache = sharding.shard_cache(br.cache, mesh)
      assert br.cache.k.sharding.spec[1] == "data" and br.cache.k.sharding.spec[3] == "tensor"
      with sharding.use_mesh(mesh):
        logits, build, _ = cache_prefill(engine, br, [[7, 8, 9, 10]],
                                         adapter=Adapter(mapper=mapper, lora=True))
        cache = build()
    else:
      logits, build, _ = cache_prefill(engine, br, [[7, 8, 9, 10]],
                                       adapter=Adapter(mapper=mapper, lora=True))
      cache = build()
    return np.asarray(logits), np.asarray(cache.k), np.asarray(cache.v)

  single = run(None)
  sharded = run(sharding.make_mesh(data=4, tensor=2))
  for a, b in zip(single, sharded):
    assert np.abs(a - b).max() <= 1e-5
