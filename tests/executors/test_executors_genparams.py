"""The shared generation-settings check: edge values, messages, and both executors calling it."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from vauban_trace._exceptions import ExecutorError
from vauban_trace.executors._genparams import SEED_LIMIT, GenerationSettings, check_generation, check_int


def test_defaults_and_normalisation() -> None:
    assert check_generation() == GenerationSettings()
    gen = check_generation(max_new_tokens=3, do_sample=1, seed=0, temperature=2, top_k=1, top_p=1, stop="\n")
    assert gen == GenerationSettings(max_new_tokens=3, do_sample=True, seed=0, temperature=2.0, top_k=1,
                                     top_p=1.0, stop=("\n",))
    assert type(gen.temperature) is float and type(gen.top_p) is float and gen.do_sample is True
    assert check_generation(stop=["a", "bc"]).stop == ("a", "bc")
    assert check_generation(stop=()).stop == () and check_generation(stop=None).stop == ()
    assert check_generation(seed=SEED_LIMIT - 1).seed == 2**64 - 1
    assert check_generation(top_p=1e-9).top_p == 1e-9
    with pytest.raises(AttributeError):
        gen.seed = 1  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_new_tokens": -1}, "max_new_tokens must be an integer >= 0, got -1"),
    ({"max_new_tokens": True}, "max_new_tokens must be an integer >= 0, got True"),
    ({"max_new_tokens": 2.0}, "max_new_tokens must be an integer >= 0, got 2.0"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"seed": False}, "seed must be an integer >= 0, got False"),
    ({"seed": "7"}, "seed must be an integer >= 0, got '7'"),
    ({"seed": 2**64}, "seed must be below 2**64 (a torch.Generator seed), got 18446744073709551616"),
    ({"top_k": 0}, "top_k must be an integer >= 1, got 0"),
    ({"top_k": 2.5}, "top_k must be an integer >= 1, got 2.5"),
    ({"top_k": True}, "top_k must be an integer >= 1, got True"),
    ({"temperature": 0}, "temperature must be a number > 0, got 0"),
    ({"temperature": -1.0}, "temperature must be a number > 0, got -1.0"),
    ({"temperature": True}, "temperature must be a number > 0, got True"),
    ({"temperature": float("nan")}, "temperature must be a number > 0, got nan"),
    ({"temperature": "1"}, "temperature must be a number > 0, got '1'"),
    ({"top_p": 0}, "top_p must be in (0, 1], got 0"),
    ({"top_p": 1.0000001}, "top_p must be in (0, 1], got 1.0000001"),
    ({"top_p": -0.5}, "top_p must be in (0, 1], got -0.5"),
    ({"top_p": True}, "top_p must be in (0, 1], got True"),
    ({"stop": ""}, "stop strings must be non-empty strings"),
    ({"stop": ["ok", ""]}, "stop strings must be non-empty strings"),
    ({"stop": [3]}, "stop strings must be non-empty strings"),
    ({"stop": 3}, "stop must be a string or a sequence of strings, got 3"),
])
def test_bad_values_raise_their_message(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ExecutorError) as info:
        check_generation(**kwargs)
    assert str(info.value) == message


def test_first_bad_setting_in_order_is_named() -> None:
    with pytest.raises(ExecutorError, match="^max_new_tokens"):
        check_generation(max_new_tokens=-1, seed=-1, temperature=0)
    with pytest.raises(ExecutorError, match="^seed"):
        check_generation(seed=-1, top_k=0, temperature=0)
    with pytest.raises(ExecutorError, match="^temperature"):
        check_generation(temperature=0, top_p=2, stop="")


def test_check_int() -> None:
    assert check_int(5, "topk", 1) == 5
    for bad in (0, True, 1.0, None):
        with pytest.raises(ExecutorError, match=f"topk must be an integer >= 1, got {bad!r}"):
            check_int(bad, "topk", 1)


def test_module_imports_neither_torch_nor_mlx() -> None:
    code = ("import sys, vauban_trace.executors._genparams; "
            "print(sorted(m for m in ('torch', 'mlx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kwargs", [
    {"seed": 2**64}, {"temperature": True}, {"top_p": 0}, {"top_k": 0}, {"stop": [""]}, {"max_new_tokens": -2},
    {"topk": 0},
])
def test_both_executors_refuse_with_the_shared_message(kwargs: dict[str, Any]) -> None:
    """Both option builders raise what the shared check raises (the seed bound is now checked
    before a torch run too; it used to surface as torch's overflow ValueError mid-run)."""
    torch_exec = pytest.importorskip("vauban_trace.executors.torch._executor")
    messages = []
    for make in (torch_exec.make_options, pytest.importorskip("vauban_trace.executors.mlx._executor").make_mlx_options):
        with pytest.raises(ExecutorError) as info:
            make(**kwargs)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    if "topk" not in kwargs:
        with pytest.raises(ExecutorError) as info:
            check_generation(**kwargs)
        assert messages[0] == str(info.value)
