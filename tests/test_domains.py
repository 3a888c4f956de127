"""Every config field's declared domain is enforced before any process starts, in one sentence.

The walking test reads the probes (values just outside each domain) from the declarations in
nanodist.config.schema, not from a list kept here, so a field added tomorrow is walked tomorrow.
The full walk validates in-process (milliseconds a value); one probe of each kind of domain goes
through `python launch.py` to hold the user-facing contract: exit code 2, one line, no traceback.
"""

from __future__ import annotations

import copy

import pytest
from conftest import NANO, ROOT, launch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError
from test_config_errors import assert_one_sentence_error

from nanodist.config import Config, ConfigError, register_configs, validate
from nanodist.config.domains import Flag, Number, declared_fields, parent_of, show
from nanodist.config.overrides import check_override_types

register_configs()

# The config every probe starts from: it passes `validate`, so the probe's field is the only misfit.
BASE = [*NANO, "train=smoke"]


def composed(*overrides: str, base: tuple = tuple(BASE)):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*base, *overrides])


def kind_of(domain) -> str:
    """Number, Choice, Text, Flag, Items; a Number bounded by a sibling field is a "relation"."""
    if isinstance(domain, Number) and any(isinstance(b, str) for b in (domain.low, domain.high)):
        return "relation"
    return type(domain).__name__


def probes(cfg) -> list[tuple[str, str, object]]:
    """(key, kind, value) for every value outside every field's declared domain."""
    found = []
    for key, domain in declared_fields(Config):
        siblings, _ = parent_of(cfg, key)
        found += [(key, kind_of(domain), value) for value in domain.outside(siblings)]
    return found


def with_value(cfg, key: str, value):
    """A copy of `cfg` with `key` set as an override would set it (OmegaConf's types apply)."""
    cfg = copy.deepcopy(cfg)
    OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def walk(cfg) -> tuple[list, list, list]:
    """Try every probe: (refused by the domain checker, refused by OmegaConf's types, accepted)."""
    by_domain, by_type, accepted = [], [], []
    for key, kind, value in probes(cfg):
        try:
            bad = with_value(cfg, key, value)
        except ValidationError:
            by_type.append((key, kind, value))
            continue
        try:
            validate(bad)
        except ConfigError as err:
            by_domain.append((key, kind, OmegaConf.select(bad, key), str(err)))
        else:
            accepted.append((key, value))
    return by_domain, by_type, accepted


@pytest.fixture(scope="module")
def base_cfg():
    cfg = composed()
    validate(cfg)
    return cfg


@pytest.fixture(scope="module")
def walked(base_cfg):
    return walk(base_cfg)


def test_every_field_declares_a_domain():
    missing = [key for key, domain in declared_fields(Config) if domain is None]
    assert not missing, f"fields without a declared domain (see nanodist.config.domains): {missing}"


def test_every_value_outside_a_domain_is_refused_naming_field_value_and_what_is_allowed(base_cfg, walked):
    by_domain, by_type, accepted = walked
    fields = {key for key, _, _ in probes(base_cfg)}
    print(f"walked {len(list(declared_fields(Config)))} fields; {len(fields)} have values outside their domain: "
          f"tried {len(by_domain) + len(by_type)} values, {len(by_domain)} refused by the domain checker, "
          f"{len(by_type)} (null where not allowed) by OmegaConf's types")
    assert not accepted, f"values outside their declared domain that validate accepted: {accepted}"
    for key, _, value, message in by_domain:
        assert message.startswith(f"{key}={show(value)} "), message
        assert "; use " in message or "; give " in message, f"says what is allowed: {message}"
        assert message.endswith(".") and "\n" not in message and message.count(". ") == 0, f"one sentence: {message}"


def test_every_field_with_a_bounded_domain_is_probed(base_cfg):
    """Only a nullable flag admits every value of its type: every other field gets probes."""
    probed = {key for key, _, _ in probes(base_cfg)}
    unprobed = [(key, domain) for key, domain in declared_fields(Config) if key not in probed]
    assert all(isinstance(domain, Flag) and domain.nullable for _, domain in unprobed), unprobed


def wrong_type(domain) -> list:
    """A value of the wrong type for the field, where its type can be wrong (text takes anything)."""
    return {"Number": ["abc"], "relation": ["abc"], "Flag": ["maybe"], "Items": ["[[1]]"]}.get(kind_of(domain), [])


