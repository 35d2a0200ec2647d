"""The common model tester: one battery every towerzoo architecture runs (as transformers' `ModelTesterMixin`).

A test class for an architecture subclasses `CommonModelTests`, lists its `model_classes`, and says how to build a
tiny config, inputs and labels, which output tensors to compare, and their expected shapes. `tests/conftest.py`
parametrises every test over `model_classes` (the `model_class` argument).
"""

import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import torch
from testing_utils import run_without_towerzoo

from towerzoo.conversions.hub_folder import write_hub_folder

ATOL = 1e-5
# Attention backends that run on CPU; flex has no CPU backward, so it is compared under no_grad only.
CPU_BACKENDS = ("sdpa", "flex_attention")


def _namespace(value):
    """Nested dicts → attribute access, as the ModelOutputs they were saved from."""
    if isinstance(value, dict):
        return SimpleNamespace(**{key: _namespace(item) for key, item in value.items()})
    return value


def _comparable(config: dict) -> dict:
    """A config dict without the fields loading fills in (`_name_or_path`, sub-config `dtype`)."""
    return {
        key: _comparable(value) if isinstance(value, dict) else value
        for key, value in config.items()
        if key not in ("_name_or_path", "dtype")
    }


class CommonModelTests:
    """Subclasses set `model_classes` and `auto_classes` ({class name: Auto class}) and implement the hooks below."""

    model_classes: tuple = ()
    auto_classes: dict[str, str] = {}

    # ---- hooks -------------------------------------------------------------------------------------------------
    def get_config(self):
        raise NotImplementedError

    def get_config_for(self, model_class):
        """The config for one class (override when a head needs options, e.g. extra token types)."""
        return self.get_config()

    def prepare_inputs(self, model_class, config) -> dict:
        """A small batch with padding in it."""
        raise NotImplementedError

    def prepare_labels(self, model_class, config, inputs) -> dict:
        """Extra keyword arguments that make the model return a loss."""
        raise NotImplementedError

    def output_tensors(self, model_class, outputs) -> dict[str, torch.Tensor]:
        """The tensors that identify a forward pass (compared across backends, save/load, processes)."""
        raise NotImplementedError

    def expected_shapes(self, model_class, config, inputs) -> dict[str, tuple]:
        raise NotImplementedError

    def unused_parameter_prefixes(self, model_class, inputs) -> tuple[str, ...]:
        """Parameters this forward does not use by design (e.g. the other direction of a two-way model)."""
        return ()

    def build_processor(self, config, tmp_path):
        """A processor to save with the Hub folder (None when the architecture has none)."""
        return None

    # ---- helpers -----------------------------------------------------------------------------------------------
    def make_model(self, model_class, seed: int = 0):
        torch.manual_seed(seed)
        return model_class(self.get_config_for(model_class)).eval()

    def run_model(self, model, inputs) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return self.output_tensors(type(model), model(**inputs))

    @staticmethod
    def assert_close(expected: dict, actual: dict, atol: float = ATOL, what: str = "") -> None:
        assert expected.keys() == actual.keys()
        for name in expected:
            diff = (expected[name] - actual[name]).abs().max().item()
            assert diff <= atol, f"{what}{name} differs by {diff:.3g} (tolerance {atol:g})"

    # ---- the battery -------------------------------------------------------------------------------------------
    def test_forward_shapes(self, model_class):
        model = self.make_model(model_class)
        config = model.config
        inputs = self.prepare_inputs(model_class, config)
        outputs = self.run_model(model, inputs)
        shapes = {name: tuple(tensor.shape) for name, tensor in outputs.items()}
        assert shapes == self.expected_shapes(model_class, config, inputs)
        for name, tensor in outputs.items():
            assert torch.isfinite(tensor).all(), f"{name} has non-finite values"

    def test_save_load_round_trip(self, model_class, tmp_path):
        model = self.make_model(model_class)
        inputs = self.prepare_inputs(model_class, model.config)
        expected = self.run_model(model, inputs)
        model.save_pretrained(tmp_path)
        reloaded = model_class.from_pretrained(tmp_path).eval()
        self.assert_close(expected, self.run_model(reloaded, inputs), atol=0.0, what="after save/load: ")
        assert _comparable(reloaded.config.to_dict()) == _comparable(model.config.to_dict())

    def test_attention_backends_match_eager(self, model_class):
        model = self.make_model(model_class)
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        inputs = self.prepare_inputs(model_class, model.config)
        expected = self.run_model(model, inputs)
        for backend in CPU_BACKENDS:
            model.set_attn_implementation(backend)
            assert model.config._attn_implementation == backend
            self.assert_close(expected, self.run_model(model, inputs), what=f"{backend} vs eager: ")

    def _loss_and_grads(self, model, inputs, labels) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # same dropout masks in every call
        loss = model(**inputs, **labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def test_labels_give_finite_loss_and_gradients(self, model_class):
        model = self.make_model(model_class).train()
        inputs = self.prepare_inputs(model_class, model.config)
        loss, grads = self._loss_and_grads(model, inputs, self.prepare_labels(model_class, model.config, inputs))
        assert loss.ndim == 0 and torch.isfinite(loss)
        assert grads, "no parameter received a gradient"
        assert all(torch.isfinite(g).all() for g in grads.values())
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        unused = (model.base_model_prefix + ".", *self.unused_parameter_prefixes(model_class, inputs))
        head_params = {n for n in trainable if not n.startswith(unused)}
        assert head_params <= grads.keys(), f"head parameters without gradient: {sorted(head_params - grads.keys())}"

    def test_trainer_divides_the_loss_for_gradient_accumulation(self, model_class, tmp_path):
        """The heads return batch-mean losses: Trainer must not take them as already scaled by `num_items_in_batch`
        (it does when `forward` takes **kwargs unless the model says `accepts_loss_kwargs = False`)."""
        import transformers

        args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
        model = self.make_model(model_class)
        trainer = transformers.Trainer(model=model, args=args)
        assert trainer.model_accepts_loss_kwargs is self.loss_uses_num_items_in_batch
        if self.loss_uses_num_items_in_batch:  # then the loss must really be a sum divided by num_items_in_batch
            inputs = self.prepare_inputs(model_class, model.config)
            labels = self.prepare_labels(model_class, model.config, inputs)
            with torch.no_grad():
                mean = model(**inputs, **labels).loss
                halved = model(**inputs, **labels, num_items_in_batch=2 * int((labels["labels"][:, 1:] != -100).sum()))
            assert torch.allclose(halved.loss, mean / 2, atol=1e-6)

    def test_gradient_checkpointing_same_gradients(self, model_class):
        model = self.make_model(model_class).train()
        assert model.supports_gradient_checkpointing
        inputs = self.prepare_inputs(model_class, model.config)
        labels = self.prepare_labels(model_class, model.config, inputs)
        calls = []
        layers = [m for m in model.modules() if hasattr(type(m), "gradient_checkpointing")]
        assert layers, "no GradientCheckpointingLayer found"
        # transformers checkpoints the layer's `forward`, so watch a module called inside it.
        hook = next(layers[0].children()).register_forward_hook(lambda *_: calls.append(1))
        loss, grads = self._loss_and_grads(model, inputs, labels)
        calls_without = len(calls)
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        loss_gc, grads_gc = self._loss_and_grads(model, inputs, labels)
        hook.remove()
        assert len(calls) == 3 * calls_without, "gradient checkpointing did not recompute the layer in backward"
        assert torch.allclose(loss, loss_gc, atol=1e-6)
        assert grads.keys() == grads_gc.keys()
        for name in grads:
            assert torch.allclose(grads[name], grads_gc[name], atol=1e-6), f"gradient of {name} changed"

    def test_device_map_and_no_split_modules(self, model_class, tmp_path):
        from accelerate import infer_auto_device_map

        model = self.make_model(model_class)
        module_types = {type(m).__name__ for m in model.modules()}
        assert set(model._no_split_modules) <= module_types, "a _no_split_modules entry names no module of the model"
        # Split across two (virtual) devices with little memory: no no-split module may straddle devices.
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        device_map = infer_auto_device_map(
            model,
            max_memory={0: size // 3, 1: size // 3, "cpu": size * 2},
            no_split_module_classes=model._no_split_modules,
        )
        assert len(set(device_map.values())) > 1, "the budget was meant to force a split"
        for name, module in model.named_modules():
            if type(module).__name__ in model._no_split_modules:
                placed = {
                    d
                    for key, d in device_map.items()
                    if key == name or key.startswith(name + ".") or name.startswith(key + ".") or key == ""
                }
                assert len(placed) == 1, f"{name} ({type(module).__name__}) is split across {placed}"
        # And device_map="auto" loads and runs (everything on CPU here).
        inputs = self.prepare_inputs(model_class, model.config)
        expected = self.run_model(model, inputs)
        model.save_pretrained(tmp_path)
        auto = model_class.from_pretrained(tmp_path, device_map="auto").eval()
        self.assert_close(expected, self.run_model(auto, inputs), what="device_map='auto': ")

    def test_hub_load_in_fresh_process(self, model_class, tmp_path):
        """Save as a Hub folder, then load it with Auto classes and trust_remote_code in a process where towerzoo is
        not importable, offline, from another working directory: same outputs."""
        model = self.make_model(model_class)
        inputs = self.prepare_inputs(model_class, model.config)
        expected = self.run_model(model, inputs)
        exposed = {name: self.auto_classes[name] for name in (model_class.__name__, self.base_class_name)}
        processor = self.build_processor(model.config, tmp_path)
        folder = write_hub_folder(model, tmp_path / "hub", exposed=exposed, processor=processor)
        torch.save(inputs, tmp_path / "inputs.pt")
        script = textwrap.dedent(
            f"""
            import json
            import torch, transformers
            folder = {str(folder)!r}
            config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
            base = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
            model = getattr(transformers, {self.auto_classes[model_class.__name__]!r}).from_pretrained(
                folder, trust_remote_code=True).eval()
            assert type(model).__name__ == {model_class.__name__!r}, type(model)
            assert "towerzoo" not in type(model).__module__, type(model).__module__
            has_processor = {processor is not None!r}
            processor_class = None
            if has_processor:
                processor = transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=True)
                processor_class = type(processor).__module__ + "." + type(processor).__name__
            inputs = torch.load({str(tmp_path / "inputs.pt")!r})
            with torch.no_grad():
                outputs = model(**inputs)
            def plain(value):  # ModelOutputs of remote classes cannot be unpickled by the parent
                if isinstance(value, dict):
                    return {{key: plain(item) for key, item in value.items()}}
                return value
            torch.save(plain(outputs), {str(tmp_path / "outputs.pt")!r})
            print(json.dumps({{"config": type(config).__name__, "base": type(base).__name__,
                               "processor": processor_class, "module": type(model).__module__}}))
            """
        )
        result = run_without_towerzoo(script, tmp_path)
        info = json.loads(result.stdout.strip().splitlines()[-1])
        assert info["module"].startswith("transformers_modules.")
        assert info["base"] == self.base_class_name
        if processor is not None:  # the folder's own processor class, not a built-in of the same name
            assert info["processor"].startswith("transformers_modules."), info["processor"]
            assert info["processor"].endswith(f".{type(processor).__name__}")
        outputs = _namespace(torch.load(tmp_path / "outputs.pt"))
        self.assert_close(expected, self.output_tensors(model_class, outputs), atol=0.0, what="fresh process: ")
        assert sorted(p.name for p in Path(folder).glob("*.py")) == sorted(self.expected_code_files)

    base_class_name: str = ""
    expected_code_files: tuple = ()
    # transformers' own heads (causal LMs) divide their loss by `num_items_in_batch` when Trainer passes it
    loss_uses_num_items_in_batch: bool = False


def parametrize_model_classes(metafunc) -> None:
    """Parametrise `model_class` over the test class's `model_classes` (called from conftest)."""
    if "model_class" in metafunc.fixturenames and metafunc.cls is not None:
        classes = metafunc.cls.model_classes
        metafunc.parametrize("model_class", classes, ids=[c.__name__ for c in classes])


__all__ = ["CommonModelTests", "parametrize_model_classes"]
