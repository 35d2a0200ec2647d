"""Attention backends: flash cross-attention packing (checked on CPU with a pure-PyTorch varlen stand-in registered
as "flash_attention_2" for the test only), eager/sdpa/flex agreement of the whole model (also with per-sub-config
backends), the error for a flash backend that is not installed, and bf16 agreement on a GPU — for every architecture
built on the shared attention (`ARCHITECTURES`)."""

import importlib.util
import re

import pytest
import torch
import transformers
from testing_utils import padded_text_batch, random_pixels, tiny_bridgetower_config, tiny_managertower_config
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

import towerzoo.models.bridgetower as bt
import towerzoo.models.managertower as mt
from towerzoo.models.bridgetower.tower_attention import TowerAttention, eager_attention_forward, padding_mask_for

ATOL = 1e-5
# name → (bare model class, tiny config builder)
ARCHITECTURES = {
    "bridgetower": (bt.BridgeTowerModel, tiny_bridgetower_config),
    "managertower": (mt.ManagerTowerModel, tiny_managertower_config),
}
# Flash kernels leave padded query rows at zero where eager/sdpa compute (unused) values. The original ManagerTower's
# adaptive image managers attend to every text position, padded rows included, so on padded batches the flash and
# eager results agree only with the padding mask on (`manager_mask_query_padding`).
FLASH_OPTIONS = {"bridgetower": {}, "managertower": {"manager_mask_query_padding": True}}
OUTPUTS = ("text_features", "image_features", "pooler_output", "text_last_hidden_state", "image_last_hidden_state")


def _batch(config, batch_size: int = 3, length: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    input_ids, attention_mask = padded_text_batch(config, batch_size, length, seed)
    assert not attention_mask.all(), "the batch must hold padding"
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": random_pixels(config, batch_size),
    }


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _rel_diff(a: torch.Tensor, reference: torch.Tensor) -> float:
    return _max_diff(a, reference) / reference.float().abs().max().item()


# --------------------------------------------------------------------------------------------------------------------
# (a) flash cross-attention packing, without flash-attn
# --------------------------------------------------------------------------------------------------------------------


class VarlenReference:
    """Pure-PyTorch stand-in for a flash kernel, called the way transformers calls `flash_attention_forward`:
    query/key/value `(batch, heads, len, head_dim)`, output `(batch, q_len, heads, head_dim)`.

    With `cu_seq_lens_q/_k` and `max_length_q/_k` it attends within each packed segment (batch dim 1, as a varlen
    kernel). Otherwise it follows transformers' flash path for a 2-D `(batch, kv_len)` padding mask: padded keys are
    ignored and padded query rows come back as zeros. A 2-D mask with q_len != kv_len is the case transformers gets
    wrong (its wrapper unpads queries with the mask's last q_len columns, issue #35032), so reaching here with one
    fails the test.
    """

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(
        self,
        module,
        query,
        key,
        value,
        attention_mask,
        dropout: float = 0.0,
        scaling: float | None = None,
        cu_seq_lens_q=None,
        cu_seq_lens_k=None,
        max_length_q=None,
        max_length_k=None,
        **kwargs,
    ):
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        varlen = cu_seq_lens_q is not None
        self.calls.append(
            {
                "module": module,
                "varlen": varlen,
                "mask": None if attention_mask is None else tuple(attention_mask.shape),
                "q_len": query.shape[2],
                "kv_len": key.shape[2],
                "cu_seq_lens_q": None if not varlen else cu_seq_lens_q.tolist(),
                "cu_seq_lens_k": None if not varlen else cu_seq_lens_k.tolist(),
                "max_length_q": max_length_q,
                "max_length_k": max_length_k,
            }
        )
        assert dropout == 0.0
        if varlen:
            return self._varlen(query, key, value, attention_mask, scaling, cu_seq_lens_q, cu_seq_lens_k), None
        return self._padded(query, key, value, attention_mask, scaling), None

    @staticmethod
    def _varlen(query, key, value, attention_mask, scaling, cu_q, cu_k):
        assert attention_mask is None, "a varlen call carries its layout in cu_seq_lens, not in a mask"
        assert query.shape[0] == key.shape[0] == value.shape[0] == 1, "varlen inputs are packed into batch 1"
        assert cu_q.dtype == cu_k.dtype == torch.int32 and len(cu_q) == len(cu_k)
        assert int(cu_q[-1]) == query.shape[2] and int(cu_k[-1]) == key.shape[2]
        outputs = []
        for i in range(len(cu_q) - 1):
            q = query[0, :, cu_q[i] : cu_q[i + 1]]
            k = key[0, :, cu_k[i] : cu_k[i + 1]]
            v = value[0, :, cu_k[i] : cu_k[i + 1]]
            weights = torch.softmax((q @ k.transpose(-1, -2)).float() * scaling, dim=-1).to(v.dtype)
            outputs.append(weights @ v)  # (heads, q_i, dim)
        return torch.cat(outputs, dim=1).transpose(0, 1).unsqueeze(0)  # (1, total_q, heads, dim)

    @staticmethod
    def _padded(query, key, value, attention_mask, scaling):
        scores = (query @ key.transpose(-1, -2)).float() * scaling
        if attention_mask is not None:
            assert attention_mask.ndim == 2, f"flash backends take a 2-D padding mask, got {attention_mask.ndim}-D"
            assert query.shape[2] == key.shape[2], "cross-attention with a key padding mask reached the flash wrapper"
            keep = attention_mask.bool()
            scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        output = (torch.softmax(scores, dim=-1).to(value.dtype) @ value).transpose(1, 2)
        if attention_mask is not None:
            output = output * attention_mask.bool()[:, :, None, None]  # flash pads unpadded rows back with zeros
        return output


