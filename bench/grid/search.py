"""Search spaces as data: what a method entry's ``search`` / ``budget_search`` say to try.

A space maps a parameter of the method to a list of values (``lr_img: [100, 1000]``), a range
(``{low: 0.001, high: 0.1, log: true}``, ``{low: 1, high: 8, int: true}``) or factors of the
entry's own value (``{times: [0.3, 1, 3]}``: the values around the recipe, which is how the
declared default spaces carry over from one dataset's recipe to another's). ``search: default``
takes the method's own declared space (``Method.default_search`` and, per budget,
``Method.default_budget_search``); ``budget_search: {B: {...}}`` replaces or adds parameters at
budget ``B``, as ``budget_params`` does for values. Every space is validated when the grid
loads: each name is a parameter of the method and every listed value and range end, merged
over the method's parameters for that budget, is a valid parameter set. A method's declared
space is fitted to the entry instead: values that are invalid with the entry's other
parameters (a ``min_start_epoch`` not below its ``max_start_epoch``, say) are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from bench.core.config import ConfigError, check_keys, field_values, from_dict

if TYPE_CHECKING:
    from bench.grid.spec import MethodSpec
    from bench.methods_api import Method

#: ``search: default``: the method's declared space.
DEFAULT = "default"
_RANGE_KEYS = ("low", "high", "log", "int")


@dataclass(frozen=True)
class Choice:
    """A parameter tried at each of ``values`` (any YAML values: numbers, strings, mappings)."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class Range:
    """A numeric parameter drawn from [low, high], uniformly or (``log``) log-uniformly, as an
    integer when ``int``. A ``grid`` sampler cannot enumerate a range."""

    low: float
    high: float
    log: bool = False
    int: bool = False


@dataclass(frozen=True)
class TuningConfig:
    """trials: method runs per (dataset, method, budget), the same for every method (the equal
    budget); sampler: grid | random | tpe; seed: the sampler's; eval_seeds: the evaluation seeds
    of a trial (None: the grid's ``evaluation.seeds``); batch: trials proposed at once by tpe
    (each batch runs in parallel); audit: also evaluate every trial on test, after the choice."""

    trials: int = 8
    sampler: Literal["grid", "random", "tpe"] = "random"
    seed: int = 0
    eval_seeds: tuple[int, ...] | None = None
    batch: int = 4
    audit: bool = False

    def __post_init__(self) -> None:
        if self.trials < 1 or self.batch < 1:
            raise ValueError(f"trials and batch must be >= 1, got trials {self.trials}, batch {self.batch}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.eval_seeds is not None and (not self.eval_seeds or min(self.eval_seeds) < 0
                                            or len(set(self.eval_seeds)) != len(self.eval_seeds)):
            raise ValueError(f"eval_seeds must list distinct seeds >= 0, got {list(self.eval_seeds)}")



Dimension = Choice | Range
Space = dict[str, Dimension]


def parse_dimension(value: Any, where: str, base: Any = None) -> Dimension:
    """One parameter's dimension; ``base``: the entry's value of it (for ``times``)."""
    if isinstance(value, dict) and "times" in value:
        if set(value) != {"times"} or not isinstance(value["times"], list) or not value["times"]:
            raise ConfigError(f"{where}: 'times' takes a non-empty list of factors and nothing else")
        if isinstance(base, bool) or not isinstance(base, (int, float)):
            raise ConfigError(f"{where}: 'times' needs a numeric value to multiply, the entry's is {base!r}")
        out: list[Any] = []
        for factor in value["times"]:
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
                raise ConfigError(f"{where}.times: factors must be positive numbers, got {factor!r}")
            v = max(1, round(base * factor)) if isinstance(base, int) else float(f"{base * factor:.6g}")
            if v not in out:
                out.append(v)
        return Choice(tuple(out))
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: an empty list of values (give at least one)")
        seen: list[Any] = []
        for v in value:
            if v in seen:
                raise ConfigError(f"{where}: the value {v!r} is listed twice (it would run the same trial twice)")
            seen.append(v)
        return Choice(tuple(value))
    if isinstance(value, dict):
        unknown = [k for k in value if k not in _RANGE_KEYS]
        if unknown:
            raise ConfigError(f"{where}: unknown range key {unknown[0]!r} (a range has {', '.join(_RANGE_KEYS)})")
        if "low" not in value or "high" not in value:
            raise ConfigError(f"{where}: a range needs both 'low' and 'high'")
        low, high = value["low"], value["high"]
        is_int, log = value.get("int", False), value.get("log", False)
        for name, flag in (("int", is_int), ("log", log)):
            if not isinstance(flag, bool):
                raise ConfigError(f"{where}.{name}: expected true/false, got {flag!r}")
        for name, end in (("low", low), ("high", high)):
            if isinstance(end, bool) or not isinstance(end, (int, float)) or not math.isfinite(end):
                raise ConfigError(f"{where}.{name}: expected a finite number, got {end!r}")
            if is_int and not float(end).is_integer():
                raise ConfigError(f"{where}.{name}: an int range needs whole numbers, got {end!r}")
        if not low < high:
            raise ConfigError(f"{where}: low ({low}) must be below high ({high}); a single value is a list: [{low}]")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
        return Range(float(low), float(high), log, is_int) if not is_int else Range(int(low), int(high), log, True)
    raise ConfigError(f"{where}: expected a list of values or a range {{low, high, log, int}}, got {value!r}")


