"""psynth: Parallel-Synthesis in JAX/Flax.

    import psynth
    loaded = psynth.load()                      # the embedded SmolLM2-135M-Instruct
    print(psynth.generate(loaded, "What is the capital of France?"))
    trained = psynth.load(adapter="default")    # + the shipped synthesizer (LoRA + mapper)
    r = psynth.synthesize(trained, "question?", ["doc 1", "doc 2"], method="psynth")
    rs = psynth.synthesize_batch(trained, ["q1?", "q2?"], [["doc a"], ["doc b", "doc c"]])
    logits, cache = psynth.forward(loaded.model, tokens, positions, cache)
"""

from __future__ import annotations

from psynth.model.kv_cache import KVCache
from psynth.loading import Loaded, load
from psynth.model.config import ModelConfig
from psynth.model.transformer import Transformer, forward, init_cache
from psynth.synthesis.generate import SamplingConfig
from psynth.synthesis.adapter import Adapter
from psynth.synthesis.pipeline import (SynthesisResult, fan_out, fan_out_batch, generate,
                                       synthesize, synthesize_batch)


__all__ = ["Adapter", "KVCache", "Loaded", "ModelConfig", "SamplingConfig", "SynthesisResult",
           "Transformer", "fan_out", "fan_out_batch", "forward", "generate", "init_cache", "load",
           "synthesize", "synthesize_batch"]