@pytest.fixture
def fake_flash(monkeypatch) -> VarlenReference:
    """Register the stand-in as "flash_attention_2" for this test only (monkeypatch restores the real one)."""
    assert ALL_ATTENTION_FUNCTIONS._global_mapping is AttentionInterface._global_mapping
    fake = VarlenReference()
    monkeypatch.setitem(AttentionInterface._global_mapping, "flash_attention_2", fake)
    assert ALL_ATTENTION_FUNCTIONS.get_interface("flash_attention_2", None) is fake
    return fake


def test_fake_flash_is_registered_only_inside_the_test():
    assert not isinstance(ALL_ATTENTION_FUNCTIONS["flash_attention_2"], VarlenReference)


def _configs(implementation: str):
    reference = tiny_bridgetower_config()
    reference._attn_implementation = "eager"
    other = tiny_bridgetower_config()
    other._attn_implementation = implementation  # set directly: skips transformers' flash-attn import check
    return reference, other


@pytest.mark.parametrize(
    ("q_len", "kv_lengths"),
    [
        (7, [11, 8, 3, 1]),  # text → image shape: fewer queries than keys; one row with a single key
        (13, [5, 2, 5, 4]),  # image → text shape: more queries than keys
        (6, [9, 9, 4]),  # two unpadded rows
    ],
)
def test_flash_cross_attention_packs_queries_and_kept_keys(fake_flash, q_len, kv_lengths):
    torch.manual_seed(0)
    eager_config, flash_config = _configs("flash_attention_2")
    hidden, heads, batch, kv_len = 64, 4, len(kv_lengths), max(kv_lengths)
    attention = TowerAttention(eager_config, hidden, heads, is_cross_attention=True).eval()
    queries = torch.randn(batch, q_len, hidden)
    keys = torch.randn(batch, kv_len, hidden)
    key_padding = (torch.arange(kv_len)[None, :] < torch.tensor(kv_lengths)[:, None]).long()

    eager_mask = padding_mask_for(eager_config, queries, key_padding, keys=keys)
    flash_mask = padding_mask_for(flash_config, queries, key_padding, keys=keys)
    assert eager_mask.shape == (batch, 1, q_len, kv_len) and eager_mask.is_floating_point()
    assert flash_mask.shape == (batch, kv_len)

    with torch.no_grad():
        expected = attention(queries, eager_mask, key_value_states=keys)[0]
        attention.config = flash_config
        got, weights = attention(queries, flash_mask, key_value_states=keys)
        # padded keys must not matter
        scrambled = keys.clone()
        scrambled[~key_padding.bool()] = 1e3 * torch.randn(int((~key_padding.bool()).sum()), hidden)
        got_scrambled = attention(queries, flash_mask, key_value_states=scrambled)[0]

    assert weights is None
    assert got.shape == expected.shape == (batch, q_len, hidden)
    assert _max_diff(got, expected) <= ATOL
    assert _max_diff(got_scrambled, expected) <= ATOL
    assert len(fake_flash.calls) == 2 and all(call["varlen"] for call in fake_flash.calls)
    call = fake_flash.calls[0]
    assert call["cu_seq_lens_q"] == [i * q_len for i in range(batch + 1)]
    assert call["cu_seq_lens_k"] == [sum(kv_lengths[:i]) for i in range(batch + 1)]
    assert (call["max_length_q"], call["max_length_k"]) == (q_len, max(kv_lengths))
    assert (call["q_len"], call["kv_len"]) == (batch * q_len, sum(kv_lengths))


