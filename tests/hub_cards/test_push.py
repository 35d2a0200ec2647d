"""`towerzoo push` against the fake Hub on 127.0.0.1: what is uploaded and sent, what loads back from the Hub, and
the refusals that must happen before any request."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from evaluation_fixtures import tiny_model_folder
from fake_hub import check_card_metadata, fake_hub_fixture  # noqa: F401 - the `fake_hub` fixture

from towerzoo.hub_cards.push import PushError, check_repo_id

TELEMETRY = "/api/agent-harnesses"  # huggingface_hub's own registry fetch, with no token and no body


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory) -> Path:
    """A tiny converted VQAv2 folder with its processor; tests that change it work on a copy."""
    return tiny_model_folder(tmp_path_factory.mktemp("push") / "tiny-vqa")


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hub_env(hub, tmp_path: Path, token: bool = True) -> dict[str, str]:
    """This environment without any Hugging Face setting, pointed at the fake Hub, with a fresh HF_HOME (no stored
    login, no cached telemetry)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    return {**env, **hub.env(token=token), "HF_HOME": str(tmp_path / "hf-home")}


def towerzoo_push(*arguments, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "towerzoo.cli", "push", *map(str, arguments)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2 and one `towerzoo push: error:` line naming each fragment."""
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("towerzoo push:")]
    assert len(errors) == 1 and errors[0].startswith("towerzoo push: error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def assert_requests(hub, expected: list[str]) -> None:
    """Exactly these requests, each with the token; huggingface_hub's telemetry fetch at most once, without it."""
    assert hub.lines() == expected
    for request in hub.requests:
        if request.path == TELEMETRY:
            assert (request.method, request.token, request.body) == ("GET", None, b"")
        else:
            assert request.token == hub.token, request.line
    assert sum(r.path == TELEMETRY for r in hub.requests) <= 1


def test_push_uploads_the_folder_byte_for_byte_and_loads_back_from_the_hub(hub_folder, fake_hub, tmp_path):
    env = hub_env(fake_hub, tmp_path)
    result = towerzoo_push(hub_folder, "towerzoo-test/tiny-vqa", "--private", "--commit-message", "First", env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    repo = "/api/models/towerzoo-test/tiny-vqa"
    assert_requests(
        fake_hub,
        ["POST /api/repos/create", f"GET {repo}", f"POST {repo}/preupload/main", f"POST {repo}/commit/main"],
    )
    create, _, preupload, commit = (r for r in fake_hub.requests if r.path != TELEMETRY)
    assert create.json() == {"name": "tiny-vqa", "organization": "towerzoo-test", "visibility": "private"}
    assert fake_hub.repos["towerzoo-test/tiny-vqa"].private
    expected = folder_files(hub_folder)
    assert {f["path"]: f["size"] for f in preupload.json()["files"]} == {p: len(c) for p, c in expected.items()}
    assert commit.ndjson()[0] == {"key": "header", "value": {"summary": "First", "description": ""}}
    assert fake_hub.files("towerzoo-test/tiny-vqa") == expected
    head = fake_hub.history("towerzoo-test/tiny-vqa")[-1]
    assert head.message == "First"
    assert result.stdout.strip().endswith(f"{fake_hub.url}/towerzoo-test/tiny-vqa/commit/{head.oid}")

    # a Hub user, in a fresh isolated process: the repo gives the same model, outputs and processor as the folder
    script = textwrap.dedent(
        f"""
        import json, sys
        import torch, transformers
        loaded = {{}}
        for source in ({str(hub_folder)!r}, "towerzoo-test/tiny-vqa"):
            model = transformers.AutoModelForVisualQuestionAnswering.from_pretrained(source, trust_remote_code=True)
            processor = transformers.AutoProcessor.from_pretrained(source, trust_remote_code=True)
            torch.manual_seed(0)
            inputs = {{"input_ids": torch.randint(5, 297, (2, 7)), "pixel_values": torch.randn(2, 3, 32, 32)}}
            with torch.no_grad():
                logits = model.eval()(**inputs).logits
            loaded[source] = (type(model).__name__, type(processor).__name__, model.config.id2label, logits)
        (name_a, processor_a, labels_a, logits_a), (name_b, processor_b, labels_b, logits_b) = loaded.values()
        print(json.dumps({{
            "classes": [name_a, name_b, processor_a, processor_b], "labels_equal": labels_a == labels_b,
            "max_abs_diff": (logits_a - logits_b).abs().max().item(),
            "towerzoo_imported": any(name.split(".")[0] == "towerzoo" for name in sys.modules),
        }}))
        """
    )
    pushed = len(fake_hub.requests)
    user = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert user.returncode == 0, user.stderr[-3000:]
    report = json.loads(user.stdout.strip().splitlines()[-1])
    assert report == {
        "classes": ["BridgeTowerForVisualQuestionAnswering"] * 2 + ["BridgeTowerProcessor"] * 2,
        "labels_equal": True,
        "max_abs_diff": 0.0,
        "towerzoo_imported": False,
    }
    # the user's downloads: files of the pushed commit only, nothing written
    user_requests = fake_hub.requests[pushed:]
    assert {r.method for r in user_requests} <= {"GET", "HEAD"}
    resolved = {r.path.split("/resolve/")[1] for r in user_requests if "/resolve/" in r.path}
    assert {path.split("/", 1)[0] for path in resolved} == {head.oid}


def test_push_to_a_branch_skips_work_files_and_reuses_the_stored_login(hub_folder, fake_hub, tmp_path):
    folder = shutil.copytree(hub_folder, tmp_path / "tiny-vqa")
    junk = ["model.safetensors.tmp123", "__pycache__/modeling.cpython-311.pyc", "notes.work/0.jsonl", "x.pyc"]
    for name in junk:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("not for the Hub")
    expected = {p: c for p, c in folder_files(folder).items() if p not in junk}
    assert len(expected) == len(folder_files(hub_folder))

    env = hub_env(fake_hub, tmp_path)
    result = towerzoo_push(folder, "towerzoo-test/tiny-vqa", "--revision", "dev", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    repo = "/api/models/towerzoo-test/tiny-vqa"
    branch = [f"POST {repo}/branch/dev", f"POST {repo}/preupload/dev", f"POST {repo}/commit/dev"]
    assert_requests(fake_hub, ["POST /api/repos/create", *branch])
    assert "visibility" not in fake_hub.requests[-4].json()  # no --private: the namespace's default
    assert not fake_hub.repos["towerzoo-test/tiny-vqa"].private
    assert fake_hub.files("towerzoo-test/tiny-vqa", "dev") == expected
    assert fake_hub.files("towerzoo-test/tiny-vqa", "main") == {}
    assert fake_hub.history("towerzoo-test/tiny-vqa", "dev")[-1].message == "Upload tiny-vqa with towerzoo push"

    # again, with a card, the token from `hf auth login`'s file instead of HF_TOKEN: the repo and the branch exist,
    # huggingface_hub has the card's metadata validated, and only the new file is committed
    (folder / "README.md").write_text("# tiny\n")
    env = hub_env(fake_hub, tmp_path, token=False)
    Path(env["HF_HOME"], "token").write_text(fake_hub.token)
    fake_hub.requests.clear()
    result = towerzoo_push(folder, "towerzoo-test/tiny-vqa", "--revision", "dev", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_requests(fake_hub, ["POST /api/repos/create", branch[0], "POST /api/validate-yaml", *branch[1:]])
    assert [line["key"] for line in fake_hub.requests[-1].ndjson()] == ["header", "file"]
    assert fake_hub.files("towerzoo-test/tiny-vqa", "dev") == {**expected, "README.md": b"# tiny\n"}
    assert len(fake_hub.history("towerzoo-test/tiny-vqa", "dev")) == 3  # main's first commit and two pushes


@pytest.mark.parametrize(
    ("repo_id", "fragments"),
    [
        ("towerzoo-test/tiny vqa!", ["it contains ' ', '!'", "ASCII letters, digits, '-', '_' or '.'"]),
        ("towerzoo-test/modèle", ["it contains 'è'"]),
        ("towerzoo-test/tiny--vqa", ["'towerzoo-test/tiny--vqa' is not a valid repo id", "without '--'"]),
        ("a/b/c", ["NAME or NAMESPACE/NAME"]),
    ],
)
def test_illegal_repo_ids_are_refused_before_any_request(repo_id, fragments, hub_folder, fake_hub, tmp_path):
    assert_refused(towerzoo_push(hub_folder, repo_id, env=hub_env(fake_hub, tmp_path)), *fragments)
    assert fake_hub.requests == []


def test_push_without_a_token_is_refused_before_any_request(hub_folder, fake_hub, tmp_path):
    result = towerzoo_push(hub_folder, "towerzoo-test/tiny-vqa", env=hub_env(fake_hub, tmp_path, token=False))
    assert_refused(result, "no Hugging Face token", "HF_TOKEN", "hf auth login")
    assert fake_hub.requests == []


def test_push_with_hf_hub_offline_is_refused_before_any_request(hub_folder, fake_hub, tmp_path):
    result = towerzoo_push(
        hub_folder, "towerzoo-test/tiny-vqa", env={**hub_env(fake_hub, tmp_path), "HF_HUB_OFFLINE": "1"}
    )
    assert_refused(result, "HF_HUB_OFFLINE is set")
    assert fake_hub.requests == []


def _break_modeling(folder: Path) -> None:
    with open(folder / "modeling_bridgetower.py", "a") as file:
        file.write("\nraise RuntimeError('this modeling file is broken')\n")


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        (_break_modeling, ["RuntimeError: this modeling file is broken"]),
        (lambda folder: (folder / "model.safetensors").unlink(), ["no file named model.safetensors"]),
        (lambda folder: (folder / "config.json").unlink(), ["has no config.json"]),
    ],
    ids=["broken-modeling-file", "missing-weights", "no-config"],
)
def test_a_folder_that_would_not_load_is_refused_before_any_request(damage, fragments, hub_folder, fake_hub, tmp_path):
    folder = shutil.copytree(hub_folder, tmp_path / "tiny-vqa")
    damage(folder)
    result = towerzoo_push(folder, "towerzoo-test/tiny-vqa", env=hub_env(fake_hub, tmp_path))
    assert_refused(result, "refusing to push", str(folder), *fragments)
    assert fake_hub.requests == []


def test_a_rejected_token_and_a_public_repo_with_private_are_clear_errors(hub_folder, fake_hub, tmp_path):
    env = {**hub_env(fake_hub, tmp_path), "HF_TOKEN": "hf_not_the_right_one"}
    result = towerzoo_push(hub_folder, "towerzoo-test/tiny-vqa", env=env)
    assert_refused(result, "could not push to towerzoo-test/tiny-vqa", "401", "check that the token")
    # create_repo(exist_ok=True) looks the repo up after a 401, in case it exists already
    assert fake_hub.lines() == ["POST /api/repos/create", "GET /api/models/towerzoo-test/tiny-vqa"]
    assert fake_hub.repos == {}

    fake_hub.requests.clear()
    fake_hub.add_repo("towerzoo-test/public", private=False)
    result = towerzoo_push(hub_folder, "towerzoo-test/public", "--private", env=hub_env(fake_hub, tmp_path))
    assert_refused(result, "towerzoo-test/public already exists and is public")
    assert_requests(fake_hub, ["POST /api/repos/create", "GET /api/models/towerzoo-test/public"])
    assert fake_hub.files("towerzoo-test/public") == {}


def test_check_repo_id_accepts_what_the_hub_accepts():
    for repo_id in ("towerzoo/bridgetower-base-vqav2", "tiny", "Org_1/model.v2"):
        check_repo_id(repo_id)
    with pytest.raises(PushError, match="not ending in '.git'"):
        check_repo_id("org/model.git")


CARD = """---
license: mit
tags: [towerzoo, bridgetower]
model-index:
- name: tiny-vqa
  results:
  - task: {{type: visual-question-answering}}
    dataset: {{type: vqav2, name: VQAv2}}
    metrics:
    - {{type: accuracy, {metric}}}
---
# tiny-vqa
"""


def test_the_fake_hub_validates_card_metadata_as_the_hub_does(fake_hub, tmp_path):
    assert check_card_metadata(CARD.format(metric="value: 0.5")) == ([], [])
    assert check_card_metadata("# no metadata\n") == ([], ["empty or missing yaml metadata in repo card"])
    assert check_card_metadata(CARD.format(metric="name: Accuracy"))[0] == [
        '"model-index[0].results[0].metrics[0].value" is required'
    ]
    assert "does not parse" in check_card_metadata("---\nlicense: [mit\n---\n")[0][0]
    assert check_card_metadata("---\n- a list\n---\n")[0] == ["YAML metadata must be a mapping, not list"]

    # huggingface_hub's ModelCard.validate() against it, in a process whose HF_ENDPOINT is the fake Hub (ModelCard
    # itself refuses unparsable YAML and a model-index without values, so the bad card has bad tags)
    good = CARD.format(metric="value: 0.5")
    bad = good.replace("tags: [towerzoo, bridgetower]", "tags: [towerzoo, {nested: tag}]")
    script = textwrap.dedent(
        f"""
        from huggingface_hub import ModelCard
        ModelCard({good!r}).validate()
        try:
            ModelCard({bad!r}).validate()
        except ValueError as error:
            print(error)
        """
    )
    env = hub_env(fake_hub, tmp_path)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == 'Error: "tags" must be a string or a list of strings'
    assert fake_hub.lines() == ["POST /api/validate-yaml"] * 2
