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
    # Invalid slots (the prompt's padding) hold what attention gives a query that sees
    # nothing: a value each implementation picks, read by nobody.
    valid = np.asarray(cache.valid)[None, :, :, None, None]
    return (np.asarray(logits), np.where(valid, np.asarray(cache.k), 0),
            np.where(valid, np.asarray(cache.v), 0))

  single = run(None)
  sharded = run(sharding.make_mesh(data=4, tensor=2))
  for a, b in zip(single, sharded):
    assert np.abs(a - b).max() <= 1e-5


def test_engine_on_a_mesh_equals_one_device(tiny_checkpoint):
  """Fan-out, cache synthesis (re-encoding, mapper, merge, prefill, decode) and text synthesis
  by an Engine on 8 devices (weights and caches sharded by the training's rules): the same
  greedy tokens and logits as on one device."""
  from psynth.synthesis.fanout import run_workers
  from psynth.synthesis.generate import SamplingConfig
  from psynth.synthesis.synthesize import synthesize_from_branches

  path, _ = tiny_checkpoint("llama_gqa")  # 4 heads, 2 KV heads
  cfg = ModelConfig.from_hf(path)
  rng = np.random.RandomState(1)
  prompts = [[1, 2, 3, 4] + rng.randint(0, 128, 2 + i).tolist() for i in range(4)]
  sampling = SamplingConfig(max_new_tokens=6)

  def run(mesh):
    model = add_lora(load_params(cfg, path), rank=4, alpha=8, rngs=nnx.Rngs(0))
    for blk in model.layers:
      blk.attn.q.lora_b.set_value(jnp.full_like(blk.attn.q.lora_b[...], 0.03))
    mapper = mappers.make("affine", cfg.num_layers, cfg.num_kv_heads, rngs=nnx.Rngs(1))
    mapper.w2.set_value(jnp.full_like(mapper.w2[...], 0.2))
    adapter = Adapter(mapper=mapper, lora=True)
    engine = Engine(model, mesh=mesh)
    br = run_workers(engine, prompts, sampling, counts=(2, 2))  # 4 rows, 2 examples
    synth = [[7, 8, 9, 10], [11, 12, 13]]
    logits, _, _ = cache_prefill(engine, br, synth, adapter=adapter, max_new_tokens=6)
    psynth = synthesize_from_branches(engine, br, "psynth", synth, sampling, adapter=adapter)
    text = synthesize_from_branches(engine, br, "text", [p + [5, 6] for p in prompts[::2]],
                                    sampling)
    if mesh is not None:
      assert br.cache.k.sharding.spec[1:4] == ("data", None, "tensor")
      k_kernel = engine.state["layers"][0]["attn"]["k"]["kernel"][...]
      assert tuple(k_kernel.sharding.spec) == (None, "tensor", None)
    return (br.tokens, [s.answer_ids for s in psynth], [s.answer_ids for s in text],
            np.asarray(logits), np.asarray(br.cache.k))

  one = run(None)
  eight = run(sharding.make_mesh(data=4, tensor=2))
  assert one[:3] == eight[:3]
  assert all(len(t) == 6 for t in one[1])
  for a, b in zip(one[3:], eight[3:]):
    assert np.abs(a - b).max() <= 1e-5