def test_flash_without_padding_takes_the_plain_path(fake_flash):
    """No padded key → no mask → the ordinary (batched) flash call, not the packed one."""
    torch.manual_seed(0)
    eager_config, flash_config = _configs("flash_attention_2")
    attention = TowerAttention(eager_config, 64, 4, is_cross_attention=True).eval()
    queries, keys = torch.randn(2, 5, 64), torch.randn(2, 8, 64)
    full = torch.ones(2, 8, dtype=torch.long)
    assert padding_mask_for(flash_config, queries, full, keys=keys) is None
    with torch.no_grad():
        expected = attention(queries, None, key_value_states=keys)[0]
        attention.config = flash_config
        got = attention(queries, None, key_value_states=keys)[0]
    assert _max_diff(got, expected) <= ATOL
    assert [(c["varlen"], c["mask"]) for c in fake_flash.calls] == [(False, None)]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_whole_model_with_flash_stand_in_matches_eager(fake_flash, architecture):
    """Every attention call of the model through the flash interface: self-attention with a 2-D mask (transformers'
    unpadding, correct when q_len == kv_len) and image → text cross-attention packed by towerzoo."""
    torch.manual_seed(0)
    model_class, tiny_config = ARCHITECTURES[architecture]
    config = tiny_config(**FLASH_OPTIONS[architecture])
    model = model_class(config).eval()
    inputs = _batch(config)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        model.set_attn_implementation("eager")
        expected = model(**inputs)
        model.config._attn_implementation = "flash_attention_2"  # propagates to the tower sub-configs
        assert model.text_model.config._attn_implementation == "flash_attention_2"
        got = model(**inputs)
    for name in ("image_features", "pooler_output", "image_last_hidden_state"):
        assert _max_diff(getattr(got, name), getattr(expected, name)) <= ATOL, name
    for name in ("text_features", "text_last_hidden_state"):  # flash leaves padded query rows at zero
        assert _max_diff(getattr(got, name)[real], getattr(expected, name)[real]) <= ATOL, name
    packed = [c for c in fake_flash.calls if c["varlen"]]
    assert len(packed) == config.num_hidden_layers  # one image → text cross-attention per cross-modal layer
    assert all(c["cu_seq_lens_k"][-1] == int(real.sum()) for c in packed)


# --------------------------------------------------------------------------------------------------------------------
# (b) the whole model: eager, sdpa, flex_attention, and per-sub-config backends
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def tiny_model_and_reference(request):
    torch.manual_seed(0)
    model_class, tiny_config = ARCHITECTURES[request.param]
    config = tiny_config()
    model = model_class(config).eval()
    with torch.no_grad():  # move every parameter off its init so no LayerNorm/bias is trivially 1 or 0
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    inputs = _batch(config, batch_size=4, length=10)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        expected = model(**inputs)
    return model, inputs, expected


