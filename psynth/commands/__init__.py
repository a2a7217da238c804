"""One small module per command of `python -m psynth COMMAND`; each defines its own flags and
`main(cfg, args)`. Everything else a command needs is in the config (`--config.SECTION.FIELD`).
"""

COMMANDS = {
    "synthesize": "fan out, then text vs cache synthesis (the built-in example by default)",
    "generate": "answer one prompt",
    "bench": "bench prefill|ttft|throughput|precision: vs HF, batched, bf16 vs fp32",
    "data": "build training examples, then generate their branches once",
    "eval": "evaluate methods on benchmarks: accuracy, CI, paired differences, TTFT",
    "train": "train the synthesizer LoRA and cache mapper",
    "export": "export an adapter: merged HF / PEFT / reference release / psynth dir",
    "compile": "compile train step, prefill, decode for a TPU topology: memory per chip",
}
