"""The per-model runtime (cmrm_guard/runtime.py): model thread, lock, stop flag, generation worker."""

from __future__ import annotations

import importlib.util
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import StoppingCriteria

import cmrm_guard
import cmrm_guard.runtime as runtime
from cmrm_guard import SteeredVLM, count_hooks
from cmrm_guard.errors import ModelNotFoundError
from tests.conftest import image_chat, random_vectors, tiny

PACKAGE = Path(cmrm_guard.__file__).parent


def test_one_runtime_module_holds_thread_lock_stop_flag_and_worker():
    for gone in ("cmrm_guard.model_thread", "cmrm_guard.streaming", "cmrm_guard.langchain.streaming"):
        assert importlib.util.find_spec(gone) is None, gone
    model, _ = tiny("llava")
    assert runtime.model_lock(model) is runtime.model_lock(model)
    seen = runtime.run_on_model_thread(
        model, lambda: (threading.current_thread().name, runtime.on_model_thread())
    )
    assert seen[0].startswith(runtime.THREAD_PREFIX) and seen[1] is True


def test_forward_runs_with_the_callers_grad_and_inference_mode():
    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor, vectors=random_vectors(2, 64, 3.0))
    chat = [image_chat()]
    with torch.inference_mode():
        inferred = svlm.forward(chat).logits
    assert inferred.is_inference() and not inferred.requires_grad
    with torch.no_grad():
        plain = svlm.forward(chat).logits
    assert not plain.requires_grad and plain.grad_fn is None  # no graph built under no_grad
    assert torch.equal(plain, inferred)
    if any(p.requires_grad for p in model.parameters()):
        assert svlm.forward(chat).logits.requires_grad  # grad mode on: the graph is there
    assert count_hooks(model) == 0


def test_a_double_ctrl_c_in_generate_returns_only_once_the_hooks_are_gone():
    """Two SIGINTs reach the waiting (main) thread while the model thread generates: generate
    still waits for the generation to stop before raising, so no hook outlives the call."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor, vectors=random_vectors(2, 64, 3.0))
    main = threading.main_thread().ident
    handled = threading.Event()
    interrupts: list[int] = []

    def on_sigint(signum, frame):
        interrupts.append(signum)
        handled.set()
        raise KeyboardInterrupt

    class DoubleCtrlC(StoppingCriteria):
        calls = 0

        def __call__(self, input_ids, scores, **kwargs):
            DoubleCtrlC.calls += 1
            if DoubleCtrlC.calls == 1:
                for _ in range(2):
                    handled.clear()
                    signal.pthread_kill(main, signal.SIGINT)
                    handled.wait(10)
                time.sleep(0.3)  # the model thread is still busy (hooks installed) after the 2nd one
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with pytest.raises(KeyboardInterrupt):
            svlm.generate([image_chat()], max_new_tokens=200, stopping_criteria=[DoubleCtrlC()])
        hooks_when_raised = count_hooks(model)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(interrupts) == 2
    assert hooks_when_raised == 0
    assert svlm.chat(image_chat(), max_new_tokens=2) is not None  # the model is free again


def test_run_on_model_thread_waits_through_repeated_interrupts(monkeypatch):
    model, _ = tiny("llava")
    release = threading.Event()
    finished = threading.Event()
    stops: list[int] = []
    real_wait = runtime.wait
    raised = [0]

    def interrupted_wait(futures, *args, **kwargs):
        if raised[0] < 2:  # the waiting thread is interrupted twice
            raised[0] += 1
            raise KeyboardInterrupt
        return real_wait(futures, *args, **kwargs)

    def work() -> str:
        release.wait(10)
        finished.set()
        return "done"

    def on_interrupt() -> None:
        stops.append(1)
        if len(stops) == 2:
            release.set()

    monkeypatch.setattr(runtime, "wait", interrupted_wait)
    with pytest.raises(KeyboardInterrupt):
        runtime.run_on_model_thread(model, work, on_interrupt=on_interrupt)
    assert finished.is_set() and len(stops) == 2


def test_generation_worker_stops_and_joins_when_its_iterator_is_closed():
    model, processor = tiny("llava")
    svlm = SteeredVLM(model, processor, vectors=random_vectors(2, 64, 3.0))
    stream = svlm.stream(image_chat(), max_new_tokens=400)
    next(stream)
    stream.close()
    assert count_hooks(model) == 0
    assert not [t for t in threading.enumerate() if t.name == "cmrm-guard-generation"]


def test_a_missing_local_model_folder_is_named_as_such(tmp_path):
    for missing in (
        tmp_path / "nope",
        str(tmp_path / "nope"),
        "./no/such/model/folder",
        "~/no-such-model-dir",
    ):
        with pytest.raises(ModelNotFoundError, match="does not exist.*local folder") as raised:
            SteeredVLM.from_pretrained(missing)
        assert isinstance(raised.value, FileNotFoundError)
        assert "repo id" not in str(raised.value).lower()
    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="is not a folder"):
        SteeredVLM.from_pretrained(a_file)


def test_one_version_getter_used_everywhere():
    from cmrm_guard import PackMeta, package_version
    from cmrm_guard.cli import build_parser

    assert package_version() == cmrm_guard.__version__
    meta = PackMeta(model_type="llava", hidden_size=64, num_layers=2, layer_indices=[0, 1])
    assert meta.cmrm_guard_version == package_version()
    version_action = next(a for a in build_parser()._actions if a.option_strings == ["--version"])
    assert version_action.version == f"cmrm-guard {package_version()}"
    readers = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if re.search(r"metadata\.version\(|import __version__", path.read_text(encoding="utf-8"))
    ]
    assert readers == [], f"versions read outside package_version(): {readers}"


def test_plot_colours_come_from_one_table():
    from cmrm_guard.eval.colours import PLOT_COLOURS, condition_colours

    literal = re.compile(r"""\b(?:color|colors|markeredgecolor|facecolor|edgecolor)\s*=\s*["']""")
    offenders = [
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if literal.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], f"colour literals outside cmrm_guard/eval/colours.py: {offenders}"
    assert not re.search(r"_[A-Z_]*COLOURS\s*=", (PACKAGE / "eval" / "report.py").read_text())
    colours = condition_colours(["a", "b"])
    assert colours["multimodal"] == PLOT_COLOURS["multimodal"] and colours["a"] != colours["b"]


def test_shared_prefix_uses_a_narrow_interface_not_steeredvlm_internals():
    source = (PACKAGE / "shared_prefix.py").read_text(encoding="utf-8")
    assert not re.search(r"\bsvlm\b|cmrm_guard\.steered", source)
    assert not re.search(r"\w\._(?!_)[a-z]\w*", source.replace("self._", "")), "private attribute access"
