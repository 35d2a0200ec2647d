"""The zoo registry (`zoo.yaml` next to this file): every checkpoint towerzoo converts or ships, as data.

`load_registry()` reads and checks it; `get_entry(name)` looks one entry up; `towerzoo list` prints it. Conversion
(`towerzoo convert --entry`), cards (`towerzoo card`) and the tests iterate over it.

The file has four sections: `datasets` (key → display `name`, optional `hub_id` and `aliases`: the names data
files give it), `papers` (key → `title`, `arxiv`, optional `code`, `bibtex`), `label_sets` (key → `names` in index
order, or `count` and `source`), and `entries` (name → fields below). Top-level keys starting with `_` are YAML
anchors only.

An entry's name is its target repo name on the Hub (the card's title and model-index name). Entry fields:
- `architecture`: the `towerzoo.models` package (bridgetower, managertower, vidla, restore, zipper, llava_ov_manager).
- `description`: one or two sentences for `towerzoo list` and the card.
- `source`: `checkpoint` (download URL, Hub id, or a description for models trained here) and `format` (the
  `towerzoo convert` source format; absent for models that are not converted).
- `base_model`: the Hub id the folder derives from, for the card metadata (optional).
- `tokenizer`: the Hub id of the tokenizer the conversion needs for processor files (optional).
- `labels`: a `label_sets` key when the checkpoint has a classifier (optional).
- `paper`: a `papers` key (optional); `license`: a Hub license id (`mit`, `apache-2.0`, `unknown`, …).
- `training_data`: `datasets` keys (optional).
- `tasks`: what the checkpoint is evaluated on, each `{name, dataset, harness}`; `name` is a `towerzoo eval` task
  when `harness` is true (the default), else a task without a harness yet (snli-ve, nlvr2).
- `reported`: the paper's numbers, each `{task, dataset, split, metric, value, table}`; `metric` is the key the
  harness writes under `metrics` (accuracy, ir_r1, tr_r1, …) and `table` says where the number is printed. Optional.
"""

import argparse
import dataclasses
import difflib
import functools
import json
import re
import sys
from pathlib import Path

import yaml

REGISTRY_PATH = Path(__file__).with_name("zoo.yaml")
ARCHITECTURES = ("bridgetower", "managertower", "vidla", "restore", "zipper", "llava_ov_manager")


class RegistryError(ValueError):
    """The registry file is malformed, or a name is not in it; the message names the entry and field."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    key: str
    name: str
    hub_id: str | None = None
    aliases: tuple[str, ...] = ()  # other names data files give it (a Karpathy JSON's "dataset")


@dataclasses.dataclass(frozen=True)
class Paper:
    key: str
    title: str
    arxiv: str
    bibtex: str
    code: str | None = None

    @property
    def url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}"


@dataclasses.dataclass(frozen=True)
class LabelSet:
    key: str
    names: tuple[str, ...] | None = None
    count: int | None = None
    source: str | None = None

    @property
    def size(self) -> int:
        return len(self.names) if self.names is not None else self.count


@dataclasses.dataclass(frozen=True)
class Source:
    checkpoint: str
    format: str | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    dataset: Dataset
    harness: bool = True


@dataclasses.dataclass(frozen=True)
class Reported:
    task: str
    dataset: Dataset
    split: str
    metric: str
    value: float
    table: str


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    architecture: str
    description: str
    source: Source
    license: str
    tasks: tuple[Task, ...] = ()
    reported: tuple[Reported, ...] = ()
    training_data: tuple[Dataset, ...] = ()
    paper: Paper | None = None
    labels: LabelSet | None = None
    tokenizer: str | None = None
    base_model: str | None = None

    def task(self, name: str, dataset: str) -> Task | None:
        """The entry's task of that name on that dataset key, if it has one."""
        return next((t for t in self.tasks if t.name == name and t.dataset.key == dataset), None)


