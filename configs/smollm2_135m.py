"""Default config: the embedded SmolLM2-135M-Instruct, runs on a 2-core laptop.

    python -m psynth generate --config=configs/smollm2_135m.py --config.sampling.temperature=0.7
    python -m psynth train --config=configs/smollm2_135m.py --config.workdir=runs/smollm2
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # JAX's persistent compilation cache for the command line: "" = $PSYNTH_CACHE/xla (else
  # ~/.cache/psynth/xla), a directory, or "none" (off). A rerun compiles nothing.
  c.compile_cache = ""
  c.workdir = "runs/smollm2_135m"  # train: TensorBoard events, checkpoints/, adapter/
  # "smollm2-135m-instruct" (embedded, no hub), an HF checkpoint dir, a .gguf file or a hub id.
  # scan_layers: run the layers as one lax.scan (XLA compiles one layer, not all of them:
  # large models, accelerators; on this CPU the unrolled loop is as fast). Training only.
  c.model = ml_collections.ConfigDict(dict(name="smollm2-135m-instruct", dtype="float32",
                                           scan_layers=False))
  # Attention implementation (psynth/model/attention.py): "blocked" (CPU), "pallas_tpu"
  # (TPU), "dot_product" (GPU), "reference".
  c.model.attention = "blocked"
  c.sampling = ml_collections.ConfigDict(
      dict(max_new_tokens=128, temperature=0.0, top_p=1.0, seed=0))
  c.synthesis = ml_collections.ConfigDict(dict(
      mode="shared_start", worker_max_new_tokens=64, max_new_tokens=48))
  # The synthesizer adapter (reference: rank 16, alpha 32 on q/k/v/o) and the cache mapper.
  c.lora = ml_collections.ConfigDict(dict(rank=16, alpha=32.0, targets=("q", "k", "v", "o")))
  c.mapper = ml_collections.ConfigDict(dict(kind="affine"))  # affine | per_head | none
  # Training data (`python -m psynth data`): examples built from the benchmark files
  # (`builders`, () = psynth.data.build.DEFAULT_BUILDERS), then the worker branches of the
  # generated kinds decoded once. Training reads out_dir/{train,val}.branches.jsonl, cutting
  # branches and targets to max_branch_tokens / max_target_tokens. Evidence branches of at
  # most 64 words (~90 tokens: all of a branch fits max_branch_tokens, so no needle is cut
  # off) keep a 2-core CPU's training step short; eval reads the same.
  c.data = ml_collections.ConfigDict(dict(
      data_dir="",  # "" -> $PSYNTH_DATA, else ../shared/data next to the repository
      out_dir="runs/data/smollm2_135m", builders=(), num_branches=3, seed=0,
      limit_per_source=200,  # records per builder; 0 = all
      val_fraction=0.1, max_branch_words=64, distill_fraction=0.25,
      # Of the fixed-branch examples, copied as notes a worker wrote after reading each branch
      # inside a longer document (the caches of a real fan-out; `psynth.data.documented`).
      documented_fraction=0.5,
      generate=True,  # False: build the example files only
      worker_max_new_tokens=48, max_new_tokens=32,  # the generated kinds' workers / answers
      batch_examples=4, max_branch_tokens=112, max_target_tokens=48))
  c.train = ml_collections.ConfigDict(dict(
      steps=300, batch_size=4, grad_accum=1, lr=1e-4, warmup_steps=20, final_lr_fraction=0.1,
      weight_decay=0.0, grad_clip=1.0, kl_weight=0.0, eval_every=50, save_every=50,
      keep_checkpoints=3,
      # At every eval: the val loss on `val_examples` val examples spread over the file, and
      # the val answer accuracy (greedy synthesis, `val_batch` examples at a time) on
      # `val_accuracy_examples` of them; the best adapter is kept by accuracy.
      val_examples=256, val_accuracy_examples=64, val_batch=16,
      # remat: with model.scan_layers, recompute each layer's activations in the backward
      # pass instead of keeping them (large models on accelerators).
      remat=False,
      # Start from a trained adapter (a shipped name such as "default", or an adapter
      # directory) instead of the identity; its LoRA settings and mapper kind must match
      # lora.* and mapper.kind. A checkpoint in workdir still takes precedence (resume).
      init_adapter=""))
  # Evaluation (`python -m psynth eval`): which tasks and methods (comma-separated), examples
  # per task (0 = all), where predictions go (a rerun resumes), shards (-1: the JAX process
  # count / index); branches per task, how sampled workers sample, and the word budget of an
  # evidence chunk; lengths and mode come from `synthesis`. held_out_from: a train.jsonl whose
  # source questions every task leaves out (set it to the adapter's training file when
  # evaluating method psynth; "" keeps every example). merge_only: only merge the shards.
  c.eval = ml_collections.ConfigDict(dict(
      tasks="arc_easy,hotpotqa", methods="single,text,naive", limit=0, output_dir="runs/eval",
      num_shards=-1, shard_id=-1, gaia_dir="", merge_only=False,
      num_branches=3, worker_temperature=0.7, worker_top_p=0.95, max_branch_words=64,
      held_out_from="", batch=16))
  # `python -m psynth compile`: the train step (train.*, mesh.*; rows of these lengths), the
  # synthesizer's cache prefill and a decode step (synth_batch examples of `branches`
  # branches of branch_tokens, on a synth_data x synth_tensor mesh, -1: the chips left)
  # compiled for a TPU topology (v5p-64, v5e-8, v5e:2x2, ...) from shapes only. hbm_gib: a
  # budget below the chip's HBM (0: the chip's); json: also write the report there.
  c.compile = ml_collections.ConfigDict(dict(
      topology="v5e-4", functions="train,prefill,decode", hbm_gib=0.0, json="",
      prefix_tokens=64, worker_row_tokens=160, synth_row_tokens=128, branches=3,
      synth_batch=1, branch_tokens=64, synth_prompt_tokens=64, new_tokens=48,
      synth_data=1, synth_tensor=-1))
  # Devices: data-parallel x fsdp (x tensor); data=-1 takes every device left over.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Several processes: a coordinator "host:port" with their count and this one's id, or
  # auto=True on Cloud TPU pods / SLURM (JAX finds the cluster). One process needs nothing.
  c.dist = ml_collections.ConfigDict(dict(coordinator="", num_processes=1, process_id=0,
                                          auto=False))
  c.bench = ml_collections.ConfigDict(dict(
      prefill_lengths=(256, 1024, 2048), runs=5, decode_prompt=256, decode_tokens=64,
      ttft_branches=(2, 4, 8), ttft_branch_tokens=(128, 512, 1024),
      # bench throughput: facts-task fan-outs, one at a time vs `throughput_batch` per call.
      throughput_examples=64, throughput_branches=3, throughput_batch=64,
      throughput_answer_tokens=48, throughput_runs=2,
      # bench precision: bfloat16 vs float32 on this many facts-task examples.
      precision_examples=64))
  return c
