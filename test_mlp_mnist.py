"""Tests for mlp_mnist.py, in the order it teaches, then its data (from loopback mirrors) and the README."""

import gzip
import hashlib
import http.server
import os
import re
import subprocess
import sys
import threading
from functools import partial
from unittest.mock import Mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import random
from jax.flatten_util import ravel_pytree

import mlp_mnist as m

ROOT = os.path.dirname(os.path.abspath(__file__))
SCRIPT, README = os.path.join(ROOT, "mlp_mnist.py"), open(os.path.join(ROOT, "README.md")).read()


def backward_by_hand(params, X, y):
    """cross_entropy_loss's gradient in NumPy: d loss / d logits = (softmax(logits) - onehot(y)) / batch. Back through
    a_out = a_in @ W + b: dW = a_in.T @ delta, db = delta.sum(0), a_in's delta = delta @ W.T where the ReLU was on."""
    activations, pre_activations = [X], []
    for W, b in params[:-1]:
        pre_activations.append(activations[-1] @ W + b)
        activations.append(np.maximum(pre_activations[-1], 0))
    logits = activations[-1] @ params[-1][0] + params[-1][1]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))  # softmax, shifted by the largest logit: no overflow
    delta = (p / p.sum(axis=1, keepdims=True) - np.eye(logits.shape[1])[y]) / len(y)
    grads = []
    for i in reversed(range(len(params))):
        grads.append((activations[i].T @ delta, delta.sum(axis=0)))
        if i:
            delta = (delta @ params[i][0].T) * (pre_activations[i - 1] > 0)
    return grads[::-1]


@pytest.mark.parametrize("sizes", [[20, 16, 10], [20, 12, 8, 10]], ids=["2-layer", "3-layer"])
def test_grad_is_the_backward_pass_by_hand_and_numerically(sizes):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)  # weights of scale 0.5: many ReLUs on, many off
        params = [(0.5 * rng.standard_normal((a, b)), 0.5 * rng.standard_normal(b)) for a, b in zip(sizes, sizes[1:])]
        X, y, (flat, unflatten) = rng.random((8, sizes[0])), rng.integers(0, sizes[-1], 8), ravel_pytree(params)
        loss = jax.jit(lambda v: m.cross_entropy_loss(unflatten(v), X, y))  # of one vector of every weight and bias
        grad, eps = jax.grad(loss)(flat), 1e-6  # (loss(v + eps e) - loss(v - eps e)) / 2 eps along each direction e:
        numeric = jax.vmap(lambda e: (loss(flat + eps * e) - loss(flat - eps * e)) / (2 * eps))(jnp.eye(len(flat)))
        np.testing.assert_allclose(grad, ravel_pytree(backward_by_hand(params, X, y))[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("sizes", [[784, 10], [784, 32, 16, 10]])
def test_shapes_follow_the_layer_sizes(sizes):
    params = jax.eval_shape(partial(m.initialize_weights, sizes), random.key(0))  # traced, not computed: shapes
    assert [(W.shape, b.shape) for W, b in params] == [((a, b), (b,)) for a, b in zip(sizes, sizes[1:])]
    logits = jax.eval_shape(m.forward, params, jax.ShapeDtypeStruct((5, 784), jnp.float32))
    assert (logits.shape, logits.dtype) == ((5, 10), jnp.float32)  # a row of 10 logits per image


def test_each_layer_and_each_array_draws_its_own_numbers():
    leaves = jax.tree.leaves(m.initialize_weights([3, 3, 3], random.key(0), scale=1.0))  # W1, b1, W2, b2
    assert len({tuple(np.ravel(a)[:3]) for a in leaves}) == 4  # a key used twice repeats its first numbers


def test_update_is_one_sgd_step():
    params, X, y = m.initialize_weights([784, 32, 10], random.key(0), 0.5), jnp.ones((5, 784)), jnp.arange(5)
    loss, grads = jax.value_and_grad(m.cross_entropy_loss)(params, X, y)
    new_params, step_loss = m.update(params, X, y, 0.5)
    old, grad, new = (ravel_pytree(tree)[0] for tree in (params, grads, new_params))  # vectors; jit rounds its own way
    np.testing.assert_allclose(jnp.append(new, step_loss), jnp.append(old - 0.5 * grad, loss), rtol=1e-5)


def test_the_loss_is_finite_where_exp_overflows():
    logits = np.array([1000.0, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 0])  # exp(89) overflows float32
    params = [(jnp.zeros((784, 10)), jnp.asarray(logits))]  # one layer, no weights: the logits are the biases
    minus_log_p = logits.max() + np.log(np.exp(logits - logits.max()).sum()) - logits  # logsumexp - logit, float64
    loss = m.cross_entropy_loss(params, jnp.ones((2, 784)), jnp.array([0, 9]))  # labels 0 and 9: 8 and 1008
    assert float(loss) == pytest.approx(minus_log_p[[0, 9]].mean(), rel=1e-6)


def synthetic(n, seed):  # n images (n, 784) in [0, 1], as load_mnist gives, and labels: class c lights c*78 on
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 784)) + 190 * (np.arange(784) // 78 == labels[:, None])
    return (images / 255).astype(np.float32), labels


def gzipped_idx(a):  # IDX, gzipped: 0, 0, 8 (uint8), the number of sizes; the sizes, big-endian uint32; the values
    return gzip.compress(bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">u4").tobytes() + a.astype(np.uint8).tobytes())


