"""`towerzoo eval video-retrieval` on tiny real videos and a tiny VidLA folder (converted from a random tiny CLIP):
the metrics are the retrieval_recall metric on the model's own similarities, dual softmax by hand, two processes equal
one, a killed run resumes, embeddings are cached, the DiDeMo and ActivityNet layouts, and bad input."""

import json

import evaluate
import pytest
import torch
import transformers
from evaluation_fixtures import run_eval_in_processes
from safetensors.torch import load_file
from video_fixtures import msrvtt_caption, tiny_vidla_folder, write_broken_videos, write_msrvtt, write_msrvtt_videos

from towerzoo.evaluation import runner
from towerzoo.evaluation.metrics import metric_path
from towerzoo.evaluation.runner import EvaluationError
from towerzoo.evaluation.video_retrieval import METRIC_NAMES, VideoRetrievalOptions, evaluate_video_retrieval

NUM_VIDEOS, NUM_FRAMES = 6, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("video-retrieval")
    model = tiny_vidla_folder(root)
    video_ids = write_msrvtt_videos(root / "videos", NUM_VIDEOS, short=4)  # video 4 is shorter than NUM_FRAMES
    csv_path = write_msrvtt(root / "MSRVTT_JSFUSION_test.csv", video_ids)
    return {"model": model, "videos": root / "videos", "annotations": csv_path, "video_ids": video_ids}


def _options(setup, tmp_path, **overrides) -> VideoRetrievalOptions:
    values = {
        "model": str(setup["model"]),
        "dataset": "msrvtt",
        "annotations": setup["annotations"],
        "videos": setup["videos"],
        "output": tmp_path / "results.json",
        "save_scores": tmp_path / "scores.safetensors",
        "cache_dir": tmp_path / "cache",
        "num_frames": NUM_FRAMES,
        "batch_size": 4,
        "num_workers": 0,
        **overrides,
    }
    return VideoRetrievalOptions(**values)


def _own_similarity(setup, video_ids=None, texts=None) -> torch.Tensor:
    """Texts x videos cosine similarities, each embedding computed alone with the model's own methods."""
    model = transformers.AutoModel.from_pretrained(setup["model"], trust_remote_code=True).eval()
    processor = transformers.AutoProcessor.from_pretrained(setup["model"], trust_remote_code=True)
    video_ids = video_ids or setup["video_ids"]
    texts = texts or [msrvtt_caption(k) for k in range(len(video_ids))]
    with torch.no_grad():
        videos = [
            model.get_video_features(
                **processor(videos=str(setup["videos"] / f"{v}.mp4"), num_frames=NUM_FRAMES, return_tensors="pt")
            )
            for v in video_ids
        ]
        queries = [model.get_text_features(**processor(text=text, return_tensors="pt")) for text in texts]
    normalize = torch.nn.functional.normalize
    return normalize(torch.cat(queries), dim=-1) @ normalize(torch.cat(videos), dim=-1).t()


def _metric(scores: torch.Tensor, text_to_video: list[int]) -> dict:
    computed = evaluate.load(metric_path("retrieval_recall")).compute(
        predictions=scores.tolist(), references=text_to_video, rank_statistics=True
    )
    return {name: computed[metric_name] for metric_name, name in METRIC_NAMES.items()}


def test_metrics_are_the_metric_on_the_models_own_similarities(setup, tmp_path):
    results = evaluate_video_retrieval(_options(setup, tmp_path, num_workers=1))  # videos decoded in a worker
    similarity = _own_similarity(setup)
    saved = load_file(tmp_path / "scores.safetensors")
    assert set(saved) == {"similarity", "text_to_video"}
    torch.testing.assert_close(saved["similarity"], similarity, atol=1e-5, rtol=0)
    assert results["metrics"] == pytest.approx(_metric(similarity, list(range(NUM_VIDEOS))))
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["task"] == "video-retrieval" and written["dataset"] == "msrvtt" and not written["dual_softmax"]
    assert written["counts"] == {"videos": 6, "texts": 6, "truncated_texts": 0, "short_videos": 1}
    assert written["skipped"] == {} and written["config"]["num_frames"] == NUM_FRAMES
    assert "dual_softmax_metrics" not in written
    assert {"loading", "embedding", "scoring", "total"} <= set(written["timing"])
    assert not (tmp_path / "results.json.work").exists()


