"""Parallel-Synthesis on tiny models: exact re-encoding, identities, batching, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from psynth.cache import mappers, ops, reencode
from psynth.convert.hf_checkpoint import load_params
from psynth.model import rope
from psynth.model.config import ModelConfig
from psynth.synthesis.adapter import Adapter
from psynth.model.lora import add_lora
from psynth.model.transformer import forward, init_cache
from psynth.synthesis.fanout import encode_branches, run_workers
from psynth.synthesis.generate import Engine, SamplingConfig, bucket
from psynth.synthesis.synthesize import cache_prefill

ROPE_KINDS = ["llama_gqa", "llama3_rope", "linear_rope", "yarn_rope", "qwen3"]


def _model(tiny_checkpoint, name="llama_gqa"):
  path, _ = tiny_checkpoint(name)
  return load_params(ModelConfig.from_hf(path), path)


@pytest.mark.parametrize("name", ROPE_KINDS)
def test_reencoding_is_exact(name, tiny_checkpoint):
  """A branch prefilled at 0 and moved to p equals the same branch prefilled at p."""
  model = _model(tiny_checkpoint, name)
  cfg = model.config
  n, p = 24, 300  # far enough that every rope scaling regime is exercised
  toks = np.random.RandomState(1).randint(0, cfg.vocab_size, (1, n)).astype(np.int32)
  at = lambda start: forward(model, toks, (start + np.arange(n, dtype=np.int32))[None],
                             init_cache(cfg, 1, n))[1]
  inv_freq, _ = rope.inv_freq_and_scale(cfg.rope, cfg.head_dim)
  moved = ops.reposition(at(0), jnp.array([p]), jnp.asarray(inv_freq))
  ref = at(p)
  np.testing.assert_array_equal(np.asarray(moved.positions), np.asarray(ref.positions))
  assert np.abs(np.asarray(moved.k) - np.asarray(ref.k)).max() <= 1e-4
  assert np.abs(np.asarray(moved.v) - np.asarray(ref.v)).max() <= 1e-4


def test_one_branch_sequential_equals_one_forward(tiny_checkpoint):
  """Identity mapper, LoRA off: synthesizer logits == one forward over [branch ++ prompt]."""
  model = _model(tiny_checkpoint)
  rng = np.random.RandomState(2)
  branch = rng.randint(0, 128, 13).tolist()
  synth = rng.randint(0, 128, 7).tolist()
  engine = Engine(model)
  br = encode_branches(engine, [[]], [branch])
  mapper = mappers.make("affine", model.config.num_layers, model.config.num_kv_heads,
                                  rngs=nnx.Rngs(0))
  logits, _, next_pos = cache_prefill(engine, br, [synth], mode="sequential",
                                      adapter=Adapter(mapper=mapper, lora=False))
  seq = np.array([branch + synth], np.int32)
  ref, _ = forward(model, seq, np.arange(20, dtype=np.int32)[None], init_cache(model.config, 1, 20))
  assert next_pos == 20
  assert np.abs(np.asarray(logits[0]) - np.asarray(ref[0, -1])).max() <= 1e-4


def test_after_prefix_equals_a_cache_built_by_hand(tiny_checkpoint):
  """after_prefix: the synthesizer reads the real shared prefix (positions 0..S-1), then the
  branch moved to start at S, then its own prompt rest, as a cache built from plain forwards."""
  model = _model(tiny_checkpoint)
  rng = np.random.RandomState(3)
  shared, own, rest = (rng.randint(0, 128, n).tolist() for n in (10, 5, 6))
  branch = rng.randint(0, 128, 9).tolist()
  engine = Engine(model)
  br = encode_branches(engine, [shared + own], [branch])
  logits, _, next_pos = cache_prefill(engine, br, [shared + rest], mode="after_prefix")
  S, O, n = len(shared), len(own), len(branch)
  run = lambda seq: forward(model, np.array([seq], np.int32),
                            np.arange(len(seq), dtype=np.int32)[None],
                            init_cache(model.config, 1, len(seq)))[1]
  prefix = run(shared)  # [0, S)
  worker = ops.take_slots(run(shared + own + branch), S + O, n)  # the branch at [S+O, S+O+n)
  inv_freq, _ = rope.inv_freq_and_scale(model.config.rope, model.config.head_dim)
  moved = ops.reposition(worker, jnp.array([S], jnp.int32), jnp.asarray(inv_freq))
  cache = ops.extend(ops.concat_slots(prefix, moved), len(rest))
  ref, _ = forward(model, np.array([rest], np.int32),
                   np.arange(S + n, S + n + len(rest), dtype=np.int32)[None], cache)
  assert next_pos == S + n + len(rest)
  assert np.abs(np.asarray(logits[0]) - np.asarray(ref[0, -1])).max() <= 1e-4


def test_mapper_is_identity_at_init_and_has_260_params():
  assert mappers.KINDS == ("none", "affine", "per_head")
  assert mappers.make("none", 4, 2) is None
  for kind in mappers.KINDS[1:]:
    m = mappers.make(kind, 4, 2, rngs=nnx.Rngs(0))
    assert type(m).kind == kind
    c = m.coefficients(jnp.array([[5, 9, 1]]))  # [B, N, L, 4, K]
    assert c.shape == (1, 3, 4, 4, 2)
    np.testing.assert_array_equal(np.asarray(c[..., 0, :]), 1.0)  # a_k
    np.testing.assert_array_equal(np.asarray(c[..., 1, :]), 0.0)  # b_k
    np.testing.assert_array_equal(np.asarray(c[..., 2, :]), 1.0)  # a_v
    np.testing.assert_array_equal(np.asarray(c[..., 3, :]), 0.0)  # b_v
  affine = mappers.make("affine", 30, 3, rngs=nnx.Rngs(0))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(affine, mappers.MapperParam)))
  assert n == 260


def test_trained_mapper_changes_only_valid_slots(tiny_checkpoint):
  model = _model(tiny_checkpoint)
  br = encode_branches(Engine(model), [[1, 2, 3], [4, 5]], [[7, 8, 9, 10], [11]])
  m = mappers.make("per_head", model.config.num_layers, model.config.num_kv_heads,
                             rngs=nnx.Rngs(0))
  m.w2.set_value(jnp.ones_like(m.w2[...]))  # pretend training moved it
  inv_freq = jnp.asarray(rope.inv_freq_and_scale(model.config.rope, model.config.head_dim)[0])
  lengths = jnp.asarray(br.lengths)[None]
  starts = jnp.asarray(br.prompt_lens)[None]  # where they are: no re-encoding
  out = reencode.merge(br.cache, starts, inv_freq, m, lengths)
  plain = reencode.merge(br.cache, starts, inv_freq)
  valid = np.asarray(plain.valid)[None, :, :, None, None]
  changed = np.asarray(out.k) != np.asarray(plain.k)
  assert changed[np.broadcast_to(valid, changed.shape)].all()
  assert not changed[~np.broadcast_to(valid, changed.shape)].any()


def test_lora_is_identity_at_init_and_off_is_bit_identical(tiny_checkpoint):
  base = _model(tiny_checkpoint)
  toks = np.random.RandomState(3).randint(0, 128, (2, 9)).astype(np.int32)
  pos = np.tile(np.arange(9, dtype=np.int32), (2, 1))
  run = lambda m, lora: np.asarray(forward(m, toks, pos, init_cache(m.config, 2, 9), lora=lora)[0])
  ref = run(base, False)
  adapted = add_lora(_model(tiny_checkpoint), rank=4, alpha=8, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(run(adapted, False), ref)
  assert np.abs(run(adapted, True) - ref).max() <= 1e-6  # B = 0: identity at init
  for blk in adapted.layers:  # now a trained adapter: on differs, off is still the base model
    blk.attn.q.lora_b.set_value(jnp.full_like(blk.attn.q.lora_b[...], 0.05))
  np.testing.assert_array_equal(run(adapted, False), ref)
  assert np.abs(run(adapted, True) - ref).max() > 1e-3
  n_lora = sum(x.size for x in jax.tree.leaves(nnx.state(adapted, nnx.LoRAParam)))
  cfg = base.config
  D, HE, KE = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  per_layer = 4 * (2 * (D + HE) + 2 * (D + KE))  # rank 4 on q, o (D<->HE) and k, v (D->KE)
  assert n_lora == cfg.num_layers * per_layer


def test_batched_workers_equal_each_worker_alone(tiny_checkpoint):
  engine = Engine(_model(tiny_checkpoint))
  shared = [3, 14, 15, 92, 65]
  prompts = [shared + [35, 89], shared + [79, 32, 38, 46, 26], shared + [43]]
  sampling = SamplingConfig(max_new_tokens=9)
  batched = run_workers(engine, prompts, sampling)
  assert batched.prefix_tokens == shared
  for i, p in enumerate(prompts):
    alone = run_workers(engine, [p], sampling)
    assert alone.tokens[0] == batched.tokens[i]
    n = len(alone.tokens[0])
    for field in ("k", "v"):
      a = np.asarray(getattr(alone.cache, field))[:, 0, :n]
      b = np.asarray(getattr(batched.cache, field))[:, i, :n]
      assert np.abs(a - b).max() <= 1e-5
    np.testing.assert_array_equal(np.asarray(batched.cache.positions)[i, :n], len(p) + np.arange(n))


def test_generated_branch_cache_equals_encoded_outputs(tiny_checkpoint):
  """Branch caches kept from decoding equal the fixed-branch route on the same texts."""
  engine = Engine(_model(tiny_checkpoint))
  prompts = [[5, 6, 7, 8], [5, 6, 9]]
  gen = run_workers(engine, prompts, SamplingConfig(max_new_tokens=6))
  enc = encode_branches(engine, prompts, gen.tokens)
  for i, t in enumerate(gen.tokens):
    n = len(t)
    assert np.abs(np.asarray(gen.cache.k)[:, i, :n] - np.asarray(enc.cache.k)[:, i, :n]).max() <= 1e-5


def test_bad_inputs(tiny_checkpoint):
  engine = Engine(_model(tiny_checkpoint))
  with pytest.raises(ValueError, match="need at least one branch; got zero"):
    encode_branches(engine, [], [])
  with pytest.raises(ValueError, match="branch 1 is empty"):
    encode_branches(engine, [[1, 2], [1, 3]], [[4], []])
  ctx = engine.config.max_position_embeddings
  long = [[1]] * 3
  br = encode_branches(engine, long, [[2] * 200] * 3)
  with pytest.raises(ValueError, match=f"exceeds the {ctx}-token context"):
    cache_prefill(engine, br, [[1, 2, 3]], mode="sequential")
  cache_prefill(engine, br, [[1, 2, 3]], mode="shared_start")  # 200 + 3 fits
  with pytest.raises(ValueError, match="position mode 'diagonal' unknown"):
    cache_prefill(engine, br, [[1, 2, 3]], mode="diagonal")
  with pytest.raises(ValueError, match=r"mapper kind='mlp'; supported"):
    mappers.make("mlp", 2, 2, rngs=nnx.Rngs(0))


def test_mapper_checkpoint_round_trip_and_shape_check(tmp_path):
  from psynth.convert.mapper_io import load_mapper, save_mapper
  m = mappers.make("per_head", 4, 2, rngs=nnx.Rngs(0))
  m.w2.set_value(jax.random.normal(jax.random.key(1), m.w2.shape))
  save_mapper(m, tmp_path / "mapper")
  back = load_mapper(tmp_path / "mapper", 4, 2)
  for name in ("w1", "b1", "w2", "b2"):
    np.testing.assert_array_equal(np.asarray(getattr(back, name)[...]),
                                  np.asarray(getattr(m, name)[...]))
  with pytest.raises(ValueError, match="made for a model with 4 layers and 2 KV heads; this "
                                       "model has 30 layers and 3 KV heads"):
    load_mapper(tmp_path / "mapper", 30, 3)


def test_cache_path_answer_equals_generation_over_branch_then_prompt(tiny_checkpoint):
  """One branch, sequential, no adapter: the whole greedy answer, not just the first token."""
  from psynth.synthesis.synthesize import synthesize_from_branches
  model = _model(tiny_checkpoint)
  engine = Engine(model)
  rng = np.random.RandomState(5)
  branch, synth = rng.randint(0, 128, 11).tolist(), rng.randint(0, 128, 6).tolist()
  br = encode_branches(engine, [[]], [branch])
  got = synthesize_from_branches(engine, br, "naive", [synth], SamplingConfig(max_new_tokens=10),
                                 mode="sequential")[0].answer_ids
  ref = engine.generate([branch + synth], SamplingConfig(max_new_tokens=10)).tokens[0]
  assert got == ref


@pytest.mark.parametrize("mode", ["shared_start", "after_prefix", "sequential"])
def test_lazy_reencoding_equals_the_eager_cache(mode, tiny_checkpoint):
  """The first token's prefill re-encodes and maps each layer as it reads it (`cache.lazy`):
  its logits and the decode cache built after it equal the eager path's (reposition ->
  mapper -> merge -> extend -> forward), with a trained-looking mapper and LoRA on."""
  from psynth.cache.reencode import branch_starts
  model = add_lora(_model(tiny_checkpoint), rank=4, alpha=8, rngs=nnx.Rngs(0))
  for blk in model.layers:
    blk.attn.v.lora_b.set_value(jnp.full_like(blk.attn.v.lora_b[...], 0.03))
  cfg = model.config
  mapper = mappers.make("per_head", cfg.num_layers, cfg.num_kv_heads, rngs=nnx.Rngs(1))
  mapper.w2.set_value(jnp.full_like(mapper.w2[...], 0.3))
  rng = np.random.RandomState(7)
  shared = [1, 2, 3, 4]
  worker_prompts = [shared + rng.randint(0, 128, 2 + i).tolist() for i in range(3)]
  outputs = [rng.randint(0, 128, n).tolist() for n in (6, 11, 3)]  # ragged: padding slots
  synth = shared + rng.randint(0, 128, 5).tolist()
  engine = Engine(model)
  br = encode_branches(engine, worker_prompts, outputs)
  logits, build, next_pos = cache_prefill(engine, br, [synth], mode=mode,
                                          adapter=Adapter(mapper, lora=True), max_new_tokens=4)
  cache = build()

  # The eager path, by hand.
  P = len(shared) if mode == "after_prefix" else 0
  prompt = synth[P:]
  starts, start = branch_starts(np.asarray(br.lengths, np.int64), mode, P)
  inv_freq, _ = rope.inv_freq_and_scale(cfg.rope, cfg.head_dim)
  moved = ops.reposition(br.cache, jnp.asarray(starts, jnp.int32), jnp.asarray(inv_freq))
  coefs = mapper.coefficients(jnp.asarray(br.lengths)[None])[0]  # [N, L, 4, K]
  c = lambda i: coefs[:, :, i].transpose(1, 0, 2)[:, :, None, :, None]  # [L, N, 1, K, 1]
  k, v = mappers.calibrate(moved.k, moved.v, moved.valid, (c(0), c(1), c(2), c(3)))
  moved = ops.merge_rows(moved.replace(k=k, v=v), 3)
  if P:
    moved = ops.concat_slots(ops.truncate(br.prefix, P), moved)
  pos = np.arange(start, start + len(prompt), dtype=np.int32)[None]
  ref, ref_cache = forward(model, np.array([prompt], np.int32), pos,
                           ops.extend(moved, len(prompt)), lora=True)
  assert next_pos == start + len(prompt)
  assert np.abs(np.asarray(logits[0]) - np.asarray(ref[0, -1])).max() <= 1e-5
  # The decode cache holds the same valid slots in the same order, packed: the branches' 20
  # tokens in 32 slots (the power of two; not 3 x 16), then the prompt in its bucket, then room.
  got_valid, want_valid = np.asarray(cache.valid)[0], np.asarray(ref_cache.valid)[0]
  np.testing.assert_array_equal(np.asarray(cache.positions)[0][got_valid],
                                np.asarray(ref_cache.positions)[0][want_valid])
  for got, want in ((cache.k, ref_cache.k), (cache.v, ref_cache.v)):
    diff = np.asarray(got)[:, 0][:, got_valid] - np.asarray(want)[:, 0][:, want_valid]
    assert np.abs(diff).max() <= 1e-5
  pre = br.prefix.slots if P else 0  # the prefix's slots (its first P valid)
  assert got_valid[pre:pre + 20].all() and not got_valid[pre + 20:pre + 32].any()
  assert int(cache.end) == pre + 32 + bucket(len(prompt))
  assert not got_valid[int(cache.end):].any()


def test_grouped_encoding_equals_one_prefill(tiny_checkpoint, monkeypatch):
  """A batch over `GROUP_ROWS` rows is encoded in groups of similar output length, each in its
  own bucket, and put back in row order, each distinct worker prompt prefilled once: the same
  branch caches as one prefill of every row, and as each row encoded alone."""
  from psynth.synthesis import generate

  model = _model(tiny_checkpoint)
  engine = Engine(model)
  rng = np.random.RandomState(7)
  shared = rng.randint(0, 128, 6).tolist()
  distinct = [shared + rng.randint(0, 128, rng.randint(2, 9)).tolist() for _ in range(4)]
  prompts = [distinct[i] for i in (0, 1, 1, 2, 3, 3, 3)]  # examples' branches share a prompt
  outputs = [rng.randint(0, 128, n).tolist() for n in (3, 40, 5, 17, 2, 33, 9)]
  one = encode_branches(engine, prompts, outputs, min_slots=8)
  monkeypatch.setattr(generate, "GROUP_ROWS", 3)
  assert [len(g) for g in generate.length_groups([len(o) for o in outputs], 3)] == [3, 3, 1]
  grouped = encode_branches(engine, prompts, outputs, min_slots=8)
  assert grouped.cache.k.shape == one.cache.k.shape
  assert grouped.tokens == one.tokens and grouped.prefix_tokens == one.prefix_tokens == shared
  np.testing.assert_array_equal(np.asarray(grouped.cache.valid), np.asarray(one.cache.valid))
  valid = np.asarray(one.cache.valid)
  np.testing.assert_array_equal(np.asarray(grouped.cache.positions)[valid],
                                np.asarray(one.cache.positions)[valid])
  for a, b in [(grouped.cache.k, one.cache.k), (grouped.cache.v, one.cache.v)]:
    assert np.abs(np.asarray(a)[:, valid] - np.asarray(b)[:, valid]).max() <= 1e-5
  for i, (p, o) in enumerate(zip(prompts, outputs)):
    alone = encode_branches(engine, [p], [o])
    n = len(o)
    assert np.abs(np.asarray(alone.cache.k)[:, 0, :n] - np.asarray(grouped.cache.k)[:, i, :n]
                  ).max() <= 1e-5
    assert np.abs(np.asarray(alone.cache.v)[:, 0, :n] - np.asarray(grouped.cache.v)[:, i, :n]
                  ).max() <= 1e-5