def parse_space(raw: Any, where: str, base: dict[str, Any] | None = None) -> Space:
    """``base``: the entry's resolved parameters (the values ``times`` multiplies)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of parameter -> values or range, got {raw!r}")
    base = base or {}
    return {str(name): parse_dimension(value, f"{where}.{name}", base.get(name)) for name, value in raw.items()}


def declared_space(cls: type[Method], budget: int | None) -> dict[str, Any]:
    """The method's own space at ``budget`` (raw data)."""
    space = dict(cls.default_search)
    if budget is not None:
        space.update(cls.default_budget_search.get(budget, {}))
    return space


def raw_space(spec: MethodSpec, cls: type[Method], budget: int | None) -> dict[str, Any] | None:
    """The raw space of ``spec`` at ``budget``: None when the entry searches nothing (a fixed
    recipe); ``{}`` when it searches a method without parameters (one trial)."""
    if spec.search is None and not spec.budget_search:
        return None
    if spec.search == DEFAULT:
        space = declared_space(cls, budget)
    elif isinstance(spec.search, dict):
        space = dict(spec.search)
    else:
        space = {}
    if budget is not None and budget in spec.budget_search:
        space.update(spec.budget_search[budget])
    return space


def method_space(spec: MethodSpec, cls: type[Method], budget: int | None, where: str) -> Space | None:
    """The validated space of ``spec`` at ``budget`` (None: a fixed recipe). Each name must be a
    parameter of the method, and each listed value and each range end, merged over the entry's
    parameters for that budget, a valid parameter set."""
    raw = raw_space(spec, cls, budget)
    if raw is None:
        return None
    declared = spec.search == DEFAULT
    origin = "search (the method's default space)" if declared else "search"
    if budget is not None and budget in spec.budget_search:
        origin += f" / budget_search.{budget}"
    base = spec.params_for(budget)
    check_keys(cls.Params, {str(k): None for k in raw}, f"{where}.{origin}")
    resolved = field_values(from_dict(cls.Params, base, f"{where}.params"))
    space = parse_space(raw, f"{where}.{origin}", resolved)
    fitted: Space = {}
    for name, dim in space.items():
        values = dim.values if isinstance(dim, Choice) else (dim.low, dim.high)
        kept = []
        for value in values:
            try:
                from_dict(cls.Params, {**base, name: value}, f"{where}.{origin}.{name}")
                kept.append(value)
            except ConfigError as exc:
                user_written = not declared or (budget is not None and name in spec.budget_search.get(budget, {}))
                if user_written or isinstance(dim, Range):
                    raise ConfigError(f"{where}.{origin}.{name}: the value {value!r} is not valid here: "
                                      f"{str(exc).split(': ', 1)[-1]}") from None
        if isinstance(dim, Range):
            fitted[name] = dim
        elif kept:
            fitted[name] = Choice(tuple(kept))
    return fitted


def grid_points(space: Space, where: str) -> list[dict[str, Any]]:
    """Every combination of a space of lists (the ``grid`` sampler), in a fixed order."""
    import itertools

    ranges = [n for n, d in space.items() if isinstance(d, Range)]
    if ranges:
        raise ConfigError(f"{where}.{ranges[0]}: the grid sampler needs a list of values, not a range "
                          "(use sampler random or tpe, or list the values)")
    names = list(space)
    return [dict(zip(names, combo)) for combo in itertools.product(*(space[n].values for n in names))]  # type: ignore[union-attr]
