"""What every evaluation task shares: loading the model, a batch plan that does not depend on the number of processes,
sharded and resumable execution under `accelerate`, and the results JSON.

Batches are fixed once for the whole dataset (`plan_batches`) and each process runs every `num_processes`-th batch, so
an example lands in the same batch — with the same padding — whether one process or eight run: a sharded run gives the
single-process result. Each finished batch is appended, as one JSON line, to its process's file in the run's work
folder; a restarted run (with any number of processes) skips the batches found there, and the main process gathers
all batches in order at the end. A batch's records are either a list of JSON values or, with `tensor_records`, one
tensor whose first axis runs over the batch's examples (stored as base64 in the same JSON lines), gathered into one
tensor.
"""

import base64
import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

RESULTS_SCHEMA_VERSION = 1
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class EvaluationError(ValueError):
    """Bad input to an evaluation (data, model or options); the message names the problem and the fix."""


@dataclass(kw_only=True)
class RunOptions:
    """The options every harness takes (the CLI's shared run options; see `towerzoo eval TASK --help`)."""

    model: str
    output: Path = Path("results.json")
    batch_size: int = 32
    num_workers: int = 2
    dtype: str = "fp32"
    attn_implementation: str | None = None
    limit: int | None = None
    work_dir: Path | None = None
    keep_work_dir: bool = False


def plan_batches(num_examples: int, batch_size: int) -> list[list[int]]:
    """Consecutive example indices in batches of `batch_size` (the last may be shorter)."""
    if batch_size < 1:
        raise EvaluationError(f"--batch-size must be at least 1, got {batch_size}.")
    return [list(range(start, min(start + batch_size, num_examples))) for start in range(0, num_examples, batch_size)]


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable parts (run options, file stats) naming a cache or work folder."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_fingerprint(path: Path) -> dict:
    """Identity of a data file for cache keys: absolute path, size and modification time."""
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _encode_tensor(tensor: torch.Tensor) -> dict:
    """A tensor as a JSON value (dtype, shape, base64 bytes); any dtype numpy has (cast bf16 to fp32 first)."""
    array = tensor.detach().cpu().contiguous().numpy()
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode()}


def _decode_tensor(encoded: dict) -> torch.Tensor:
    array = np.frombuffer(base64.b64decode(encoded["data"]), dtype=np.dtype(encoded["dtype"]))
    return torch.from_numpy(array.reshape(encoded["shape"]).copy())


def _read_done(work_dir: Path) -> dict[int, list | dict]:
    """Finished batches recorded by any process: {batch id: records (a list, or an encoded tensor)}. A line cut short
    by a kill is ignored."""
    done = {}
    for shard_file in sorted(work_dir.glob("batches-*.jsonl")):
        for line in shard_file.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[entry["batch"]] = entry["records"] if "records" in entry else entry["tensor"]
    return done