def _assert_matches(got, expected, label: str) -> None:
    for name in OUTPUTS:
        diff = _max_diff(getattr(got, name), getattr(expected, name))
        assert diff <= ATOL, f"{label}: {name} differs from eager by {diff:.3g}"


@pytest.mark.parametrize("backend", ["sdpa", "flex_attention"])
def test_backends_match_eager_with_padding(tiny_model_and_reference, backend):
    model, inputs, expected = tiny_model_and_reference
    model.set_attn_implementation(backend)
    try:
        for sub in (model.config, model.text_model.config, model.vision_model.config):
            assert sub._attn_implementation == backend
        with torch.no_grad():  # flex_attention has no backward on CPU
            _assert_matches(model(**inputs), expected, backend)
    finally:
        model.set_attn_implementation("eager")


class DispatchRecorder:
    """Wraps the registered eager/sdpa/flex functions to record which backend each attention module called."""

    def __init__(self, monkeypatch):
        self.used: dict[int, set[str]] = {}
        for name in ("sdpa", "flex_attention"):
            monkeypatch.setitem(
                AttentionInterface._global_mapping, name, self._wrap(name, ALL_ATTENTION_FUNCTIONS[name])
            )
        # "eager" is not in the mapping: get_interface falls back to the module's eager function; register one.
        monkeypatch.setitem(AttentionInterface._global_mapping, "eager", self._wrap("eager", eager_attention_forward))

    def _wrap(self, name, function):
        def recorded(module, *args, **kwargs):
            self.used.setdefault(id(module), set()).add(name)
            return function(module, *args, **kwargs)

        return recorded

    def backends_of(self, modules) -> set[str]:
        return set().union(*(self.used.get(id(m), set()) for m in modules))


def _attention_modules(module) -> list[TowerAttention]:
    # by name: each Hub folder imports its own copy of the shared module, so the classes are distinct objects
    return [m for m in module.modules() if type(m).__name__ == "TowerAttention"]


PER_TOWER = [
    {"text_config": "sdpa", "vision_config": "eager", "": "flex_attention"},
    {"text_config": "flex_attention", "vision_config": "sdpa", "": "eager"},
    {"text_config": "eager", "vision_config": "flex_attention", "": "sdpa"},
]


@pytest.mark.parametrize("how", ["from_config", "set_attn_implementation", "from_pretrained"])
@pytest.mark.parametrize("backends", PER_TOWER, ids=lambda b: "-".join(f"{k or 'cross'}={v}" for k, v in b.items()))
def test_per_sub_config_backends(tiny_model_and_reference, monkeypatch, tmp_path, backends, how):
    reference_model, inputs, expected = tiny_model_and_reference
    if how == "from_config":
        model = type(reference_model)._from_config(reference_model.config, attn_implementation=backends)
        model.load_state_dict(reference_model.state_dict())
    elif how == "set_attn_implementation":
        model = type(reference_model)(reference_model.config)
        model.load_state_dict(reference_model.state_dict())
        model.set_attn_implementation(backends)
    else:
        reference_model.save_pretrained(tmp_path)
        model = type(reference_model).from_pretrained(tmp_path, attn_implementation=backends)
    model.eval()
    assert model.text_model.config._attn_implementation == backends["text_config"]
    assert model.vision_model.config._attn_implementation == backends["vision_config"]
    assert model.config._attn_implementation == backends[""]

    recorder = DispatchRecorder(monkeypatch)
    with torch.no_grad():
        got = model(**inputs)
    _assert_matches(got, expected, str(backends))
    towers = set(_attention_modules(model.text_model)) | set(_attention_modules(model.vision_model))
    cross_modal = [m for m in _attention_modules(model) if m not in towers]
    assert recorder.backends_of(_attention_modules(model.text_model)) == {backends["text_config"]}
    assert recorder.backends_of(_attention_modules(model.vision_model)) == {backends["vision_config"]}
    assert recorder.backends_of(cross_modal) == {backends[""]}
    assert len(cross_modal) == 4 * model.config.num_hidden_layers