def test_dual_softmax_is_the_hand_computation(setup, tmp_path):
    temperature = 0.05
    results = evaluate_video_retrieval(
        _options(setup, tmp_path, dual_softmax=True, dual_softmax_temperature=temperature)
    )
    saved = load_file(tmp_path / "scores.safetensors")
    sim = saved["similarity"].double()
    n_texts, n_videos = sim.shape
    by_hand_t2v = torch.empty_like(sim)
    by_hand_v2t = torch.empty_like(sim)
    for t in range(n_texts):
        for v in range(n_videos):
            column = torch.exp(sim[:, v] / temperature)  # the video's prior over every query
            by_hand_t2v[t, v] = sim[t, v] * column[t] / column.sum() * n_texts
            row = torch.exp(sim[t, :] / temperature)  # the query's prior over every video
            by_hand_v2t[t, v] = sim[t, v] * row[v] / row.sum() * n_videos
    torch.testing.assert_close(saved["dual_softmax_text_to_video"].double(), by_hand_t2v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(saved["dual_softmax_video_to_text"].double(), by_hand_v2t, atol=1e-5, rtol=1e-5)
    t2v = _metric(by_hand_t2v.float(), list(range(n_videos)))
    v2t = _metric(by_hand_v2t.float(), list(range(n_videos)))
    dual = results["dual_softmax_metrics"]
    assert dual["transductive"] is True and results["dual_softmax"] is True
    assert {k: dual[k] for k in t2v if k.startswith("text_to_video")} == pytest.approx(
        {k: v for k, v in t2v.items() if k.startswith("text_to_video")}
    )
    assert {k: dual[k] for k in v2t if k.startswith("video_to_text")} == pytest.approx(
        {k: v for k, v in v2t.items() if k.startswith("video_to_text")}
    )
    assert results["metrics"] == pytest.approx(_metric(saved["similarity"], list(range(n_videos))))
    assert "transductive" in results["protocol"]["dual_softmax"]


def test_two_processes_give_the_single_process_result(setup, tmp_path):
    single = evaluate_video_retrieval(_options(setup, tmp_path / "single", batch_size=2))
    sharded_dir = tmp_path / "sharded"
    run_eval_in_processes(
        [
            *("video-retrieval", "--model", str(setup["model"]), "--dataset", "msrvtt"),
            *("--annotations", str(setup["annotations"]), "--videos", str(setup["videos"])),
            *("--num-frames", str(NUM_FRAMES), "--batch-size", "2", "--num-workers", "0"),
            *("--cache-dir", str(sharded_dir / "cache"), "--save-scores", str(sharded_dir / "scores.safetensors")),
            *("--output", str(sharded_dir / "results.json")),
        ]
    )
    sharded = json.loads((sharded_dir / "results.json").read_text())
    assert sharded["config"]["num_processes"] == 2 and not sharded["embedding_cache"]["reused"]
    assert sharded["metrics"] == single["metrics"] and sharded["counts"] == single["counts"]
    single_scores = load_file(tmp_path / "single" / "scores.safetensors")
    for name, tensor in load_file(sharded_dir / "scores.safetensors").items():
        torch.testing.assert_close(tensor, single_scores[name], atol=1e-6, rtol=0)


def test_killed_run_resumes_and_embeddings_are_cached(setup, tmp_path, monkeypatch):
    reference = evaluate_video_retrieval(_options(setup, tmp_path / "reference", batch_size=2))
    load_batch = runner.BatchInputs.__getitem__
    loaded = {"batches": 0}

    def killed_at_the_second_text_batch(self, i):
        if self.make_inputs.__name__ == "text_batch":
            loaded["batches"] += 1
            if loaded["batches"] == 2:
                raise KeyboardInterrupt("killed")
        return load_batch(self, i)

    options = _options(setup, tmp_path / "resumed", batch_size=2)
    monkeypatch.setattr(runner.BatchInputs, "__getitem__", killed_at_the_second_text_batch)
    with pytest.raises(KeyboardInterrupt):
        evaluate_video_retrieval(options)
    assert not options.output.exists()
    monkeypatch.undo()
    resumed = evaluate_video_retrieval(options)
    assert resumed["batches"]["video-embeddings"] == {"computed_batches": 0, "resumed_batches": 3}
    assert resumed["batches"]["text-embeddings"] == {"computed_batches": 2, "resumed_batches": 1}
    assert resumed["metrics"] == reference["metrics"] and not resumed["embedding_cache"]["reused"]
    reference_scores = load_file(tmp_path / "reference" / "scores.safetensors")
    assert torch.equal(
        load_file(tmp_path / "resumed" / "scores.safetensors")["similarity"], reference_scores["similarity"]
    )

    # the same command again: embeddings from the cache, no batch runs; dual softmax reuses them too
    again = evaluate_video_retrieval(_options(setup, tmp_path / "resumed", batch_size=2, dual_softmax=True))
    assert again["embedding_cache"] == {"path": resumed["embedding_cache"]["path"], "reused": True}
    assert again["batches"] == {} and again["metrics"] == reference["metrics"]
    # other options (frames) get their own entry
    other = evaluate_video_retrieval(_options(setup, tmp_path / "resumed", batch_size=2, num_frames=2))
    assert not other["embedding_cache"]["reused"] and other["counts"]["short_videos"] == 0
    assert len(list((tmp_path / "resumed" / "cache").glob("*.safetensors"))) == 2


def test_didemo_and_activitynet_paragraphs(setup, tmp_path):
    ids = setup["video_ids"][:3]
    moments = [
        {"video": f"{ids[0]}.mp4", "description": "a cat sits", "times": [[0, 0]]},
        {"video": f"{ids[1]}.mp4", "description": "two dogs play", "times": [[0, 1]]},
        {"video": f"{ids[0]}.mp4", "description": " on the mat ", "times": [[1, 1]]},
        {"video": f"{ids[2]}.mp4", "description": "the park", "times": [[2, 2]]},
    ]
    (tmp_path / "didemo.json").write_text(json.dumps(moments))
    paragraphs = ["a cat sits on the mat", "two dogs play", "the park"]
    didemo = evaluate_video_retrieval(
        _options(setup, tmp_path / "didemo", dataset="didemo", annotations=tmp_path / "didemo.json")
    )
    expected = _metric(_own_similarity(setup, ids, paragraphs), [0, 1, 2])
    assert didemo["metrics"] == pytest.approx(expected) and didemo["counts"]["videos"] == 3
    activitynet = {
        f"v_{ids[0]}": {"duration": 1.0, "timestamps": [[0, 1], [0, 1]], "sentences": ["a cat sits", " on the mat"]},
        f"v_{ids[1]}": {"duration": 1.0, "timestamps": [[0, 1]], "sentences": ["two dogs play"]},
        f"v_{ids[2]}": {"duration": 1.0, "timestamps": [[0, 1]], "sentences": ["the park "]},
    }
    (tmp_path / "val_1.json").write_text(json.dumps(activitynet))
    anet = evaluate_video_retrieval(
        _options(setup, tmp_path / "anet", dataset="activitynet", annotations=tmp_path / "val_1.json")
    )
    assert anet["metrics"] == pytest.approx(expected)


def test_bad_input_fails_clearly(setup, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for video_id in setup["video_ids"]:
        (videos / f"{video_id}.mp4").symlink_to(setup["videos"] / f"{video_id}.mp4")
    (tmp_path / "broken").mkdir()
    broken = write_broken_videos(tmp_path / "broken")
    ids = [*setup["video_ids"], "video9001", "video9002", "video9003"]
    (videos / "video9001.mp4").symlink_to(broken["corrupt"])
    (videos / "video9002.mp4").symlink_to(broken["empty"])  # zero-length
    annotations = write_msrvtt(tmp_path / "test.csv", ids)
    options = {"videos": videos, "annotations": annotations}
    with pytest.raises(EvaluationError, match=r"1 videos .* missing from .*video9003.*--skip-missing-videos"):
        evaluate_video_retrieval(_options(setup, tmp_path, **options))
    with pytest.raises(EvaluationError, match=r"cannot read video .*video900[12]\.mp4.*--skip-bad-videos"):
        evaluate_video_retrieval(_options(setup, tmp_path, **options, skip_missing_videos=True))
    results = evaluate_video_retrieval(
        _options(setup, tmp_path, **options, skip_missing_videos=True, skip_bad_videos=True)
    )
    assert results["skipped"] == {"missing_videos": 1, "unreadable_videos": 2}
    assert results["counts"] == {"videos": 6, "texts": 6, "truncated_texts": 0, "short_videos": 1}
    assert results["metrics"] == pytest.approx(_metric(_own_similarity(setup), list(range(NUM_VIDEOS))))

    (tmp_path / "bad.csv").write_text("video,caption\nvideo7000,a cat\n")
    with pytest.raises(EvaluationError, match="MSRVTT_JSFUSION_test.csv layout"):
        evaluate_video_retrieval(_options(setup, tmp_path, annotations=tmp_path / "bad.csv"))
    (tmp_path / "empty.csv").write_text("key,vid_key,video_id,sentence\nret0,msr7000,video7000, \n")
    with pytest.raises(EvaluationError, match="video video7000 has an empty caption"):
        evaluate_video_retrieval(_options(setup, tmp_path, annotations=tmp_path / "empty.csv"))
    (tmp_path / "other.json").write_text(json.dumps({"video7000": {"sentences": ["a cat"]}}))
    with pytest.raises(EvaluationError, match="not a DiDeMo annotations file"):
        evaluate_video_retrieval(_options(setup, tmp_path, dataset="didemo", annotations=tmp_path / "other.json"))
    with pytest.raises(EvaluationError, match="is not valid JSON"):
        evaluate_video_retrieval(_options(setup, tmp_path, dataset="activitynet", annotations=tmp_path / "empty.csv"))
    with pytest.raises(EvaluationError, match="flash kernels cannot take"):
        evaluate_video_retrieval(_options(setup, tmp_path, attn_implementation="flash_attention_2"))


def test_cli_reports_bad_input_in_one_line(setup, tmp_path, capsys):
    from towerzoo.cli import main

    argv = ["eval", "video-retrieval", "--model", str(setup["model"]), "--dataset", "msrvtt"]
    assert main([*argv, "--annotations", str(setup["annotations"])]) == 2
    assert "needs --videos" in capsys.readouterr().err
    argv += ["--annotations", str(setup["annotations"]), "--videos", str(tmp_path / "none")]
    assert main(argv) == 2
    assert "video folder" in capsys.readouterr().err