DATA = (*synthetic(500, 0), *synthetic(200, 1))  # train and test images and labels, as load_mnist gives
TINY = [np.round(DATA[0][:256] * 255).reshape(-1, 28, 28), DATA[1][:256], np.zeros((100, 28, 28)), DATA[3][:100]]
TINY = {name: gzipped_idx(a) for (name, _), a in zip(m.FILES, TINY)}  # MNIST's four files in miniature
FIRST = m.FILES[0][0]  # train-images-idx3-ubyte.gz
FAILED = {"an HTML page": b"<html>503</html>", "cut short": TINY[FIRST][:-40]}  # what a mirror sends
DAMAGED = {"cut short": TINY[FIRST][:-30], "not gzip": b"<html>404</html>", "a flipped bit": bytearray(TINY[FIRST])}
DAMAGED["a flipped bit"][40] ^= 4  # inside the compressed stream
DAMAGED |= {"empty": gzip.compress(b""), "not IDX": gzip.compress(b"not IDX")}
ARTICLES_LINE = r"Epoch (\d+)/(\d+): loss: [\d.]+, train acc\.: [\d.]+, valid acc\.: [\d.]+, time: [\d.]+ sec\."


def test_train_learns():
    results = m.train(DATA, [784, 16, 10], epochs=3, lr=0.1, batch_size=16)[1]
    assert results[-1][1] < results[0][1] / 2 and results[-1][3] > 0.95  # the loss halved, valid accuracy high


def test_each_epoch_takes_full_batches_in_a_new_order(monkeypatch):
    monkeypatch.setattr(m, "update", Mock(wraps=m.update))  # update, noting its calls
    m.train(DATA, [784, 16, 10], epochs=2, batch_size=16)  # 500 // 16: 31 full batches an epoch, 4 images left out
    epochs = np.array([call.args[1] for call in m.update.call_args_list]).reshape(2, 31 * 16, 784)
    assert all(len(np.unique(images, axis=0)) == 496 for images in epochs) and not np.array_equal(*epochs)


def test_the_functions_run_in_the_articles_own_loop():
    X, y, X_test, y_test = DATA  # as the article has it: a legacy key, NumPy batches of 64, .item() at each step
    params = m.initialize_weights([784, 128, 10], key=random.PRNGKey(516), scale=0.02)
    for _ in range(4):  # epochs
        losses = []
        for i in range(0, len(X), 64):
            params, loss = m.update(params, X[i : i + 64], y[i : i + 64], lr=0.5)
            losses.append(loss.item())
    assert np.mean(losses) < np.log(10) / 4 and m.accuracy(m.forward(params, X_test), y_test).item() > 0.9, losses


@pytest.fixture
def mirror(monkeypatch, tmp_path_factory):  # mirror({name: bytes}): a folder served on loopback, the next mirror
    monkeypatch.setattr(m, "FILES", [(name, hashlib.sha256(gz).hexdigest()) for name, gz in TINY.items()])
    monkeypatch.setattr(m, "MIRRORS", [])  # no real mirror, and below, no proxy between the tests and loopback
    monkeypatch.setenv("no_proxy", "*")
    root, handler = tmp_path_factory.mktemp("mirrors"), http.server.SimpleHTTPRequestHandler  # a file, or HTTP 404
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=root))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}/"
    yield lambda files: m.MIRRORS.append(f"{url}{folder_with(root / str(len(m.MIRRORS)), files).name}/")
    httpd.shutdown()


def folder_with(path, files):  # path, made to hold {name: bytes}
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


@pytest.mark.parametrize("failure", FAILED)
def test_a_failed_download_goes_on_to_the_next_mirror(failure, mirror, tmp_path, capsys):
    mirror({FIRST: FAILED[failure]})  # the first mirror fails for the first file and lacks the rest
    mirror(TINY)
    m.load_mnist(str(tmp_path))
    assert capsys.readouterr().out == "".join(f"Downloading {url}{name}\n" for name in TINY for url in m.MIRRORS)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == TINY  # each kept only if its SHA-256 is right


def test_no_mirror_with_a_file_names_each_and_the_folder(mirror, tmp_path):
    mirror({FIRST: FAILED["an HTML page"]})
    mirror({})  # HTTP 404 for every file
    with pytest.raises(OSError) as error:
        m.load_mnist(str(tmp_path))
    first, second = [url + FIRST for url in m.MIRRORS]
    said = f"  {first}: 16 bytes, not the real file\n  {second}: HTTP Error 404: File not found\nOffline? Put MNIST's"
    assert str(error.value) == f"no mirror gave {FIRST}:\n{said} four .gz files in {tmp_path}"


