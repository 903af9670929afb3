"""Tests of the docs: every Python block of README.md and EXPERIMENTS.md, run as a reader runs it.

A document's blocks run in order in one fresh Python, on tiny files in MNIST's format: once pasted
at the `python` prompt, once as notebook cells. Each block must print what the text block after
it shows, numbers aside ("..." stands for any lines), and nothing more: no error, no echoed value.
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mlp_mnist
from test_mlp_mnist import folder_with, gzipped_idx

ROOT = Path(__file__).parent
END = "-- end of block --"
FASHION = "/usr/share/datasets/fashion-mnist"


def blocks(doc):
    """The doc's Python blocks, each with the text block right after it ("" where there is none)."""
    text = (ROOT / doc).read_text()
    return re.findall(r"```python\n(.*?)```\n(?:\n```text\n(.*?)```)?", text, re.S)


def tiny_mnist(folder):
    """Fills folder with MNIST's four files in miniature: 256 train and 64 test images."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 320)
    images = rng.integers(0, 60, (320, 28, 28)) + 190 * (
        np.arange(28) // 3 == labels[:, None, None]
    )
    arrays = [images[:256], labels[:256], images[256:], labels[256:]]
    files = {f"{name}.gz": gzipped_idx(array) for name, array in zip(mlp_mnist.FILES, arrays)}
    return folder_with(folder, files)


def python(tmp_path, args, stdin):
    """What a fresh Python prints, run in tmp_path, offline, with tiny MNIST in its data folder."""
    tiny_mnist(tmp_path / "mlp_mnist")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), HOME=str(tmp_path), MPLBACKEND="Agg")
    env["PYTHONPATH"] = str(ROOT)  # as if run inside the clone
    env["https_proxy"] = "http://127.0.0.1:1"  # a proxy that refuses: no download can happen
    run = subprocess.run(
        [sys.executable, *args], input=stdin, env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert "Error" not in run.stderr, run.stderr  # a traceback, or a SyntaxError at the prompt
    assert run.returncode == 0, run.stderr
    return run.stdout.split(f"{END}\n")[:-1]


def at_the_prompt(codes, tmp_path):
    """What each block prints, pasted in turn at `python -i`'s prompt, Enter pressed after each."""
    pasted = "".join(f"{code}\nprint({END!r})\n" for code in codes)
    return python(tmp_path, ["-i"], pasted)


NOTEBOOK = f"""
import ast, sys
for cell in sys.stdin.read().split("\\0"):
    body = ast.parse(cell).body
    last = body.pop() if body and isinstance(body[-1], ast.Expr) else None
    exec(compile(ast.Module(body, []), "<cell>", "exec"))
    if last is not None:  # a notebook shows the value of a cell's last expression
        value = eval(compile(ast.Expression(last.value), "<cell>", "eval"))
        if value is not None:
            print(repr(value))
    print({END!r})
"""


def as_notebook_cells(codes, tmp_path):
    """What each block prints, run in turn as a notebook cell: its last expression's value shown."""
    return python(tmp_path, ["-c", NOTEBOOK], "\0".join(codes))


def numbers_aside(text):
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", text)


def shows(printed, shown):
    """Whether printed is what shown shows, numbers aside; a line "..." stands for any lines."""
    lines = numbers_aside(shown).splitlines()
    pattern = "".join(r"(?:.*\n)*?" if line == "..." else re.escape(line) + r"\n" for line in lines)
    return re.fullmatch(pattern, numbers_aside(printed)) is not None


def runnable(doc, tmp_path):
    """The doc's blocks, as run here: Fashion-MNIST's folder is a tiny one, matplotlib's block left
    out where matplotlib is not installed."""
    found = []
    for code, shown in blocks(doc):
        code = code.replace(FASHION, str(tiny_mnist(tmp_path / "fashion")))
        if "matplotlib" not in code or importlib.util.find_spec("matplotlib"):
            found.append((code, shown))
    return found


def in_sessions(doc, run, codes, tmp_path):
    """What each block prints: README's blocks build on each other in one session, the
    experiments each start a fresh one."""
    if doc == "README.md":
        return run(codes, tmp_path)
    return [run([code], tmp_path)[0] for code in codes]


@pytest.mark.parametrize("run", [at_the_prompt, as_notebook_cells])
@pytest.mark.parametrize("doc", ["README.md", "EXPERIMENTS.md"])
def test_each_block_prints_what_the_doc_shows(doc, run, tmp_path):
    codes, shown = zip(*runnable(doc, tmp_path))
    printed = in_sessions(doc, run, codes, tmp_path)
    assert len(printed) == len(codes)
    for code, out, expected in zip(codes, printed, shown):
        if "make_jaxpr" in code:  # how a jaxpr prints changes with JAX's version: not checked
            assert out.startswith("{ lambda")
        else:
            assert shows(out, expected), f"{code}\nprinted:\n{out}\nthe doc shows:\n{expected}"


def test_the_plot_block_draws_the_picture(tmp_path):
    pytest.importorskip("matplotlib")
    codes = [code for code, _ in runnable("README.md", tmp_path)]
    at_the_prompt(codes, tmp_path)
    assert (tmp_path / "accuracy.png").read_bytes().startswith(b"\x89PNG")


def test_each_link_to_a_line_lands_on_its_code():
    lines = (ROOT / "mlp_mnist.py").read_text().splitlines()
    links = re.findall(r"\[`([^`]+)`\]\(mlp_mnist\.py#L(\d+)\)", (ROOT / "README.md").read_text())
    assert links, "the README links to no line"
    for text, number in links:
        assert text in lines[int(number) - 1], (text, number)