# --------------------------------------------------------------------------------------------------------------------
# (c) flash attention requested without the package
# --------------------------------------------------------------------------------------------------------------------

FLASH_PACKAGES = {
    "flash_attention_2": ("flash_attn", "flash-attn"),
    "flash_attention_3": ("flash_attn_3", "flash-attn-3"),
}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("backend", list(FLASH_PACKAGES))
@pytest.mark.parametrize("how", ["from_config", "set_attn_implementation", "from_pretrained"])
def test_missing_flash_package_raises_import_error(tmp_path, backend, how):
    module, _ = FLASH_PACKAGES[backend]
    if _installed(module):
        pytest.skip(f"{module} is installed")
    config = tiny_bridgetower_config()
    model = bt.BridgeTowerModel(config)
    if how == "from_pretrained":
        model.save_pretrained(tmp_path)
    with pytest.raises(ImportError) as error:
        if how == "from_config":
            bt.BridgeTowerModel._from_config(config, attn_implementation=backend)
        elif how == "set_attn_implementation":
            model.set_attn_implementation(backend)
        else:
            bt.BridgeTowerModel.from_pretrained(tmp_path, attn_implementation=backend)
    version = backend[-1]
    assert re.search(rf"flash.?attention.?{version}|flash[-_]attn", str(error.value), re.IGNORECASE), error.value
    if how == "set_attn_implementation":  # nothing silently switched
        assert model.config._attn_implementation == "sdpa"
        assert {m.config._attn_implementation for m in _attention_modules(model)} == {"sdpa"}


def test_missing_flash_attn_message_names_the_pip_package_and_the_alternative():
    if _installed("flash_attn"):
        pytest.skip("flash_attn is installed")
    with pytest.raises(ImportError, match=r"flash-attn>=2\.3\.3.*attn_implementation='sdpa'"):
        bt.BridgeTowerModel._from_config(tiny_bridgetower_config(), attn_implementation="flash_attention_2")
    model = bt.BridgeTowerModel(tiny_bridgetower_config())
    with pytest.raises(ImportError, match=r"flash-attn-3"):
        model.set_attn_implementation("flash_attention_3")


# --------------------------------------------------------------------------------------------------------------------
# bf16 agreement (runs on CPU for eager/sdpa/flex; the GPU class below adds flash kernels)
# --------------------------------------------------------------------------------------------------------------------

# bf16 differences are measured relative to the reference's scale: max|out - ref| / max|ref|. bf16 keeps 8 significant
# bits (one step = 2**-8 ≈ 0.4% relative); after the tiny model's 3 tower + 2 cross-modal layers, eager/sdpa/flex in
# bf16 land 1.0-1.8% from fp32 eager and from each other on CPU (pooler, image and real-token text features, three
# seeds). 6% leaves ~3x headroom for GPU kernels' different accumulation orders. Masking itself is checked in fp32 at
# 1e-5 above; these tests check that each kernel runs in bf16 and agrees to bf16 precision.
BF16_REL_TOL = 0.06


# Every flash generation supports head_dim 64 (FA3 kernels are built for a few head sizes only).
HEAD_DIM_64 = {"text_config": {"num_attention_heads": 1}, "num_attention_heads": 1}


def _bf16_compare(
    device: str, backends, reference_backend: str = "eager", architecture: str = "bridgetower", **config_overrides
) -> dict:
    torch.manual_seed(0)
    model_class, tiny_config = ARCHITECTURES[architecture]
    config = tiny_config(**config_overrides)
    model = model_class(config).eval().to(device)
    inputs = {k: v.to(device) for k, v in _batch(config, batch_size=4, length=10).items()}
    real = inputs["attention_mask"].bool()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        fp32 = model(**inputs)
        model.to(torch.bfloat16)
        bf16_inputs = {**inputs, "pixel_values": inputs["pixel_values"].to(torch.bfloat16)}
        outputs = {}
        for backend in (reference_backend, *backends):
            model.set_attn_implementation(backend)
            outputs[backend] = model(**bf16_inputs)
    diffs = {}
    for backend, out in outputs.items():
        for against, ref in (("fp32", fp32), ("bf16_" + reference_backend, outputs[reference_backend])):
            diffs[(backend, against, "pooler_output")] = _rel_diff(out.pooler_output, ref.pooler_output)
            diffs[(backend, against, "image_features")] = _rel_diff(out.image_features, ref.image_features)
            diffs[(backend, against, "text_features")] = _rel_diff(out.text_features[real], ref.text_features[real])
    return diffs