class _Fields:
    """Reads one mapping of the YAML, naming `where` (entry and field) in every error."""

    def __init__(self, data, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()):
        if not isinstance(data, dict):
            raise RegistryError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
        unknown = sorted(set(data) - set(required) - set(optional))
        if unknown:
            raise RegistryError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(required + optional)}")
        missing = [name for name in required if data.get(name) is None]
        if missing:
            raise RegistryError(f"{where}: missing field(s) {missing}")
        self.data, self.where = data, where

    def get(self, name: str, kind: type | tuple[type, ...], default=None):
        value = self.data.get(name, default)
        if value is None:
            return default
        # YAML's true/false are ints to isinstance; only a bool field takes them
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise RegistryError(f"{self.where}, field '{name}': expected {_kind(kind)}, got {value!r}")
        if isinstance(value, str) and not value.strip():
            raise RegistryError(f"{self.where}, field '{name}': empty")
        return value

    def key(self, name: str, table: dict, table_name: str):
        """A reference to another section (`papers`, `datasets`, `label_sets`)."""
        value = self.get(name, str)
        if value is None:
            return None
        if value not in table:
            raise RegistryError(
                f"{self.where}, field '{name}': {value!r} is not in {table_name} (known: {', '.join(sorted(table))})"
            )
        return table[value]


