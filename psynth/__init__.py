"""psynth: Parallel-Synthesis in JAX/Flax.

    import psynth
    loaded = psynth.load()                      # the embedded SmolLM2-135M-Instruct
    print(psynth.generate(loaded, "What is the capital of France?"))
    trained = psynth.load(adapter="default")    # + the shipped synthesizer (LoRA + mapper)
    r = psynth.synthesize(trained, "question?", ["doc 1", "doc 2"], method="cache")
    rs = psynth.synthesize_batch(trained, ["q1?", "q2?"], [["doc a"], ["doc b", "doc c"]])
    logits, cache = psynth.forward(loaded.model, tokens, positions, cache)
"""

from __future__ import annotations

from psynth.cache.kv_cache import KVCache
from psynth.loading import Loaded, load
from psynth.model.config import ModelConfig
from psynth.model.transformer import Transformer, forward, init_cache
from psynth.synthesis import chat
from psynth.synthesis.generate import SamplingConfig
from psynth.model.lora import Adapter
from psynth.synthesis.pipeline import (SynthesisResult, fan_out, fan_out_batch, synthesize,
                                       synthesize_batch)


def generate(loaded: Loaded, prompt_or_messages, *, max_new_tokens: int = 128,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> str:
  """Answers one prompt (a string or chat messages) and returns the text of the answer."""
  sampling = SamplingConfig(max_new_tokens, temperature, top_p, seed)
  ids = chat.encode(loaded.tokenizer, prompt_or_messages)
  out = loaded.engine.generate([ids], sampling, loaded.eos_ids)
  return loaded.tokenizer.decode(out.tokens[0], skip_special_tokens=True)


__all__ = ["Adapter", "KVCache", "Loaded", "ModelConfig", "SamplingConfig", "SynthesisResult",
           "Transformer", "fan_out", "fan_out_batch", "forward", "generate", "init_cache", "load",
           "synthesize", "synthesize_batch"]