def _assert_bf16(diffs: dict) -> None:
    for (backend, against, name), diff in diffs.items():
        assert diff <= BF16_REL_TOL, f"bf16 {backend} vs {against}: {name} differs by {diff:.3g} of its scale"


def _flash_cross_attention_vs_eager(device: str, backend: str, dtype: torch.dtype) -> float:
    """One cross-attention module (head_dim 64), keys padded to several lengths: `backend` in `dtype` against fp32
    eager with the 4-D mask. Returns the largest difference relative to the output's scale."""
    torch.manual_seed(0)
    eager_config, flash_config = _configs(backend)
    attention = TowerAttention(eager_config, 128, 2, is_cross_attention=True).eval().to(device)
    kv_lengths = torch.tensor([11, 8, 3, 1], device=device)
    queries = torch.randn(4, 7, 128, device=device)
    keys = torch.randn(4, 11, 128, device=device)
    key_padding = (torch.arange(11, device=device)[None, :] < kv_lengths[:, None]).long()
    with torch.no_grad():
        expected = attention(queries, padding_mask_for(eager_config, queries, key_padding, keys=keys), keys)[0]
        attention.to(dtype)
        attention.config = flash_config
        queries, keys = queries.to(dtype), keys.to(dtype)
        got = attention(queries, padding_mask_for(flash_config, queries, key_padding, keys=keys), keys)[0]
    return _rel_diff(got, expected)


def test_flash_cross_attention_helper_with_stand_in(fake_flash):
    """The GPU test's helper, run here with the stand-in kernel."""
    assert _flash_cross_attention_vs_eager("cpu", "flash_attention_2", torch.float32) <= ATOL
    assert [c["varlen"] for c in fake_flash.calls] == [True]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_bf16_backends_agree_on_cpu(architecture):
    _assert_bf16(_bf16_compare("cpu", ("sdpa", "flex_attention"), architecture=architecture))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestBf16OnGpu:
    @pytest.fixture(autouse=True)
    def _no_tf32(self):
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        yield
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn

    @pytest.mark.parametrize("architecture", ARCHITECTURES)
    def test_sdpa_flex_eager_agree_in_bf16(self, architecture):
        _assert_bf16(_bf16_compare("cuda", ("sdpa", "flex_attention"), architecture=architecture))

    @pytest.mark.parametrize("architecture", ARCHITECTURES)
    @pytest.mark.parametrize("backend", list(FLASH_PACKAGES))
    def test_flash_agrees_in_bf16(self, backend, architecture):
        available = getattr(transformers.utils, f"is_flash_attn_{backend[-1]}_available", lambda: False)
        if not available():
            pytest.skip(f"{FLASH_PACKAGES[backend][1]} is not installed or this GPU cannot run it")
        _assert_bf16(
            _bf16_compare(
                "cuda",
                (backend,),
                reference_backend="sdpa",
                architecture=architecture,
                **HEAD_DIM_64,
                **FLASH_OPTIONS[architecture],
            )
        )

    @pytest.mark.parametrize("backend", list(FLASH_PACKAGES))
    def test_flash_cross_attention_kernel_matches_eager(self, backend):
        """The packed varlen call on the real kernel: one cross-attention module, several key padding lengths."""
        available = getattr(transformers.utils, f"is_flash_attn_{backend[-1]}_available", lambda: False)
        if not available():
            pytest.skip(f"{FLASH_PACKAGES[backend][1]} is not installed or this GPU cannot run it")
        assert _flash_cross_attention_vs_eager("cuda", backend, torch.bfloat16) <= BF16_REL_TOL
