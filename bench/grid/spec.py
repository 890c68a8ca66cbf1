"""The grid config: datasets x methods x budgets x method seeds, one YAML file.

Loading validates everything before any work starts: unknown keys anywhere (with the key path),
unknown method names (with close matches) and each method's own parameters (against its
``Params`` dataclass).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from bench.core.config import (
    PATH_FIELD,
    absolute_path,
    absolute_paths,
    ConfigError,
    check_keys,
    check_path_name,
    check_unique,
    from_dict,
    load_yaml,
    stable_hash_config,
    to_dict,
)
from bench.core.env import device_problem, device_syntax_problem
from bench.core.io import stable_hash
from bench.data.datasets import DatasetConfig
from bench.grid.search import TuningConfig
from bench.distill.experts import ExpertConfig
from bench.grid.budget_overrides import apply_grid_overrides, warn_dropped
from bench.methods_api import Method
from bench.models.image_encoders import encoder_fit_problem
from bench.models.student import ModelConfig
from bench.protocol.evaluate import curve_epochs
from bench.protocol.presets import ProtocolPreset, preset
from bench.protocol.proxy import ProxyConfig
from bench.protocol.train import TrainConfig
from bench.registry import UnknownMethodError, get_method


def check_seeds(seeds: Sequence[int], key: str) -> None:
    """At least one seed, each once, none negative (numpy's generators refuse negative seeds)."""
    if not seeds:
        raise ValueError(f"{key} must list at least one seed")
    negative = [s for s in seeds if s < 0]
    if negative:
        raise ValueError(f"{key}: seed {negative[0]} is negative; seeds must be >= 0")
    check_unique(seeds, key)


#: The grid model's own student: the one every set is distilled on and the headline reads.
SOURCE_STUDENT = "source"


@dataclass(frozen=True)
class EvalVariant:
    """One way a cell's set is evaluated: on which student (``source`` = the grid's model),
    under which protocol preset, with which recipe, learned-step-size rule and curve epochs."""

    student: str
    model: ModelConfig
    protocol: ProtocolPreset
    train: TrainConfig
    use_learned_lrs: bool
    curve_epochs: tuple[int, ...] | None

    @property
    def key(self) -> tuple[str, str]:
        return (self.student, self.protocol.name)


@dataclass(frozen=True)
class EvaluationConfig:
    """How a pair set is scored: a fresh student per seed, trained with ``train`` (budget-sized
    sets) or ``full_train`` (the whole training set), final-epoch recall on ``split``.
    The same seeds serve every method, so differences between methods are paired.

    eval_every: also measure recall on the val and test splits (only val when ``split`` is val)
    every that many epochs, from epoch 0 to the last (the curves of ``per_seed[i]["curve"]``
    that the ``val`` and ``test`` selection rules read; None = no curves). protocol: one preset
    name of :data:`bench.protocol.presets.PRESETS` or a list of them (each set is evaluated
    under each; the first is the headline); a preset overrides ``train`` for budget-sized sets.
    students: name -> model section: every set is also evaluated on each of these students
    (distilled on the grid's model; experts and proxies stay the grid model's), with the
    recipe's learning rates (learned step sizes belong to the architecture they were learned for)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    split: Literal["test", "val"] = "test"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=100, batch_size=100))
    full_train: TrainConfig = field(default_factory=TrainConfig)
    eval_every: int | None = field(default=None, metadata={"omit_if_default": True})
    protocol: str | tuple[str, ...] = field(default=("suite",), metadata={"omit_if_default": True})
    students: dict[str, ModelConfig] = field(default_factory=dict, metadata={"omit_if_default": True})

    def __post_init__(self) -> None:
        check_seeds(self.seeds, "seeds")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1 (or null for no curves), got {self.eval_every}")
        protocols = (self.protocol,) if isinstance(self.protocol, str) else tuple(self.protocol)
        object.__setattr__(self, "protocol", protocols)
        if not protocols:
            raise ValueError("protocol must name at least one preset")
        check_unique(protocols, "protocol")
        for name in protocols:
            preset(name)  # an unknown name is an error naming the known ones
        for name in self.students:
            check_path_name(name, "students")
        if SOURCE_STUDENT in self.students:
            raise ValueError(f"students: {SOURCE_STUDENT!r} is the grid's own model; give the other students "
                             "other names")

    @property
    def curve_splits(self) -> tuple[str, ...]:
        """The splits a curve measures: never test when the grid evaluates on val (tuning)."""
        return ("val", "test") if self.split == "test" else ("val",)

    def variants(self, model: ModelConfig, reference: bool) -> list[EvalVariant]:
        """Every (student, protocol) evaluation of a cell, the headline first. The whole-set
        reference trains with ``full_train`` on every student, under the first protocol only
        (presets describe how budget-sized sets are evaluated)."""
        students = {SOURCE_STUDENT: model, **self.students}
        protocols = [preset(p) for p in self.protocol][:1 if reference else None]
        out = []
        for student, student_model in students.items():
            for proto in protocols:
                train = self.full_train if reference else proto.train_config(self.train)
                every = proto.eval_every if proto.eval_every is not None else self.eval_every
                curve = None if every is None else curve_epochs(every, train.epochs,
                                                                proto.eval_start if proto.eval_every else 0)
                out.append(EvalVariant(student, student_model, proto, train,
                                       use_learned_lrs=student == SOURCE_STUDENT, curve_epochs=curve))
        return out


@dataclass(frozen=True)
class MethodSpec:
    """A method of the grid: its registered name, its parameters, and an optional label to
    run the same method twice with different parameters.

    ``budget_params`` holds per-budget overrides, merged over ``params`` for that budget only
    (the papers tune e.g. distillation learning rates per number of pairs)::

        {name: distill-joint, params: {lr_img: 1000}, budget_params: {1000: {lr_img: 5000}}}

    Every key must be one of the method's budgets and every merged set must be valid for the
    method (checked at load time); a cell's hash covers only its own budget's resolved params.
    ``budgets`` (default: all of the grid's) runs the method at some of the grid's budgets
    only, for a method too costly or not meant for the others; its missing cells show "–".
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    budget_params: dict[int, dict[str, Any]] = field(default_factory=dict, metadata={"omit_if_default": True})
    budgets: tuple[int, ...] | None = field(default=None, metadata={"omit_if_default": True})
    #: What the grid's ``tuning`` tries for this method (bench/grid/search.py): parameter ->
    #: values or a range, or ``default`` (the method's declared space); per budget in
    #: ``budget_search``. Never part of a cell's hash: the chosen values are.
    search: dict[str, Any] | str | None = field(default=None, metadata={"omit_if_default": True})
    budget_search: dict[int, dict[str, Any]] = field(default_factory=dict, metadata={"omit_if_default": True})

    def __post_init__(self) -> None:
        check_path_name(self.name, "name")
        if self.label is not None:
            check_path_name(self.label, "label")
        if isinstance(self.search, str) and self.search != "default":
            raise ValueError(f"search must be 'default' (the method's declared space) or a mapping of "
                             f"parameter -> values or range, got {self.search!r}")

    @staticmethod
    def coerce_config(value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def key(self) -> str:
        return self.label or self.name

    def budgets_of(self, grid_budgets: Sequence[int]) -> tuple[int, ...]:
        """The grid's budgets this method runs at, in the grid's order."""
        return tuple(b for b in grid_budgets if self.budgets is None or b in self.budgets)

    def params_for(self, budget: int | None) -> dict[str, Any]:
        """The raw (unvalidated) parameters of ``budget``: ``params`` updated by its override."""
        override = self.budget_params.get(budget) if budget is not None else None
        return {**self.params, **override} if override else dict(self.params)


@dataclass(frozen=True)
class RunnerConfig:
    """executor 'ray' (one task per cell; a local cluster unless ray_address is given) or
    'local' (in-process, sequential). Every task trains a student (expert, proxy, method +
    evaluation), so each asks for ``gpus_per_task`` GPUs (None = 1 when the cluster has GPUs,
    else 0) and ``cpus_per_task`` CPUs (also its torch thread count). ``max_concurrent`` caps
    the tasks in flight (None = as many as the cluster's GPUs, or CPUs, allow). max_retries
    counts retries of a task whose worker died or that raised. cell_timeout_s: a cell still
    running after this many seconds is stopped and recorded as failed (not retried) while the
    grid goes on; None = no limit. Under ``local`` the cell is interrupted in this process;
    under ``ray`` its task is cancelled and its worker process killed."""

    executor: Literal["ray", "local"] = "ray"
    ray_address: str | None = None
    max_retries: int = 1
    cpus_per_task: int = 1
    gpus_per_task: float | None = None
    max_concurrent: int | None = None
    cell_timeout_s: float | None = field(default=None, metadata={"omit_if_default": True})

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.cpus_per_task < 1:
            raise ValueError("max_retries must be >= 0 and cpus_per_task >= 1")
        if self.cell_timeout_s is not None and self.cell_timeout_s <= 0:
            raise ValueError(f"cell_timeout_s must be > 0 seconds (or null for no limit), got {self.cell_timeout_s}")
        if self.executor == "local" and self.ray_address:
            raise ValueError(f"ray_address {self.ray_address!r} is set but executor is 'local', which runs every "
                             "cell in this process and never joins a cluster; use executor 'ray' "
                             "(--executor ray) or drop the address")
        if self.gpus_per_task is not None and self.gpus_per_task < 0:
            raise ValueError("gpus_per_task must be >= 0")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")


@dataclass(frozen=True)
class GridConfig:
    name: str
    datasets: tuple[DatasetConfig, ...] = (DatasetConfig(),)
    methods: tuple[MethodSpec, ...] = (MethodSpec("random"),)
    budgets: tuple[int, ...] = (100,)
    method_seeds: tuple[int, ...] = (0,)
    include_full: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    device: str = "auto"
    #: Choose every searched method's parameters on val before its test cells (bench/grid/tuning.py).
    tuning: TuningConfig | None = field(default=None, metadata={"omit_if_default": True})
    results_dir: str = field(default="results/quickstart", metadata=PATH_FIELD)
    cache_dir: str = field(default="results/.cache", metadata=PATH_FIELD)

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("datasets must list at least one dataset")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
        keys = [m.key for m in self.methods]
        if len(set(keys)) != len(keys):
            raise ValueError(f"method names/labels must be unique (use 'label:'), got {keys}")
        if "full" in keys:
            raise ValueError("'full' is added by include_full; do not list it under methods")
        if not self.budgets or any(b < 2 for b in self.budgets):
            raise ValueError(f"budgets must be integers >= 2 (a set of one pair has no negatives to train "
                             f"against), got {list(self.budgets)}")
        for key in ("results_dir", "cache_dir"):
            if not getattr(self, key).strip():
                raise ValueError(f"{key} is empty; name a directory (e.g. results/{self.name})")
        check_unique(self.budgets, "budgets")
        check_seeds(self.method_seeds, "method_seeds")
        problem = device_syntax_problem(self.device)
        if problem:
            raise ValueError(problem)
        for i, spec in enumerate(self.methods):
            if spec.budgets is not None:
                check_unique(spec.budgets, f"methods[{i}] ({spec.key}).budgets")
                outside = [b for b in spec.budgets if b not in self.budgets]
                if outside or not spec.budgets:
                    raise ValueError(f"methods[{i}] ({spec.key}).budgets {list(spec.budgets)}: each must be one of the "
                                     f"grid's budgets {list(self.budgets)}, and at least one given")
            runs = spec.budgets_of(self.budgets)
            for key in ("budget_params", "budget_search"):
                unknown = sorted(set(getattr(spec, key)) - set(runs))
                if unknown:
                    raise ValueError(
                        f"methods[{i}] ({spec.key}).{key}.{unknown[0]}: budget {unknown[0]} is not in "
                        f"budgets {list(runs)} (an override for a budget the method does not run at; "
                        "remove it, or add the budget)")

    @property
    def config_hash(self) -> str:
        return stable_hash_config(self)

    def dataset(self, name: str) -> DatasetConfig:
        return next(d for d in self.datasets if d.name == name)

    def method(self, key: str) -> MethodSpec:
        if key == "full":
            return MethodSpec("full")
        return next(m for m in self.methods if m.key == key)


@dataclass(frozen=True)
class Cell:
    """One unit of work and one result record."""

    dataset: str
    method: str
    budget: int | None
    method_seed: int | None

    @property
    def id(self) -> str:
        if self.budget is None:
            return f"{self.dataset}__{self.method}"
        return f"{self.dataset}__{self.method}__b{self.budget}__s{self.method_seed}"


def plan_cells(grid: GridConfig) -> list[Cell]:
    cells = []
    for data in grid.datasets:
        if grid.include_full:
            cells.append(Cell(data.name, "full", None, None))
        for method in grid.methods:
            for budget in method.budgets_of(grid.budgets):
                for seed in grid.method_seeds:
                    cells.append(Cell(data.name, method.key, budget, seed))
    return cells


@dataclass(frozen=True)
class ResolvedCell:
    """A cell with what the grid and the registry make of it, derived once
    (:func:`resolve_cell`): its method's class, that method's validated parameters for the
    cell's budget, and the cell's hash."""

    cell: Cell
    method_cls: type[Method]
    params: Any
    hash: str
    #: What determines the cell's *set* (the method's output), not its evaluation: the cell's
    #: hash less the evaluation recipe, the entry's label and the parameters that change no
    #: result (``Method.set_params``: checkpoints, snapshots), with the full-data recipe that
    #: trains the proxy and the experts when the method reads them. Cells that share it make
    #: the same set (a tuning trial and the test cell of its values; a grid whose evaluation
    #: changed): bench/grid/set_index.py.
    set_hash: str = ""


def resolve_cell(grid: GridConfig, cell: Cell) -> ResolvedCell:
    """The cell's method class, parameters and hash.

    The hash covers everything that determines the cell's result, and nothing else; a record
    with another hash is stale. The method enters with its *resolved* parameters for the
    cell's own budget (``params`` merged with its ``budget_params`` entry, then every default
    filled in), so a changed default re-runs the cells that rely on it, while editing one
    budget's override leaves the other budgets' records valid; with the method's ``version``
    when it is not 1 (a method bumps it when its code changes what it produces). The proxy and
    expert recipes enter only for a method that reads them."""
    spec = grid.method(cell.method)
    cls = get_method(spec.name)
    params = method_params(spec, f"method {spec.key}", cell.budget)
    method: dict[str, Any] = {"name": spec.name, "params": to_dict(params), "label": spec.label}
    if cls.version != 1:
        method["version"] = cls.version
    digest = cls.input_digest(params)
    if digest is not None:  # the content of the files the method reads, not only their paths
        method["inputs"] = digest
    parts: dict[str, Any] = {
        "dataset": to_dict(grid.dataset(cell.dataset)), "model": to_dict(grid.model),
        "evaluation": to_dict(grid.evaluation), "method": method, "budget": cell.budget, "seed": cell.method_seed,
    }
    if cls.uses_proxy:
        parts["proxy"] = to_dict(grid.proxy)
    if cls.uses_experts:
        parts["experts"] = to_dict(grid.experts)
    made_by = {k: v for k, v in parts.items() if k != "evaluation"}
    made_by["method"] = {**{k: v for k, v in method.items() if k != "label"}, "params": to_dict(cls.set_params(params))}
    if cls.uses_proxy or cls.uses_experts:
        made_by["full_train"] = to_dict(grid.evaluation.full_train)
    return ResolvedCell(cell, cls, params, stable_hash(parts), stable_hash(made_by))


def cell_hash(grid: GridConfig, cell: Cell) -> str:
    """The cell's hash (:func:`resolve_cell`)."""
    return resolve_cell(grid, cell).hash


def method_params(spec: MethodSpec, where: str, budget: int | None = None) -> Any:
    """Validate a method spec against the registry: the method exists, its params fit.

    With ``budget``, the params of that budget (``params`` merged with its ``budget_params``
    entry); an error in the override names the override's path, e.g.
    ``methods[4] (distill-joint).budget_params.1000.lr_imgg``."""
    try:
        cls = get_method(spec.name)
    except UnknownMethodError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    override = spec.budget_params.get(budget) if budget is not None else None
    if not override:
        return from_dict(cls.Params, spec.params, f"{where}.params")
    override_where = f"{where}.budget_params.{budget}"
    check_keys(cls.Params, spec.params, f"{where}.params")
    check_keys(cls.Params, override, override_where)
    return from_dict(cls.Params, spec.params_for(budget), override_where)


def validate_methods(grid: GridConfig) -> None:
    """Every method exists and its params fit, for every budget of the grid (each budget's
    override merged over ``params``), and fit the grid's experts; every search space is valid
    (bench/grid/search.py), and the expert epochs its largest values would read exist."""
    from bench.grid.search import Choice, method_space

    for i, spec in enumerate(grid.methods):
        where = f"methods[{i}] ({spec.key})"
        if any(not spec.budget_params.get(b) for b in spec.budgets_of(grid.budgets)):  # some budget runs `params` as is
            check_grid_reads(grid, spec, method_params(spec, where), f"{where}.params")
        for budget in sorted(spec.budget_params):
            check_grid_reads(grid, spec, method_params(spec, where, budget), f"{where}.budget_params.{budget}")
        cls = get_method(spec.name)
        for budget in spec.budgets_of(grid.budgets):
            space = method_space(spec, cls, budget, where)
            if not space or not cls.uses_experts:
                continue
            for name, dim in space.items():  # each value alone; combinations are checked per trial
                if spec.search == "default" and name not in spec.budget_search.get(budget, {}):
                    continue  # a declared space is fitted per trial (tuning leaves such trials out)
                for value in (dim.values if isinstance(dim, Choice) else (dim.low, dim.high)):
                    params = from_dict(cls.Params, {**spec.params_for(budget), name: value})
                    check_expert_epochs(grid, spec, params, f"{where}.search.{name} = {value!r} (at {budget} pairs)")


def check_grid_reads(grid: GridConfig, spec: MethodSpec, params: Any, where: str) -> None:
    """The shared artifacts a method's parameters read exist in the grid: the expert epochs
    (:func:`check_expert_epochs`) and what the proxy records (``Method.proxy_problem``)."""
    check_expert_epochs(grid, spec, params, where)
    cls = get_method(spec.name)
    problem = cls.file_problem(params)
    if problem:
        raise ConfigError(f"{where}.{problem}")
    problem = cls.proxy_problem(params, grid.proxy) if cls.uses_proxy else None
    if problem:
        raise ConfigError(f"{where}.{problem}")


def check_expert_epochs(grid: GridConfig, spec: MethodSpec, params: Any, where: str) -> None:
    """A method reading expert trajectories reads no epoch beyond those ``experts`` records."""
    cls = get_method(spec.name)
    needed = cls.expert_epochs_needed(params) if cls.uses_experts else 0
    if needed > grid.experts.epochs:
        raise ConfigError(f"{where}: these parameters read {needed} expert epochs "
                          f"({cls.expert_epochs_reason(params)}), but experts.epochs is {grid.experts.epochs}; "
                          f"raise experts.epochs to {needed} or lower those parameters")


def grid_models(grid: GridConfig) -> dict[str, ModelConfig]:
    """Every model a cell trains, by the config key that defines it: ``model`` (the grid's
    student) and each ``evaluation.students.<name>``; each gets the grid model's checks."""
    return {"model": grid.model, **{f"evaluation.students.{name}": m for name, m in grid.evaluation.students.items()}}


def check_model_fits(grid: GridConfig) -> None:
    """Every image tower (the grid model's and each evaluation student's) takes every
    dataset's resolution (e.g. a ConvNet of depth 3 needs a multiple of 8 pixels), checked
    from the config alone."""
    for key, model in grid_models(grid).items():
        for i, data in enumerate(grid.datasets):
            problem = encoder_fit_problem(model.image_encoder, data.resolution)
            if problem:
                whose = "the model" if key == "model" else f"{key} (an evaluation student)"
                raise ConfigError(f"datasets[{i}] ({data.name}): {problem}; {whose} cannot take these images")


def check_device_available(grid: GridConfig) -> None:
    """The grid's device exists on this machine. Skipped when the grid joins a running Ray
    cluster (``runner.ray_address``): its workers may have GPUs the driver lacks."""
    if grid.runner.executor == "ray" and grid.runner.ray_address:
        return
    problem = device_problem(grid.device)
    if problem:
        raise ConfigError(problem)


def check_tuning(grid: GridConfig) -> None:
    """A ``grid`` sampler needs lists, not ranges (the spaces themselves are checked by
    :func:`validate_methods`)."""
    from bench.grid.search import grid_points, method_space

    if grid.tuning is None or grid.tuning.sampler != "grid":
        return
    for i, spec in enumerate(grid.methods):
        for budget in spec.budgets_of(grid.budgets):
            space = method_space(spec, get_method(spec.name), budget, f"methods[{i}] ({spec.key})")
            if space:
                grid_points(space, f"methods[{i}] ({spec.key}).search (at {budget} pairs, tuning.sampler grid)")


def build_grid(data: dict[str, Any]) -> GridConfig:
    """A validated grid from raw config data: types and keys, method params, the device; every
    path field absolute (against the working directory)."""
    grid = from_dict(GridConfig, data)
    validate_methods(grid)
    check_model_fits(grid)
    check_device_available(grid)
    check_tuning(grid)
    # Relative paths mean "from where the command runs": made absolute here, in the driver, so
    # that Ray workers (whose working directory is another) read and write the same places.
    return absolute_method_paths(absolute_paths(grid, Path.cwd()), Path.cwd())


def absolute_method_paths(grid: GridConfig, base: Path) -> GridConfig:
    """``grid`` with every method parameter that its ``Params`` marks :data:`PATH_FIELD` (e.g.
    from-file's ``path``) absolute against ``base``, in ``params`` and in each budget's
    override: method parameters are raw mappings in the config, which
    :func:`bench.core.config.absolute_paths` cannot tell from other strings."""
    import dataclasses

    specs = []
    for spec in grid.methods:
        cls = get_method(spec.name)
        keys = {f.name for f in dataclasses.fields(cls.Params) if f.metadata.get("path")} \
            if dataclasses.is_dataclass(cls.Params) else set()

        def fix(params: dict[str, Any]) -> dict[str, Any]:
            return {k: absolute_path(v, base) if k in keys and isinstance(v, (str, Path)) else v
                    for k, v in params.items()}

        specs.append(replace(spec, params=fix(spec.params),
                             budget_params={b: fix(p) for b, p in spec.budget_params.items()}) if keys else spec)
    return replace(grid, methods=tuple(specs))


def _blame(raw: dict[str, Any], sources: list[tuple[str, str]], message: str, path: str | Path,
           build: Callable[[dict[str, Any]], Any]) -> str:
    """Where an error of the merged config comes from: the config file when the file alone
    already fails that way, else the label of the first source (override, label) that brings
    it in."""
    for k in range(len(sources) + 1):
        try:
            build(apply_grid_overrides(raw, [o for o, _ in sources[:k]])[0])
        except ConfigError as exc:
            if str(exc) == message:
                return str(path) if k == 0 else sources[k - 1][1]
    return "--set overrides"


def build_blamed(raw: dict[str, Any], sources: list[tuple[str, str]], path: str | Path,
                 build: Callable[[dict[str, Any]], Any]) -> Any:
    """``build(raw with every source's override applied)``; a :class:`ConfigError` it raises
    is prefixed with where the bad value comes from: ``<config file>`` or the label of the
    source (``--set 'key=value'``, ``--ray-address '...'``). ``sources``: (override, label)
    in the order they apply. Commands that derive their grid from the config (``tune``) pass
    their own ``build``."""
    overrides = [o for o, _ in sources]
    data, dropped = apply_grid_overrides(raw, overrides)  # its errors name the override
    try:
        built = build(data)
    except ConfigError as exc:
        raise ConfigError(f"{_blame(raw, sources, str(exc), path, build)}: {exc}") from None
    warn_dropped(dropped, overrides)  # --set budgets=[...] dropped the entries of removed budgets
    return built


def set_sources(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """``--set`` overrides as (override, label) sources of :func:`build_blamed`."""
    return [(o, f"--set {o!r}") for o in overrides]


def load_grid(path: str | Path, overrides: list[str] | None = None, raw: dict[str, Any] | None = None,
              flags: Sequence[tuple[str, str]] = ()) -> GridConfig:
    """Read, override and validate a grid. Every :class:`ConfigError` says where the bad
    value comes from: ``<config file>: ...`` or ``--set 'key=value': ...``. ``raw``: the file's
    data when the caller read it already (:func:`bench.core.config.load_yaml`). ``flags``:
    (label, override) for values other command-line options bring in, applied after the
    ``--set`` overrides and named by their label, e.g. ``("--ray-address '10.0.0.1:6379'",
    "runner.ray_address='10.0.0.1:6379'")``."""
    raw = load_yaml(path) if raw is None else raw  # its errors name the file
    sources = set_sources(overrides or []) + [(override, label) for label, override in flags]
    return build_blamed(raw, sources, path, build_grid)
