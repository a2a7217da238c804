"""Made-up facts to retrieve: an institution with a made-up name ("the Brailith archive") and
attribute facts about it written as plain sentences, the question asking for some of them and
the answer sentence. No model can know them, so an answer has to come from the evidence.

    p = profile(rng)                          # the institution and a value for every attribute
    fact(p, "town")      # "The Brailith archive keeps its maps in the town of Tornak."
    question(p, ["town", "founder"])
    # "In which town does the Brailith archive keep its maps, and who founded it?"
    answer(p, ["town", "founder"])
    # "The Brailith archive keeps its maps in Tornak and was founded by Sela Vorn."

The answer is always one short sentence ending with a period: the institution, then each asked
attribute's predicate with its value, so it names every value the question asks for.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Sequence

from psynth.data.procedural import made_up_name

KINDS = ("archive", "observatory", "orchestra", "museum", "library", "guild", "brewery",
         "theatre", "shipyard", "choir", "academy", "rowing club", "chess club", "printing house",
         "weather station", "botanical garden")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey",
           "pink", "brown", "teal")
INSTRUMENTS = ("harp", "cello", "oboe", "trumpet", "flute", "violin", "accordion", "bagpipes",
               "banjo", "clarinet", "tuba", "xylophone")
ANIMALS = ("badger", "heron", "fox", "lynx", "tortoise", "falcon", "beaver", "stag", "raven",
           "pelican", "walrus", "hedgehog", "gecko", "moth")
LANGUAGES = ("Danish", "Welsh", "Basque", "Finnish", "Latin", "Esperanto", "Portuguese",
             "Icelandic", "Hungarian", "Polish", "Dutch", "Greek")
COMPANY_ENDINGS = ("Works", "Brothers", "Trading", "Paper Mills", "Supply", "and Daughters")


def _person(rng: random.Random) -> str:
  return f"{made_up_name(rng)} {made_up_name(rng, rng.choice([2, 3]))}"


@dataclasses.dataclass(frozen=True)
class Attribute:
  """`{E}`/`{e}`: the institution (capitalised / not); `{poss}`: its possessive; `{v}`: value."""
  fact: str  # the sentence in a branch
  ask: str  # the question clause (also with "it" / "its" when a second clause follows)
  predicate: str  # what the answer sentence says about the institution
  value: Callable[[random.Random], str]


ATTRIBUTES: dict[str, Attribute] = {
    "town": Attribute("{E} keeps its maps in the town of {v}.",
                      "in which town does {e} keep its maps", "keeps its maps in {v}",
                      made_up_name),
    "founder": Attribute("{E} was founded by {v}.", "who founded {e}", "was founded by {v}",
                         _person),
    "year": Attribute("{E} opened its doors in {v}.", "in which year did {e} open its doors",
                      "opened its doors in {v}", lambda rng: str(rng.randint(1700, 1995))),
    "colour": Attribute("The front door of {e} is painted {v}.", "what colour is {poss} front door",
                        "has a front door painted {v}", lambda rng: rng.choice(COLOURS)),
    "river": Attribute("{E} stands on the banks of the {v} river.", "on which river does {e} stand",
                       "stands on the {v} river", made_up_name),
    "company": Attribute("{E} buys all its paper from a company called {v}.",
                         "which company sells {e} its paper", "buys its paper from {v}",
                         lambda rng: f"{made_up_name(rng)} {rng.choice(COMPANY_ENDINGS)}"),
    "instrument": Attribute("{E} opens every meeting with a tune on the {v}.",
                            "which instrument opens {poss} meetings",
                            "opens its meetings with the {v}", lambda rng: rng.choice(INSTRUMENTS)),
    "director": Attribute("{E} is run by a director named {v}.", "who runs {e}", "is run by {v}",
                          _person),
    "members": Attribute("{E} has exactly {v} members.", "how many members does {e} have",
                         "has {v} members", lambda rng: str(rng.randint(12, 980))),
    "mascot": Attribute("The mascot of {e} is a {v}.", "which animal is {poss} mascot",
                        "has a {v} as its mascot", lambda rng: rng.choice(ANIMALS)),
    "language": Attribute("{E} prints its newsletter in {v}.",
                          "in which language does {e} print its newsletter",
                          "prints its newsletter in {v}", lambda rng: rng.choice(LANGUAGES)),
    "city": Attribute("{E} was built in the city of {v}.", "in which city was {e} built",
                      "was built in {v}", made_up_name),
}


@dataclasses.dataclass(frozen=True)
class Profile:
  name: str  # "the Brailith archive"
  kind: str  # "archive"
  values: dict[str, str]  # attribute -> value, every attribute in ATTRIBUTES


def _cap(s: str) -> str:
  return s[:1].upper() + s[1:]


def profile(rng: random.Random, kind: str | None = None) -> Profile:
  """A made-up institution (of `kind`, else a random one) with a value for every attribute."""
  kind = kind or rng.choice(KINDS)
  name = f"the {made_up_name(rng, rng.choice([2, 2, 3]))} {kind}"
  return Profile(name, kind, {k: a.value(rng) for k, a in ATTRIBUTES.items()})


def fact(p: Profile, attribute: str) -> str:
  a = ATTRIBUTES[attribute]
  return a.fact.format(E=_cap(p.name), e=p.name, v=p.values[attribute])


def question(p: Profile, asked: Sequence[str]) -> str:
  """One question for the `asked` attributes: the first clause names the institution, later
  ones say "it" ("..., who founded it, and what colour is its front door?")."""
  clauses = [ATTRIBUTES[k].ask.format(e=p.name if i == 0 else "it",
                                      poss=f"{p.name}'s" if i == 0 else "its")
             for i, k in enumerate(asked)]
  joined = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + ", and " + clauses[-1]
  return _cap(joined) + "?"


def answer(p: Profile, asked: Sequence[str]) -> str:
  preds = [ATTRIBUTES[k].predicate.format(v=p.values[k]) for k in asked]
  joined = preds[0] if len(preds) == 1 else ", ".join(preds[:-1]) + " and " + preds[-1]
  return f"{_cap(p.name)} {joined}."
