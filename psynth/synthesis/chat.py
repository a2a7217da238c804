"""Prompt text or chat messages -> token ids, with the checkpoint's own chat template."""

from __future__ import annotations

from typing import Any, Sequence

Messages = Sequence[dict[str, str]]


def encode(tokenizer: Any, prompt_or_messages: str | Messages) -> list[int]:
  """A string is one user turn; messages are used as given. Ends ready for the assistant."""
  messages = ([{"role": "user", "content": prompt_or_messages}]
              if isinstance(prompt_or_messages, str) else list(prompt_or_messages))
  for m in messages:
    if not isinstance(m, dict) or "role" not in m or "content" not in m:
      raise ValueError(f"chat message {m!r} must be a dict with 'role' and 'content'")
  if tokenizer.chat_template is None:
    # A base model without a template: plain concatenation is the honest fallback.
    return tokenizer("\n".join(m["content"] for m in messages))["input_ids"]
  ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                      return_dict=True)["input_ids"]
  return list(ids)
