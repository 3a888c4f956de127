"""What values each config field may take, declared beside the field in schema.py, and the one
checker that holds a composed config to those declarations.

OmegaConf already refuses a wrong type at composition; what it cannot know is that a layer count
must be positive, a probability below 1, an lr schedule one of two names, or min_lr no larger than
lr. A hand-written check per field fell behind the schema as it grew, so every field's domain is
data here: the checker (`domain_errors`, raised by validate) and the test that walks the schema with values outside
each domain (`Domain.outside`) both read the same declarations, and a new field cannot go unchecked.

No torch at import: this runs in the launcher before any rank exists.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Union

from omegaconf import MISSING, DictConfig, ListConfig
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

# The key of a field's metadata that holds its domain.
DOMAIN = "domain"

# A bound is a number, or the name of a sibling field (optim.min_lr is bounded above by "lr").
Bound = Union[int, float, str, None]


class Siblings:
    """The config node holding a field, and its dotted prefix: what a bound naming a sibling reads."""

    def __init__(self, node: Any, prefix: str):
        self.node, self.prefix = node, prefix

    def __getitem__(self, name: str) -> Any:
        return self.node[name]

    def key(self, name: str) -> str:
        return self.prefix + name


def show(value: Any) -> str:
    """A value as the user would type it on the command line (None as null, lists in brackets)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


@dataclass(frozen=True)
class Number:
    """An int or float in a range; `also` lists special values outside it (mesh.dp_shard=-1: infer)."""

    integer: bool
    low: Bound = None
    high: Bound = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    also: tuple = ()

    def bound(self, bound: Bound, siblings: Siblings) -> Optional[float]:
        return siblings[bound] if isinstance(bound, str) else bound

    def bound_text(self, bound: Bound, siblings: Siblings) -> str:
        """A bound as the sentence shows it: 1, or optim.lr=0.001 when it is a sibling's value."""
        return f"{siblings.key(bound)}={siblings[bound]}" if isinstance(bound, str) else str(bound)

    def allowed(self, siblings: Siblings) -> str:
        kind = "an integer" if self.integer else "a number"
        low, high = self.bound(self.low, siblings), self.bound(self.high, siblings)
        low_text, high_text = self.bound_text(self.low, siblings), self.bound_text(self.high, siblings)
        if low is not None and high is not None:
            text = f"{kind} in {'(' if self.low_open else '['}{low_text}, {high_text}{')' if self.high_open else ']'}"
        elif low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {low_text}"
        elif high is not None:
            text = f"{kind} {'<' if self.high_open else '<='} {high_text}"
        else:
            text = kind
        extras = [show(v) for v in self.also] + (["null"] if self.nullable else [])
        return text + "".join(f" or {e}" for e in extras)

    def problem(self, value: Any, siblings: Siblings) -> Optional[str]:
        """What is wrong with `value`, as the middle of the error sentence, or None when it fits."""
        if (value is None and self.nullable) or value in self.also:
            return None
        if value is None:
            return "is not allowed"
        low, high = self.bound(self.low, siblings), self.bound(self.high, siblings)
        if isinstance(value, float) and not math.isfinite(value):
            return "is not a finite number"
        if low is not None and (value < low or (self.low_open and value == low)):
            if low == 0:
                return "must be positive" if self.low_open else "is negative"
            return f"must be {'above' if self.low_open else 'at least'} {low}"
        if high is not None and (value > high or (self.high_open and value == high)):
            return f"must be {'below' if self.high_open else 'at most'} {self.bound_text(self.high, siblings)}"
        return None

    def outside(self, siblings: Siblings) -> list:
        """Values just past each bound (and null when it is not allowed): the walking test's probes."""
        step = 1 if self.integer else 0.5
        low, high = self.bound(self.low, siblings), self.bound(self.high, siblings)
        probes = []
        if low is not None:
            probes.append(low if self.low_open else low - step)
        if high is not None:
            probes.append(high if self.high_open else high + step)
        if not self.integer:
            probes.append(float("nan"))
        return [p for p in probes if p not in self.also] + ([] if self.nullable else [None])


@dataclass(frozen=True)
class Choice:
    """One of a few names; `noun` says what they are ("an lr schedule", "a device")."""

    options: tuple
    noun: str
    nullable: bool = False

    def allowed(self, siblings: Siblings) -> str:
        names = [*self.options, *(["null"] if self.nullable else [])]
        return f"use {', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else f"use {names[0]}"

    def problem(self, value: Any, siblings: Siblings) -> Optional[str]:
        if (value is None and self.nullable) or value in self.options:
            return None
        return f"is not {self.noun}"

    def outside(self, siblings: Siblings) -> list:
        return ["nosuch", *([] if self.nullable else [None])]


