"""Procedural tasks where real data is thin: made-up entities, so no model knows the answer.

Each generator maps (index, n branches, rng) to one Example with an exact target:
    chain     aggregation: a 2- or 3-hop fact chain, one hop per branch, distractor facts around
    arith     aggregation: counts in different branches; sum, difference or the largest
    infer     context: n responses to one hidden request; the target is the request
"""

from __future__ import annotations

import random

from psynth.data.example import Example

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "gl", "kr", "pl", "st", "th", "tr", "sk", "qu"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ei"]
_CODAS = ["", "n", "r", "l", "s", "th", "x", "m", "nd", "rk"]


def made_up_name(rng: random.Random, syllables: int = 2) -> str:
  return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                 for _ in range(syllables)).capitalize()


def _names(rng: random.Random, k: int) -> list[str]:
  out: list[str] = []
  while len(out) < k:
    name = made_up_name(rng, rng.choice([2, 2, 3]))
    if name not in out:
      out.append(name)
  return out


def _example(kind: str, family: str, index: int, question: str, inputs: list[str], target: str,
             **meta) -> Example:
  group = f"procedural/{family}/{index:05d}"
  return Example(f"{group}/{kind}", kind, "procedural", question, inputs, target,
                 meta=dict(group=group, family=family, **meta))


# hop templates: (fact about x -> y, question phrase for "x's y")
_CHAINS = [
    [("{0} was born in the town of {1}.", "town"), ("The town of {1} lies in the province of {2}.",
                                                    "province"),
     ("The province of {2} is governed by {3}.", "governor")],
    [("{0} works for a company called {1}.", "company"),
     ("The company {1} has its headquarters in {2}.", "city"),
     ("The city of {2} is famous for its {3} festival.", "festival")],
]
_CHAIN_QUESTIONS = {
    2: ["In which province was {0} born?", "In which city is the company {0} works for based?"],
    3: ["Who governs the province where {0} was born?",
        "Which festival is the city of {0}'s employer famous for?"],
}


def chain(index: int, n: int, rng: random.Random) -> Example:
  """Hop i of the chain sits in its own branch; every branch also holds one distractor fact."""
  if n < 2:
    raise ValueError(f"chain tasks need n_branches >= 2; got {n}")
  t = rng.randrange(len(_CHAINS))
  hops = 3 if n >= 3 and rng.random() < 0.5 else 2
  ents = _names(rng, hops + 1 + 2 * n)
  facts = [_CHAINS[t][h][0].format(*ents[:hops + 1]) for h in range(hops)]
  answer = ents[hops]
  branches = rng.sample(range(n), hops)
  inputs: list[list[str]] = [[] for _ in range(n)]
  for f, b in zip(facts, branches):
    inputs[b].append(f)
  for b in range(n):  # a distractor of the same shape, about other entities
    h = rng.randrange(len(_CHAINS[t]))
    d = ents[hops + 1 + 2 * b: hops + 3 + 2 * b]
    inputs[b].insert(rng.randrange(len(inputs[b]) + 1),
                     _CHAINS[t][h][0].format(*([d[0]] * h + d + [d[1]] * 3)[:4]))
  question = _CHAIN_QUESTIONS[hops][t].format(ents[0])
  return _example("aggregation", "chain", index, question, [" ".join(x) for x in inputs], answer,
                  fact_branches=branches)


_THINGS = [("depot", "crates"), ("farm", "sheep"), ("library", "books"), ("harbour", "boats"),
           ("school", "pupils")]


def arith(index: int, n: int, rng: random.Random) -> Example:
  """One count per branch (n places); the question combines two counts from different branches."""
  if n < 2:
    raise ValueError(f"arith tasks need n_branches >= 2; got {n}")
  place, unit = rng.choice(_THINGS)
  names = _names(rng, n)
  counts = rng.sample(range(2, 100), n)
  inputs = [f"The {place} of {nm} has {c} {unit}." for nm, c in zip(names, counts)]
  a, b = rng.sample(range(n), 2)
  op = rng.choice(["sum", "difference", "largest"])
  if op == "sum":
    q = f"How many {unit} do the {place}s of {names[a]} and {names[b]} have together?"
    target, used = str(counts[a] + counts[b]), [a, b]
  elif op == "difference":
    hi, lo = (a, b) if counts[a] > counts[b] else (b, a)
    q = f"How many more {unit} does the {place} of {names[hi]} have than the one of {names[lo]}?"
    target, used = str(counts[hi] - counts[lo]), [hi, lo]
  else:
    q = f"Which {place} has the most {unit}: " + ", ".join(names) + "?"
    top = max(range(n), key=counts.__getitem__)
    target, used = names[top], list(range(n))
  return _example("aggregation", "arith", index, q, inputs, target, op=op, used_branches=used)


# hidden request -> responses (each a template over the same fillers)
_REQUESTS = [
    ("What is {a} plus {b}?", ["{a} plus {b} equals {s}.", "Adding {b} to {a} gives {s}.",
                               "The sum of {a} and {b} is {s}.", "{a} + {b} = {s}."]),
    ("Where does {p} live?", ["{p} lives in {t}.", "{t} is where {p} lives.",
                              "{p}'s home is in {t}.", "{p} has a house in {t}."]),
    ("What is {p}'s favourite colour?", ["{p} likes {c} best.", "{p}'s favourite colour is {c}.",
                                        "{c}, according to {p}.", "{p} prefers {c}."]),
    ("How many legs does a {x} have?", ["A {x} has {k} legs.", "{k} legs.",
                                        "Every {x} walks on {k} legs.", "It has {k} legs."]),
]
_COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]


def infer(index: int, n: int, rng: random.Random) -> Example:
  """Branch i holds one response to the hidden request; the synthesizer names the request."""
  t = rng.randrange(len(_REQUESTS))
  a, b = rng.randint(2, 60), rng.randint(2, 60)
  p, town, creature = _names(rng, 3)
  fill = dict(a=a, b=b, s=a + b, p=p, t=town, c=rng.choice(_COLOURS), x=creature.lower(),
              k=rng.choice([2, 4, 6, 8, 10]))
  request, responses = _REQUESTS[t]
  picks = rng.sample(responses, min(n, len(responses)))
  picks += [rng.choice(responses) for _ in range(n - len(picks))]
  inputs = [f"Response: {r.format(**fill)}" for r in picks]
  return _example("context", "infer", index,
                  "Several assistants answered the same request; each saw one answer. What was "
                  "the request? Reply with the request only.", inputs, request.format(**fill))


GENERATORS = {"chain": chain, "arith": arith, "infer": infer}
