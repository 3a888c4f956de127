"""The command line's key=value overrides held to the schema's types before Hydra composes them.

Hydra refuses a wrong type itself (`train.max_steps=abc`, `train.max_steps=null`), but in a
multi-line report with exit code 1; every other bad value is one sentence and exit code 2. So
the launcher checks each override of a schema field here first, with the same sentence shape as
the domain checker: the field, the value given, what is allowed. It reads the command line with
Hydra's own argument and override parsers (hydra-core is pinned), so it sees what Hydra will.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, Sequence

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override, OverrideType
from hydra.errors import OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from nanodist.config.domains import Choice, Domain, Flag, Items, Number, declared_fields, parent_of, sentence
from nanodist.config.schema import Config, ConfigError


def expected_type(domain: Domain) -> str:
    """What a value of the field must be, in words, for the sentence."""
    if isinstance(domain, Number):
        return "an integer" if domain.integer else "a number"
    if isinstance(domain, Flag):
        return "true or false"
    if isinstance(domain, Items):
        return f"a list of {expected_type(domain.item).removeprefix('an ').removeprefix('a ')}s"
    return "a name" if isinstance(domain, Choice) else "text"


def given_values(override: Override) -> Iterator[Any]:
    """The values an override sets: one, or each choice of a sweep (`train.seed=1,2`)."""
    value = override.value()
    if isinstance(value, ChoiceSweep):
        yield from value.list
    elif not override.is_sweep_override():
        yield value


def check_override_types(argv: Sequence[str]) -> None:
    """Raise ConfigError for the first override of a schema field whose value its type refuses.

    `argv` is launch.py's command line; group choices (`model=nano`), additions (`+key=v`),
    deletions and keys outside the schema (Hydra reports a mistyped key) are left to Hydra.
    """
    try:
        overrides = OverridesParser.create().parse_overrides(get_args_parser().parse_args(list(argv)).overrides)
    except OverrideParseException:
        return  # not an override at all (`key=[1,2`): Hydra says where it fails to parse
    domains = dict(declared_fields(Config))
    defaults = OmegaConf.structured(Config)
    for override in overrides:
        key = override.key_or_group
        if override.type != OverrideType.CHANGE or override.package is not None or key not in domains:
            continue
        for value in given_values(override):
            try:
                OmegaConf.update(copy.deepcopy(defaults), key, value, merge=False)
            except ValidationError:
                problem = "is not allowed" if value is None else f"is not {expected_type(domains[key])}"
                allowed = domains[key].allowed(parent_of(defaults, key)[0])
                raise ConfigError(sentence(key, value, problem, allowed)) from None