@dataclass(frozen=True)
class Text:
    """Free text (a name, a path, a prompt); only emptiness (and null) can be wrong."""

    what: str
    nullable: bool = False
    may_be_empty: bool = False

    def allowed(self, siblings: Siblings) -> str:
        return f"give {self.what}" + (" or null" if self.nullable else "")

    def problem(self, value: Any, siblings: Siblings) -> Optional[str]:
        if value is None:
            return None if self.nullable else "is not allowed"
        return None if value != "" or self.may_be_empty else "is empty"

    def outside(self, siblings: Siblings) -> list:
        return ([] if self.may_be_empty else [""]) + ([] if self.nullable else [None])


@dataclass(frozen=True)
class Flag:
    """true or false (or null, where null means "decide for me"); OmegaConf refuses anything else."""

    nullable: bool = False

    def allowed(self, siblings: Siblings) -> str:
        return "use true, false or null" if self.nullable else "use true or false"

    def problem(self, value: Any, siblings: Siblings) -> Optional[str]:
        return None if value is not None or self.nullable else "is not allowed"

    def outside(self, siblings: Siblings) -> list:
        return [] if self.nullable else [None]


@dataclass(frozen=True)
class Items:
    """A list whose every item has the domain `item`."""

    item: Union[Number, Choice, Text]

    def allowed(self, siblings: Siblings) -> str:
        each = self.item.allowed(siblings)
        if each.startswith("give "):  # Text: "give a strategy's name"
            return f"give a list whose items are each {each[5:]}"
        return f"give a list whose items are each {'one of ' + each[4:] if each.startswith('use ') else each}"

    def problem(self, value: Any, siblings: Siblings) -> Optional[str]:
        bad = [v for v in value if self.item.problem(v, siblings) is not None]
        return f"holds {show(bad[0])}, which {self.item.problem(bad[0], siblings)}" if bad else None

    def outside(self, siblings: Siblings) -> list:
        return [[v] for v in self.item.outside(siblings) if v is not None]


Domain = Union[Number, Choice, Text, Flag, Items]


def integer(default: Any = MISSING, low: Bound = None, high: Bound = None, **options: Any) -> Any:
    """An int field in [low, high] (open ends and extra values by `options`, see `Number`)."""
    return field(default=default, metadata={DOMAIN: Number(True, low, high, **options)})


def number(default: Any = MISSING, low: Bound = None, high: Bound = None, **options: Any) -> Any:
    """A float field in [low, high] (open ends by `options`, see `Number`)."""
    return field(default=default, metadata={DOMAIN: Number(False, low, high, **options)})


def choice(default: Any, options: tuple, noun: str, nullable: bool = False) -> Any:
    return field(default=default, metadata={DOMAIN: Choice(tuple(options), noun, nullable)})


def text(default: Any, what: str, nullable: bool = False, may_be_empty: bool = False) -> Any:
    return field(default=default, metadata={DOMAIN: Text(what, nullable, may_be_empty)})


def flag(default: Any, nullable: bool = False) -> Any:
    return field(default=default, metadata={DOMAIN: Flag(nullable)})


def items(item: Union[Number, Choice, Text]) -> Any:
    """A list field (empty by default) whose items have the domain `item`."""
    return field(default_factory=list, metadata={DOMAIN: Items(item)})


def section(schema: type) -> Any:
    """A nested group of fields (ModelConfig inside Config); its fields carry their own domains."""
    return field(default_factory=schema)


def declared_fields(schema: type, prefix: str = "") -> Iterator[tuple[str, Optional[Domain]]]:
    """(dotted key, domain or None) for every leaf field under `schema`."""
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(f.default_factory):
            yield from declared_fields(f.default_factory, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f.metadata.get(DOMAIN)


def parent_of(cfg: Any, key: str) -> tuple[Siblings, str]:
    """The fields beside dotted `key` in `cfg`, and the key's last part."""
    *path, name = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    return Siblings(node, "".join(part + "." for part in path)), name


def domain_error(cfg: Any, key: str, domain: Domain) -> Optional[str]:
    """The one-sentence error for field `key` of `cfg` (None when its value is in its domain)."""
    node, name = parent_of(cfg, key)
    try:
        value = node[name]
    except InterpolationResolutionError:
        return None  # a value only Hydra's runtime knows (the run dir): Hydra's business
    except MissingMandatoryValue:
        return f"{key} has no value; {domain.allowed(node)}."
    if isinstance(value, (DictConfig, ListConfig)) and not isinstance(domain, Items):
        return None
    problem = domain.problem(value, node)
    return None if problem is None else sentence(key, value, problem, domain.allowed(node))


def sentence(key: str, value: Any, problem: str, allowed: str) -> str:
    """The error's one sentence: "train.eval_iters=0 must be at least 1; use an integer >= 1."."""
    return f"{key}={show(value)} {problem}; {allowed if allowed.startswith(('use', 'give')) else 'use ' + allowed}."


def domain_errors(cfg: Any, schema: type) -> Iterator[str]:
    """The one-sentence errors of every field of `cfg` whose value is outside its declared domain."""
    for key, domain in declared_fields(schema):
        error = domain_error(cfg, key, domain) if domain is not None else None
        if error is not None:
            yield error
