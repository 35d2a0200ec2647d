"""Running the evaluation notebooks headless in tests: top to bottom with nbclient, in a kernel of this interpreter
(`sys.executable`, so the test's venv), with fixture parameters injected after the notebook's `parameters` cell (as
papermill does); figures render through matplotlib's inline backend (Agg, no display)."""

from pathlib import Path

import nbformat
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "evaluation" / "notebooks"
CELL_TIMEOUT_S = 120
KERNEL = "towerzoo-tests-python"


def isolate_jupyter(tmp_path: Path, monkeypatch) -> None:
    """This interpreter's kernelspec (under a name no other kernelspec on the machine can shadow), the kernel's
    connection files and IPython's profile under `tmp_path`, nothing from the network, two threads."""
    write_kernel_spec(tmp_path / "jupyter" / "kernels" / KERNEL)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.delenv("MPLBACKEND", raising=False)


def tagged(notebook, tag: str) -> list[int]:
    return [i for i, cell in enumerate(notebook.cells) if tag in cell.metadata.get("tags", [])]


def run_notebook(name: str, parameters: dict, workdir: Path, last_cell: str | None = None):
    """Execute `evaluation/notebooks/<name>` in `workdir` with `parameters` overriding its parameters cell (and
    `last_cell` appended, to read the kernel's variables); returns the executed notebook. A failing cell raises
    `CellExecutionError`, naming the cell and its traceback."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    (position,) = tagged(notebook, "parameters")
    injected = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    notebook.cells.insert(position + 1, nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected"]}))
    if last_cell is not None:
        notebook.cells.append(nbformat.v4.new_code_cell(last_cell, metadata={"tags": ["last"]}))
    client = NotebookClient(
        notebook, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    return notebook


def outputs(notebook, tag: str) -> str:
    """Everything the cell tagged `tag` displayed, as text (plain and HTML)."""
    (position,) = tagged(notebook, tag)
    parts = []
    for output in notebook.cells[position].outputs:
        parts.append(output.get("text", ""))
        data = output.get("data", {})
        parts += [data.get("text/plain", ""), data.get("text/html", "")]
    return "\n".join(parts)


def images(notebook) -> int:
    """How many figures the executed notebook shows."""
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))