def test_a_file_already_in_the_folder_is_used_as_it_is(mirror, tmp_path, capsys):
    theirs = gzipped_idx(np.full((3, 28, 28), 51))  # not MNIST's train images: Fashion-MNIST's, say, or one's own
    mirror(TINY)
    images = m.load_mnist(folder_with(tmp_path, {FIRST: theirs}))[0]
    assert images.shape == (3, 784) and np.allclose(images, 0.2) and (tmp_path / FIRST).read_bytes() == theirs
    assert capsys.readouterr().out == "".join(f"Downloading {m.MIRRORS[0]}{name}\n" for name in list(TINY)[1:])


@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_file_is_named_and_left_as_it_is(damage, mirror, tmp_path, capsys):
    folder = folder_with(tmp_path, {**TINY, FIRST: DAMAGED[damage]})
    with pytest.raises(OSError, match=rf"^{re.escape(str(tmp_path / FIRST))} can't be read \(.*\); .* delete it"):
        m.load_mnist(folder)
    assert (tmp_path / FIRST).read_bytes() == DAMAGED[damage] and capsys.readouterr().out == ""


def python(tmp_path, *args, stdin=None, xdg=None):  # in tmp_path, offline; $XDG_CACHE_HOME tmp_path unless given
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path) if xdg is None else xdg, HOME=str(tmp_path / "home"))
    env |= {"PYTHONPATH": ROOT, "https_proxy": "http://127.0.0.1:1", "no_proxy": ""}  # the mirrors behind no proxy
    run = subprocess.run([sys.executable, *args], env=env, input=stdin, capture_output=True, text=True, cwd=tmp_path)
    assert "Error" not in run.stderr, run.stderr
    return run.stdout


def test_an_import_only_names_the_data_folder(tmp_path):  # ~/.cache/mlp_mnist when $XDG_CACHE_HOME is empty
    out = python(tmp_path, "-c", "import mlp_mnist; print(mlp_mnist.DATA_DIR)", xdg="")
    assert out == f"{tmp_path / 'home/.cache/mlp_mnist'}\n" and os.listdir(tmp_path) == []  # no output, no folder


def test_the_whole_file_in_a_cell_trains_with_the_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder_with(tmp_path / "mlp_mnist", TINY)  # the default data folder, holding the tiny files
    exec(compile(open(SCRIPT).read(), "<cell>", "exec"), {"__name__": "__main__"})  # as Jupyter runs a cell
    epochs = [re.fullmatch(ARTICLES_LINE, line) for line in capsys.readouterr().out.splitlines()]
    assert [e and e.groups() for e in epochs] == [(str(i), str(m.EPOCHS)) for i in range(1, m.EPOCHS + 1)]


def readme(heading, language=None):  # the README's text under a heading, or its first block in `language`
    text = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^##|\Z)", README, re.M | re.S)[1]  # by heading, not place
    return re.search(rf"```{language}\n(.*?)```", text, re.S)[1] if language else text


def pasted(tmp_path, *headings):  # what README blocks print at python's >>> prompt, on tiny MNIST
    folder_with(tmp_path / "mlp_mnist", TINY)  # at the prompt, a blank line ends an indented block
    return python(tmp_path, "-i", stdin="\n".join(readme(h, "python") for h in headings)).splitlines()


@pytest.mark.parametrize("heading", ["Keep the weights", "One compiled epoch"])
def test_a_readme_block_prints_what_the_readme_shows(heading, tmp_path):
    shown, decimals = readme(heading, "text").strip(), r"\d+\.\d+"  # times vary from run to run
    out = "\n".join(pasted(tmp_path, heading)[-len(shown.splitlines()) :])
    assert re.sub(decimals, "N", out) == re.sub(decimals, "N", shown)


def test_two_devices_give_the_weights_of_one(tmp_path):
    out = pasted(tmp_path, "One compiled epoch", "The same epoch on two devices")[-1]  # a fresh process
    assert out.startswith("2 devices, largest difference from 1 device: ") and float(out.split()[-1]) <= 1e-5


def test_the_jaxpr_holds_each_operation_the_readme_names(tmp_path):
    out, prose = "\n".join(pasted(tmp_path, "What `jit` sees")), readme("What `jit` sees")
    names = ["f32[2,784]", "dot_general", "broadcast_in_dim", "add", "custom_jvp_call", "jit", "max"]
    found = [re.search(rf"(?<!\w){re.escape(name)}(?!\w)", out) and f"`{name}`" in prose for name in names]
    assert all(found), names  # each, as a whole word in the jaxpr and in backquotes in the prose


def test_the_readmes_line_numbers_land_right():
    lines, links = open(SCRIPT).read().splitlines(), re.findall(r"\[`([^`]+)`\]\(mlp_mnist\.py#L(\d+)\)", README)
    assert len(links) >= 8 and all(name in lines[int(number) - 1] for name, number in links), links
    assert re.search(rf"lines 1-{lines.index('    return params, results') + 1}\D", README)  # to train's end