def _kind(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a mapping",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _section(raw: dict, name: str) -> dict:
    section = raw.get(name)
    if not isinstance(section, dict) or not section:
        raise RegistryError(f"section '{name}': expected a non-empty mapping")
    return section


def _read_datasets(raw: dict) -> dict[str, Dataset]:
    datasets, names = {}, set()
    for key, data in _section(raw, "datasets").items():
        fields = _Fields(data, f"dataset '{key}'", ("name",), ("hub_id", "aliases"))
        aliases = tuple(fields.get("aliases", list, []))
        taken = sorted(names & {key, *aliases})
        if taken or not all(isinstance(alias, str) for alias in aliases):
            raise RegistryError(f"dataset '{key}', field 'aliases': {taken or aliases} is taken or not a string")
        names |= {key, *aliases}
        datasets[key] = Dataset(key, fields.get("name", str), fields.get("hub_id", str), aliases)
    return datasets


def _read_papers(raw: dict) -> dict[str, Paper]:
    papers = {}
    for key, data in _section(raw, "papers").items():
        fields = _Fields(data, f"paper '{key}'", ("title", "arxiv", "bibtex"), ("code",))
        arxiv = fields.get("arxiv", str)
        if not re.fullmatch(r"\d{4}\.\d{4,5}", arxiv):
            raise RegistryError(f"paper '{key}', field 'arxiv': {arxiv!r} is not an arXiv id like 2206.08657")
        bibtex = fields.get("bibtex", str).strip()
        if not bibtex.startswith("@"):
            raise RegistryError(f"paper '{key}', field 'bibtex': not a BibTeX entry (it must start with '@')")
        papers[key] = Paper(key, fields.get("title", str), arxiv, bibtex, fields.get("code", str))
    return papers


def _read_label_sets(raw: dict) -> dict[str, LabelSet]:
    label_sets = {}
    for key, data in _section(raw, "label_sets").items():
        where = f"label set '{key}'"
        fields = _Fields(data, where, (), ("names", "count", "source"))
        names, count = fields.get("names", list), fields.get("count", int)
        if (names is None) == (count is None):
            raise RegistryError(f"{where}: give either 'names' (the labels in index order) or 'count' and 'source'")
        if names is not None and (
            len(set(map(str, names))) != len(names) or not all(isinstance(n, str) for n in names)
        ):
            raise RegistryError(f"{where}, field 'names': expected distinct strings, got {names!r}")
        if count is not None and (count < 1 or fields.get("source", str) is None):
            raise RegistryError(f"{where}: 'count' must be positive and come with a 'source' saying where the list is")
        label_sets[key] = LabelSet(key, tuple(names) if names else None, count, fields.get("source", str))
    return label_sets


def _read_list(fields: _Fields, name: str) -> list:
    return fields.get(name, list, [])


def _read_entry(name: str, data, datasets: dict, papers: dict, label_sets: dict) -> Entry:
    where = f"entry '{name}'"
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name):
        raise RegistryError(f"{where}: names are lower-case letters, digits, '-' and '.' (they become repo names)")
    fields = _Fields(
        data,
        where,
        ("architecture", "description", "source", "license"),
        ("base_model", "tokenizer", "labels", "paper", "training_data", "tasks", "reported"),
    )
    architecture = fields.get("architecture", str)
    if architecture not in ARCHITECTURES:
        raise RegistryError(f"{where}, field 'architecture': {architecture!r} is not one of {list(ARCHITECTURES)}")
    source_fields = _Fields(fields.get("source", dict), f"{where}, field 'source'", ("checkpoint",), ("format",))
    source = Source(source_fields.get("checkpoint", str), source_fields.get("format", str))
    if source.format is not None:
        from towerzoo.cli import CONVERTERS

        if source.format not in CONVERTERS:
            raise RegistryError(
                f"{where}, field 'source.format': {source.format!r} is not a converter ({', '.join(sorted(CONVERTERS))})"
            )

    def dataset(value, field: str) -> Dataset:
        if value not in datasets:
            raise RegistryError(
                f"{where}, field '{field}': {value!r} is not in datasets (known: {', '.join(sorted(datasets))})"
            )
        return datasets[value]

    tasks = []
    for i, item in enumerate(_read_list(fields, "tasks")):
        task_fields = _Fields(item, f"{where}, field 'tasks[{i}]'", ("name", "dataset"), ("harness",))
        task = Task(
            task_fields.get("name", str),
            dataset(task_fields.get("dataset", str), f"tasks[{i}].dataset"),
            task_fields.get("harness", bool, True),
        )
        if task in tasks:
            raise RegistryError(f"{where}, field 'tasks[{i}]': {task.name} on {task.dataset.key} is listed twice")
        tasks.append(task)
    reported = []
    for i, item in enumerate(_read_list(fields, "reported")):
        field = f"reported[{i}]"
        number = _Fields(item, f"{where}, field '{field}'", ("task", "dataset", "split", "metric", "value", "table"))
        value = number.get("value", (int, float))
        if not 0 <= value <= 100:
            raise RegistryError(f"{where}, field '{field}.value': {value} is not a percentage")
        result = Reported(
            number.get("task", str),
            dataset(number.get("dataset", str), f"{field}.dataset"),
            str(number.get("split", (str, int))),
            number.get("metric", str),
            float(value),
            number.get("table", str),
        )
        if not any(t.name == result.task and t.dataset == result.dataset for t in tasks):
            raise RegistryError(
                f"{where}, field '{field}': {result.task} on {result.dataset.key} is not among the entry's tasks"
            )
        if any(
            (r.task, r.dataset, r.split, r.metric) == (result.task, result.dataset, result.split, result.metric)
            for r in reported
        ):
            raise RegistryError(f"{where}, field '{field}': a second number for the same task, dataset, split, metric")
        reported.append(result)
    return Entry(
        name=name,
        architecture=architecture,
        description=" ".join(fields.get("description", str).split()),
        source=source,
        license=fields.get("license", str),
        tasks=tuple(tasks),
        reported=tuple(reported),
        training_data=tuple(dataset(d, "training_data") for d in _read_list(fields, "training_data")),
        paper=fields.key("paper", papers, "papers"),
        labels=fields.key("labels", label_sets, "label_sets"),
        tokenizer=fields.get("tokenizer", str),
        base_model=fields.get("base_model", str),
    )


def load_registry(path: Path | None = None) -> dict[str, Entry]:
    """Every zoo entry by name, read from `path` (default: the installed `zoo.yaml`) and checked."""
    return dict(_load(Path(path) if path is not None else REGISTRY_PATH)[0])