def test_launchers_type_check_refuses_each_wrong_type_and_null_in_one_sentence(walked):
    _, by_type, _ = walked
    typed = [(key, "null") for key, _, _ in by_type]
    typed += [(key, value) for key, domain in declared_fields(Config) for value in wrong_type(domain)]
    print(f"tried {len(typed)} wrong-typed values (null where not allowed, or of another type) on the command line")
    for key, value in typed:
        with pytest.raises(ConfigError) as err:
            check_override_types([f"{key}={value}"])
        message = str(err.value)
        assert message.startswith(f"{key}=") and (" is not an" in message or " is not a" in message or "true" in message), message
        assert message.endswith(".") and message.count(". ") == 0, message


def test_launcher_refuses_one_probe_of_each_kind_with_exit_code_2(walked, tmp_path):
    by_domain, _, _ = walked
    first_of_kind = {}
    for key, kind, value, message in by_domain:
        first_of_kind.setdefault(kind, (key, value, message))
    assert set(first_of_kind) == {"Number", "relation", "Choice", "Text", "Items"}
    cases = [(key, show(value) or "''", message.removesuffix(".")) for key, value, message in first_of_kind.values()]
    cases += [("train.max_steps", "null", "train.max_steps=null is not allowed"), ("model.dropout", "abc", "is not a number")]
    for i, (key, typed, words) in enumerate(cases):
        result = launch(tmp_path / str(i), *BASE, f"{key}={typed}", check=False, timeout=120)
        assert_one_sentence_error(result, words)
    print(f"{len(cases)} probes through launch.py: exit code 2, one line each")


# (override on top of BASE, the whole sentence validate gives)
MESSAGES = [
    ("optim.min_lr=0.01", "optim.min_lr=0.01 must be at most optim.lr=0.001; use a number in [0, optim.lr=0.001]."),
    ("optim.beta2=1.0", "optim.beta2=1.0 must be below 1; use a number in [0, 1)."),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1 is negative; use a number >= 0."),
    ("optim.schedule=linear", "optim.schedule=linear is not an lr schedule; use cosine or constant."),
    ("train.eval_iters=0", "train.eval_iters=0 must be at least 1; use an integer >= 1."),
    ("mesh.dp_shard=-2", "mesh.dp_shard=-2 must be at least 1; use an integer >= 1 or -1."),
    ("model.vocab_size=0", "model.vocab_size=0 must be at least 1; use an integer >= 1 or null."),
    ("train.device=tpu", "train.device=tpu is not a device; use auto, cpu or cuda."),
    ("parallel.fsdp.param_dtype=float16", "parallel.fsdp.param_dtype=float16 is not a dtype FSDP casts to; "
                                          "use bfloat16, float32 or null."),
    ("train.profile_steps=[2,-1]", "train.profile_steps=[2, -1] holds -1, which is negative; "
                                   "give a list whose items are each an integer >= 0."),
    ("model.name=''", "model.name= is empty; give the model's name."),
    ("optim.lr=inf", "optim.lr=inf is not a finite number; use a number > 0."),
]


@pytest.mark.parametrize("override,sentence", MESSAGES, ids=[o.split("=")[0] for o, _ in MESSAGES])
def test_the_sentence_for_each_kind_of_misfit(override, sentence):
    with pytest.raises(ConfigError) as err:
        validate(composed(override))
    assert str(err.value) == sentence


def group_options() -> list[list[str]]:
    """Every option of every config group conf/ ships (mesh=ranksN over a strategy that has dims)."""
    options = []
    for folder in sorted(p for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name not in ("hydra", "experiment")):
        for option in sorted(folder.glob("*.yaml")):
            extra = ["parallel=fsdp"] if option.stem.startswith("ranks") else []
            options.append([f"{folder.name}={option.stem}", *extra])
    return options


def test_every_shipped_option_is_inside_the_declared_domains():
    from nanodist.config.validate import validate_domains

    for overrides in group_options():
        validate_domains(composed(*overrides, base=()))


@pytest.mark.parametrize("argv", [
    ["model=nano", "parallel=ddp,fsdp"],  # group choices
    ["+train.extra=abc", "~logger.group"],  # additions and deletions
    ["train.max_stepz=abc"],  # not a schema field: Hydra names the mistyped key
    ["-m", "train.seed=1,2", "train.max_steps=range(1,3)"],  # good sweeps
    ["hydra.run.dir=/tmp/x", "--cfg", "job"],  # Hydra's own keys and flags
    ["train.seed=[1,2"],  # not parseable: Hydra says where
])
def test_type_check_leaves_to_hydra_what_is_not_a_schema_value(argv):
    check_override_types(argv)


def test_type_check_looks_at_each_choice_of_a_sweep():
    with pytest.raises(ConfigError, match=r"^train.seed=abc is not an integer; use an integer in \[0, 4294967295\]\.$"):
        check_override_types(["-m", "train.seed=1,abc"])