@dataclass
class ShardedRun:
    """Runs `step(batch_indices) -> records` (one JSON-serialisable record per example, or with `tensor_records` one
    tensor with a row per example) over `batches` on this process's shard, resumably, and gathers every record in
    example order on the main process."""

    batches: list[Sequence[int]]
    work_dir: Path
    accelerator: object = None
    description: str = "batches"
    stats: dict = field(default_factory=dict)
    tensor_records: bool = False

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index if self.accelerator is not None else 0

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    def _wait(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def my_batches(self) -> list[int]:
        return list(range(self.process_index, len(self.batches), self.num_processes))

    def run_model(
        self, step: Callable, make_inputs: Callable, device: torch.device, dtype: str = "fp32", num_workers: int = 0
    ) -> list | torch.Tensor | None:
        """`run` for a model: `make_inputs(example indices)` builds each pending batch's tensors in DataLoader
        workers; `step(**inputs)` runs on `device` under no_grad and `dtype` autocast. Tensor outputs come back as
        float32 on the CPU, anything else (e.g. a list of answers) as it is."""

        def loader_for(pending: list[int]):
            batches = BatchInputs(self.batches, pending, make_inputs)
            return torch.utils.data.DataLoader(batches, batch_size=None, num_workers=num_workers)

        def on_device(batch: dict):
            inputs = {key: value.to(device) for key, value in batch.items()}
            with torch.no_grad(), autocast(device, dtype):
                output = step(**inputs)
            return output.float().cpu() if isinstance(output, torch.Tensor) else output

        return self.run(on_device, loader_for)

    def run(
        self, step: Callable, loader_for: Callable[[list[int]], Iterable] | None = None
    ) -> list | torch.Tensor | None:
        """`loader_for(pending batch ids)`, when given, returns an iterable of `(batch id, inputs)` for those batches
        (e.g. a DataLoader whose workers load and process them) and `step` receives the inputs; otherwise `step`
        receives the batch's example indices. Returns every record in example order (concatenated into one tensor
        with `tensor_records`) on the main process, None on the others."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        done = _read_done(self.work_dir)
        pending = [b for b in self.my_batches() if b not in done]
        self.stats.update(resumed_batches=len(done), computed_batches=0)
        inputs = loader_for(pending) if loader_for is not None else ((b, self.batches[b]) for b in pending)
        shard_file = self.work_dir / f"batches-{self.process_index:05d}.jsonl"
        with (
            shard_file.open("a") as out,
            tqdm(total=len(pending), desc=self.description, disable=self.process_index != 0, unit="batch") as progress,
        ):
            for batch_id, batch in inputs:
                records = step(batch) if self.tensor_records else list(step(batch))
                if len(records) != len(self.batches[batch_id]):
                    raise RuntimeError(f"batch {batch_id}: {len(records)} records for {len(self.batches[batch_id])}")
                entry = {"tensor": _encode_tensor(records)} if self.tensor_records else {"records": records}
                out.write(json.dumps({"batch": batch_id, **entry}) + "\n")
                out.flush()
                os.fsync(out.fileno())
                self.stats["computed_batches"] += 1
                progress.update(1)
        self._wait()
        if self.process_index != 0:
            return None
        done = _read_done(self.work_dir)
        missing = [b for b in range(len(self.batches)) if b not in done]
        if missing:
            raise RuntimeError(f"batches {missing[:10]} were not computed by any process; rerun to finish them.")
        if self.tensor_records:
            return torch.cat([_decode_tensor(done[b]) for b in range(len(self.batches))])
        return [record for b in range(len(self.batches)) for record in done[b]]


def default_cache_dir(task: str) -> Path:
    """`$XDG_CACHE_HOME/towerzoo/<task>`, i.e. `~/.cache/towerzoo/<task>` by default: where a task caches embeddings."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "towerzoo" / task


def remove_work_dir(work_dir: Path) -> None:
    """Delete a finished run's batches, and the folder holding the runs when nothing else is left in it."""
    shutil.rmtree(work_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        work_dir.parent.rmdir()


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EvaluationError(f"{what} file {path} does not exist.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EvaluationError(f"{what} file {path} is not valid JSON ({error}); re-download it.") from None


def open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise EvaluationError(f"cannot read image {path} ({error}); the file is corrupt or not an image.") from None


def count_truncated(processor, texts: list[str]) -> int:
    """How many captions are longer than the processor's `max_text_length` tokens (they get truncated)."""
    lengths = [len(ids) for ids in processor.tokenizer(texts, truncation=False)["input_ids"]]
    return sum(length > processor.max_text_length for length in lengths)


class BatchInputs(torch.utils.data.Dataset):
    """Item i = (batch id, `make_inputs(batch)`) of the i-th pending batch: a DataLoader over it loads and
    processes batches in its workers."""

    def __init__(self, batches, batch_ids: list[int], make_inputs):
        self.batches, self.batch_ids, self.make_inputs = batches, batch_ids, make_inputs

    def __len__(self) -> int:
        return len(self.batch_ids)

    def __getitem__(self, i: int):
        batch_id = self.batch_ids[i]
        return batch_id, self.make_inputs(self.batches[batch_id])


def model_identity(model_path: str, model) -> dict:
    """What names the weights: the Hub revision, or a local folder's files (path, size, mtime)."""
    folder = Path(model_path)
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return {
        "model": model_path,
        "revision": getattr(model.config, "_commit_hash", None),
        "files": [file_fingerprint(p) for p in files],
    }


def save_tensors_atomically(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write tensors as safetensors through a temporary sibling and a rename."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, temporary)
    temporary.replace(path)


def load_model(model_path: str, auto_class: str, attn_implementation: str | None, device):
    """A towerzoo Hub folder or repo through the named transformers Auto class (remote code), fp32 weights (bf16/fp16
    runs use autocast, see `autocast`), in eval mode."""
    import transformers

    try:
        model = getattr(transformers, auto_class).from_pretrained(
            model_path,
            trust_remote_code=True,
            attn_implementation=attn_implementation,
            dtype=torch.float32,
        )
    except ValueError as error:
        if "Unrecognized configuration class" in str(error) or "auto_map" in str(error):
            raise EvaluationError(
                f"{model_path} has no model for {auto_class}: this task needs a checkpoint with that head ({error})."
            ) from None
        raise
    return model.to(device).eval()


def autocast(device: torch.device, dtype: str):
    """Mixed precision for `--dtype bf16|fp16` (a no-op context for fp32)."""
    return torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32")


def write_json_atomically(path: Path, data) -> Path:
    """Write JSON through a temporary sibling and a rename, so a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.replace(path)
    return path


def write_results(path: Path, results: dict) -> Path:
    """The results JSON every task writes (model, revision, task, split, metrics, config, timing, …)."""
    return write_json_atomically(path, {"schema_version": RESULTS_SCHEMA_VERSION, **results})


def finish_run(options: RunOptions, results: dict, work_dir: Path) -> dict:
    """The end of every harness: the results JSON at `options.output`, then the finished batches removed (unless
    `--keep-work-dir`). Returns `results`."""
    write_results(options.output, results)
    if not options.keep_work_dir:
        remove_work_dir(work_dir)
    return results


class Timer:
    """Named wall-clock phases: `with timer("embedding"): ...`; `timer.seconds` maps names to seconds."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = timer.seconds.get(name, 0.0) + time.perf_counter() - self.start

        return _Phase()
