"""`towerzoo eval retrieval`: the ITC stage ranks with the model's own embeddings, the re-ranked matrix holds the
model's own ITM scores for the candidates (-100 elsewhere), recalls are the metric's, sharded runs equal single runs,
killed runs resume, embeddings are cached, and bad input fails clearly."""

import json
from pathlib import Path

import evaluate
import pytest
import torch
from evaluation_fixtures import run_eval_in_processes, tiny_model_folder, write_karpathy
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining, AutoProcessor

import towerzoo.models.bridgetower as bt
import towerzoo.models.managertower as mt
from towerzoo.evaluation import runner
from towerzoo.evaluation.metrics import metric_path
from towerzoo.evaluation.retrieval import RECALL_NAMES, RetrievalOptions, evaluate_retrieval
from towerzoo.evaluation.runner import EvaluationError

RETRIEVAL_HEADS = ["itm", "itc"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    model = tiny_model_folder(
        root / "model", model_class=bt.BridgeTowerForPreTraining, pretraining_heads=RETRIEVAL_HEADS
    )
    return {"model": model, **write_karpathy(root / "data")}


def _options(setup, tmp_path, **overrides) -> RetrievalOptions:
    values = {
        "model": str(setup["model"]),
        "karpathy": setup["karpathy"],
        "images": setup["images"],
        "output": tmp_path / "results.json",
        "save_scores": tmp_path / "scores.safetensors",
        "cache_dir": tmp_path / "cache",
        "k": 2,
        "batch_size": 4,
        "rerank_batch_size": 5,
        "num_workers": 0,
        **overrides,
    }
    return RetrievalOptions(**values)


def _test_split(setup) -> tuple[list[Path], list[str], list[int]]:
    """The test images, their captions and each caption's image, read from the JSON here, not by the harness."""
    entries = [e for e in json.loads(Path(setup["karpathy"]).read_text())["images"] if e["split"] == "test"]
    paths = [Path(setup["images"]) / e["filepath"] / e["filename"] for e in entries]
    captions = [(s["raw"], i) for i, e in enumerate(entries) for s in e["sentences"]]
    return paths, [text for text, _ in captions], [image for _, image in captions]


def _model(folder):
    model = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
    return model, AutoProcessor.from_pretrained(folder, trust_remote_code=True)


def _own_similarity(setup) -> torch.Tensor:
    """Captions x images cosine similarities, each embedding computed on its own with the model's ITC methods."""
    model, processor = _model(setup["model"])
    paths, captions, _ = _test_split(setup)
    with torch.no_grad():
        images = [model.get_image_features(**processor(images=Image.open(p).convert("RGB"))) for p in paths]
        texts = [model.get_text_features(**processor(text=caption)) for caption in captions]
    return torch.cat(texts) @ torch.cat(images).t()


def _metric(scores: torch.Tensor, text_to_image: list[int]) -> dict:
    """The `retrieval_recall` evaluate module's numbers, in the harness's names."""
    computed = evaluate.load(metric_path("retrieval_recall")).compute(
        predictions=scores.tolist(), references=text_to_image
    )
    return {name: computed[metric_name] for name, metric_name in RECALL_NAMES.items()}


def test_itc_recalls_are_the_metric_on_the_models_own_similarities(setup, tmp_path):
    results = evaluate_retrieval(_options(setup, tmp_path, rerank=False, num_workers=1))  # images decoded in a worker
    similarity = _own_similarity(setup)
    _, _, text_to_image = _test_split(setup)
    saved = load_file(tmp_path / "scores.safetensors")
    assert set(saved) == {"itc_similarity", "text_to_image"}
    torch.testing.assert_close(saved["itc_similarity"], similarity, atol=1e-5, rtol=0)
    assert saved["text_to_image"].tolist() == text_to_image
    expected = _metric(similarity, text_to_image)
    assert results["itc_metrics"] == pytest.approx(expected) and results["metrics"] == results["itc_metrics"]
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["task"] == "retrieval" and written["dataset"] == "coco" and written["split"] == "test"
    assert written["protocol"]["name"] == "itc" and written["metrics"] == results["metrics"]
    assert written["counts"] == {
        "images": 6,
        "captions": 30,
        "captions_per_image": {"min": 5, "max": 5},
        "duplicate_captions_removed": 0,
        "truncated_captions": 1,  # the fixture's long caption
        "candidate_pairs": 0,
        "candidate_pairs_in_both_directions": 0,
    }
    assert {"loading", "embedding", "similarity", "scoring", "total"} <= set(written["timing"])
    assert not (tmp_path / "results.json.work").exists()


@pytest.mark.parametrize("architecture", ["bridgetower", "managertower"])
def test_reranked_matrix_holds_the_models_itm_scores_of_the_candidates(setup, tmp_path, architecture):
    if architecture == "managertower":
        # its managers read padded text positions: the harness pads to max_length, and so does the check below
        model_folder = tiny_model_folder(
            tmp_path / "model",
            model_class=mt.ManagerTowerForPreTraining,
            config_class=mt.ManagerTowerConfig,
            managed_layers_text=3,
            managed_layers_image=2,
            pretraining_heads=["mlm", "itm", "itc"],
        )
        setup = {**setup, "model": model_folder}
    k = 2
    results = evaluate_retrieval(_options(setup, tmp_path, k=k))
    scores = load_file(tmp_path / "scores.safetensors")["scores"]

    similarity = _own_similarity(setup)
    candidates = {(t, int(i)) for t, row in enumerate(similarity.topk(k, dim=1).indices) for i in row}
    proposed_by_images = {
        (int(t), i) for i, column in enumerate(similarity.topk(k, dim=0).indices.t()) for t in column
    }
    both = candidates & proposed_by_images
    candidates |= proposed_by_images
    assert {tuple(pair) for pair in (scores != -100).nonzero().tolist()} == candidates

    model, processor = _model(setup["model"])
    paths, captions, text_to_image = _test_split(setup)
    for t, i in sorted(candidates):
        inputs = processor(images=Image.open(paths[i]).convert("RGB"), text=captions[t], padding="max_length")
        with torch.no_grad():
            expected = model(**inputs).itm_logits[0, 1]
        torch.testing.assert_close(scores[t, i], expected, atol=1e-5, rtol=0)
    assert results["metrics"] == pytest.approx(_metric(scores, text_to_image))
    assert results["counts"]["candidate_pairs"] == len(candidates)
    assert results["counts"]["candidate_pairs_in_both_directions"] == len(both)
    assert results["protocol"]["name"] == "bridgetower-itm-itc" and results["protocol"]["k"] == k
    assert results["timing"]["reranking"] > 0


def test_two_processes_give_the_single_process_result(setup, tmp_path):
    single = evaluate_retrieval(_options(setup, tmp_path / "single"))
    sharded_dir = tmp_path / "sharded"
    run_eval_in_processes(
        [
            *("retrieval", "--model", str(setup["model"])),
            *("--karpathy", str(setup["karpathy"]), "--images", str(setup["images"]), "--k", "2"),
            *("--batch-size", "4", "--rerank-batch-size", "5", "--num-workers", "0"),
            *("--cache-dir", str(sharded_dir / "cache"), "--save-scores", str(sharded_dir / "scores.safetensors")),
            *("--output", str(sharded_dir / "results.json")),
        ]
    )
    sharded = json.loads((sharded_dir / "results.json").read_text())
    assert sharded["config"]["num_processes"] == 2 and not sharded["embedding_cache"]["reused"]
    assert sharded["metrics"] == single["metrics"] and sharded["itc_metrics"] == single["itc_metrics"]
    assert sharded["counts"] == single["counts"]
    single_scores = load_file(tmp_path / "single" / "scores.safetensors")
    for name, tensor in load_file(sharded_dir / "scores.safetensors").items():
        torch.testing.assert_close(tensor, single_scores[name], atol=1e-6, rtol=0)


def test_killed_run_resumes_to_the_same_result(setup, tmp_path, monkeypatch):
    reference = evaluate_retrieval(_options(setup, tmp_path / "reference"))
    load_batch = runner.BatchInputs.__getitem__

    def killed_at(step: str, batch: int):
        loaded = {"batches": 0}

        def load(self, i):
            if self.make_inputs.__name__ == step:
                loaded["batches"] += 1
                if loaded["batches"] == batch:
                    raise KeyboardInterrupt("killed")
            return load_batch(self, i)

        return load

    options = _options(setup, tmp_path / "resumed")
    monkeypatch.setattr(runner.BatchInputs, "__getitem__", killed_at("texts", 3))
    with pytest.raises(KeyboardInterrupt):
        evaluate_retrieval(options)
    monkeypatch.setattr(runner.BatchInputs, "__getitem__", killed_at("pair_batch", 4))
    with pytest.raises(KeyboardInterrupt):
        evaluate_retrieval(options)
    assert not options.output.exists()
    monkeypatch.undo()
    resumed = evaluate_retrieval(options)
    assert resumed["embedding_cache"]["reused"]  # the second attempt finished and cached the embeddings
    assert resumed["batches"]["rerank"]["resumed_batches"] == 3
    assert resumed["metrics"] == reference["metrics"] and resumed["itc_metrics"] == reference["itc_metrics"]
    reference_scores = load_file(tmp_path / "reference" / "scores.safetensors")
    for name, tensor in load_file(tmp_path / "resumed" / "scores.safetensors").items():
        assert torch.equal(tensor, reference_scores[name]), name


def test_killed_embedding_resumes(setup, tmp_path, monkeypatch):
    load_batch = runner.BatchInputs.__getitem__
    loaded = {"batches": 0}

    def killed_at_the_third_caption_batch(self, i):
        if self.make_inputs.__name__ == "texts":
            loaded["batches"] += 1
            if loaded["batches"] == 3:
                raise KeyboardInterrupt("killed")
        return load_batch(self, i)

    options = _options(setup, tmp_path, rerank=False)
    monkeypatch.setattr(runner.BatchInputs, "__getitem__", killed_at_the_third_caption_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate_retrieval(options)
    monkeypatch.undo()
    resumed = evaluate_retrieval(options)
    assert resumed["batches"]["image-embeddings"] == {"computed_batches": 0, "resumed_batches": 2}
    assert resumed["batches"]["text-embeddings"] == {"computed_batches": 6, "resumed_batches": 2}
    assert resumed["itc_metrics"] == evaluate_retrieval(_options(setup, tmp_path / "fresh", rerank=False))["metrics"]


def test_embeddings_are_cached_and_reused(setup, tmp_path):
    first = evaluate_retrieval(_options(setup, tmp_path / "first", cache_dir=tmp_path / "cache"))
    cache = Path(first["embedding_cache"]["path"])
    assert cache.parent == tmp_path / "cache" and not first["embedding_cache"]["reused"]
    assert set(load_file(cache)) == {"image_embeds", "text_embeds"}
    # another k reuses the embeddings: no embedding batch runs
    second = evaluate_retrieval(_options(setup, tmp_path / "second", cache_dir=tmp_path / "cache", k=3))
    assert second["embedding_cache"] == {"path": str(cache), "reused": True}
    assert set(second["batches"]) == {"rerank"}
    assert second["itc_metrics"] == first["itc_metrics"]
    # other data (fewer images) get their own entry
    third = evaluate_retrieval(_options(setup, tmp_path / "third", cache_dir=tmp_path / "cache", limit=4))
    assert not third["embedding_cache"]["reused"] and third["counts"]["images"] == 4
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_flickr_layout_and_repeated_captions(setup, tmp_path):
    data = write_karpathy(tmp_path / "flickr", dataset="flickr30k")
    karpathy = json.loads(data["karpathy"].read_text())
    karpathy["images"][1]["sentences"][4]["raw"] = karpathy["images"][1]["sentences"][0]["raw"]
    data["karpathy"].write_text(json.dumps(karpathy))
    results = evaluate_retrieval(_options(setup, tmp_path, **data))
    assert results["dataset"] == "flickr30k" and results["counts"]["images"] == 6
    assert results["counts"]["captions"] == 29 and results["counts"]["duplicate_captions_removed"] == 1
    kept = evaluate_retrieval(_options(setup, tmp_path / "kept", **data, keep_duplicate_captions=True, rerank=False))
    assert kept["counts"]["captions"] == 30 and kept["counts"]["duplicate_captions_removed"] == 0
    val = evaluate_retrieval(_options(setup, tmp_path / "val", **data, split="val", rerank=False))
    assert val["counts"] == {**val["counts"], "images": 1, "captions": 5}


def test_bad_input_fails_clearly(setup, tmp_path):
    data = write_karpathy(tmp_path / "data")
    images = sorted((data["images"] / "val2014").iterdir())
    images[1].unlink()
    with pytest.raises(EvaluationError, match=rf"1 images .* missing from .*{images[1].name}.*--skip-missing-images"):
        evaluate_retrieval(_options(setup, tmp_path, **data))
    results = evaluate_retrieval(_options(setup, tmp_path, **data, skip_missing_images=True))
    assert results["skipped"] == {"missing_images": 1}
    assert results["counts"]["images"] == 5 and results["counts"]["captions"] == 25

    images[2].write_bytes(b"not a jpeg")
    with pytest.raises(EvaluationError, match=rf"cannot read image .*{images[2].name}"):
        evaluate_retrieval(_options(setup, tmp_path, **data, skip_missing_images=True, cache_dir=tmp_path / "c2"))

    karpathy = json.loads(setup["karpathy"].read_text())
    karpathy["images"][3]["sentences"][2]["raw"] = "  "
    (tmp_path / "empty.json").write_text(json.dumps(karpathy))
    name = karpathy["images"][3]["filename"]
    with pytest.raises(EvaluationError, match=rf"image {name} has an empty caption \(sentence 2\)"):
        evaluate_retrieval(_options(setup, tmp_path, karpathy=tmp_path / "empty.json"))

    (tmp_path / "other.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(EvaluationError, match="no 'images' list"):
        evaluate_retrieval(_options(setup, tmp_path, karpathy=tmp_path / "other.json"))
    (tmp_path / "train.json").write_text(json.dumps({"images": karpathy["images"][6:7]}))
    with pytest.raises(EvaluationError, match=r"no image in split 'test' \(splits present: train\)"):
        evaluate_retrieval(_options(setup, tmp_path, karpathy=tmp_path / "train.json"))

    no_itc = tiny_model_folder(tmp_path / "no-itc", model_class=bt.BridgeTowerForPreTraining)  # MLM + ITM
    with pytest.raises(EvaluationError, match=r"retrieval needs both 'itc' and 'itm' \(missing \['itc'\]\)"):
        evaluate_retrieval(_options(setup, tmp_path, model=str(no_itc)))
    itm_only = tiny_model_folder(tmp_path / "itm-only", model_class=bt.BridgeTowerForImageAndTextRetrieval)
    with pytest.raises(EvaluationError, match="has no model for AutoModelForPreTraining"):
        evaluate_retrieval(_options(setup, tmp_path, model=str(itm_only)))