def get_dataset(name: str) -> Dataset | None:
    """The registry's dataset with that key or alias (display name, Hub id), if it has one."""
    return next((d for _, d in _load(REGISTRY_PATH)[1] if name == d.key or name in d.aliases), None)


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> tuple[tuple[tuple[str, Entry], ...], tuple[tuple[str, Dataset], ...]]:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise RegistryError(f"cannot read the registry {path}: {error}") from None
    except yaml.YAMLError as error:
        raise RegistryError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise RegistryError(f"{path}: expected a mapping with datasets, papers, label_sets and entries")
    known = {"datasets", "papers", "label_sets", "entries"}
    unknown = sorted(k for k in raw if k not in known and not str(k).startswith("_"))
    if unknown:
        raise RegistryError(f"{path}: unknown section(s) {unknown}; allowed: {sorted(known)} (and _anchors)")
    try:
        datasets, papers, label_sets = _read_datasets(raw), _read_papers(raw), _read_label_sets(raw)
        entries = tuple(
            (str(name), _read_entry(str(name), data, datasets, papers, label_sets))
            for name, data in _section(raw, "entries").items()
        )
    except RegistryError as error:
        raise RegistryError(f"{path}: {error}") from None
    return entries, tuple(datasets.items())


def get_entry(name: str) -> Entry:
    """The zoo entry called `name`; an unknown name is an error listing close matches and every name."""
    entries = load_registry()
    if name in entries:
        return entries[name]
    close = difflib.get_close_matches(name, entries, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise RegistryError(f"no zoo entry named {name!r}.{hint} Known entries: {', '.join(entries)}.")


def entry_summary(entry: Entry) -> dict:
    """An entry as plain JSON-ready data (what `towerzoo list --format json` prints)."""
    data = dataclasses.asdict(entry)
    data["tasks"] = [{"name": t.name, "dataset": t.dataset.key, "harness": t.harness} for t in entry.tasks]
    data["reported"] = [{**dataclasses.asdict(r), "dataset": r.dataset.key} for r in entry.reported]
    data["training_data"] = [d.key for d in entry.training_data]
    data["paper"] = entry.paper.arxiv if entry.paper else None
    data["labels"] = {"key": entry.labels.key, "size": entry.labels.size} if entry.labels else None
    return data


def _task_cell(entry: Entry) -> str:
    """Tasks grouped by name: `retrieval(flickr30k, coco)`; `*` marks tasks without a harness."""
    grouped: dict[str, list[str]] = {}
    for task in entry.tasks:
        grouped.setdefault(task.name + ("" if task.harness else "*"), []).append(task.dataset.key)
    return ", ".join(f"{name}({', '.join(datasets)})" for name, datasets in grouped.items()) or "-"


def _paper_cell(entry: Entry) -> str:
    """The paper's numbers: `test-dev 78.66, test-std 78.73` (metric named unless it is accuracy)."""
    numbers = [f"{r.split} {'' if r.metric == 'accuracy' else r.metric + ' '}{r.value:g}" for r in entry.reported]
    return ", ".join(numbers) or "-"


def format_table(entries: dict[str, Entry]) -> str:
    """The registry as an aligned text table, one row per entry."""
    header = ("NAME", "ARCH", "SOURCE FORMAT", "TASKS (datasets)", "PAPER NUMBERS", "LICENSE")
    rows = [
        (
            e.name,
            e.architecture,
            e.source.format or "(trained here)",
            _task_cell(e),
            _paper_cell(e),
            e.license,
        )
        for e in entries.values()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.append("")
    lines.append(f"{len(rows)} entries. * = no `towerzoo eval` harness for this task yet.")
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    try:
        entries = load_registry()
        if args.architecture:
            entries = {name: e for name, e in entries.items() if e.architecture == args.architecture}
    except RegistryError as error:
        print(f"towerzoo list: error: {error}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps([entry_summary(e) for e in entries.values()], indent=2))
    else:
        print(format_table(entries))
    return 0


def add_parsers(commands) -> None:
    """`towerzoo list`, on the main parser's subcommands."""
    parser = commands.add_parser("list", help="list the zoo's checkpoints (the registry)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    parser.add_argument("--architecture", choices=ARCHITECTURES, help="only this architecture's entries")
    parser.set_defaults(handler=_list)
