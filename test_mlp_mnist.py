"""Tests for mlp_mnist.py, in the order it teaches, then its data (from loopback mirrors) and the README."""

import ast
import gzip
import hashlib
import http.server
import os
import re
import subprocess
import sys
import threading
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
BLOCKS, TEXT = re.findall(r"```python\n(.*?)```", README, re.DOTALL), re.sub(r"\s*\n\s*", " ", README)  # its prose


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
    params = m.initialize_weights(sizes, random.key(0))
    assert [(W.shape, b.shape) for W, b in params] == [((a, b), (b,)) for a, b in zip(sizes, sizes[1:])]
    assert m.forward(params, jnp.ones((5, 784))).shape == (5, 10)  # a row of 10 logits per image


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


def synthetic(n, seed):
    """n images (n, 784) in [0, 1], as load_mnist gives them, and their labels: class c lights pixels c*78 on."""
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
FAILED = {"an HTML page": (200, b"<html>503</html>"), "cut short": (200, TINY[FIRST][:-40])}  # what a mirror sends
FAILED |= {"a cut connection": ("cut", TINY[FIRST]), "HTTP 403": (403, b"")}
DAMAGED = {"cut short": TINY[FIRST][:-30], "not gzip": b"<html>404</html>", "a flipped bit": bytearray(TINY[FIRST])}
DAMAGED["a flipped bit"][40] ^= 4  # inside the compressed stream
DAMAGED |= {"empty": gzip.compress(b""), "not IDX": gzip.compress(b"not IDX")}


def test_train_learns():
    results = m.train(DATA, [784, 16, 10], epochs=3, lr=0.1, batch_size=16)[1]
    assert results[-1][1] < results[0][1] / 2 and results[-1][3] > 0.95  # the loss halved, valid accuracy high


def test_train_prints_the_articles_line_each_epoch(capsys):
    results = m.train(DATA, [784, 16, 10], epochs=2, lr=0.1, batch_size=16)[1]
    line = "Epoch {}/2: loss: {:.4f}, train acc.: {:.3f}, valid acc.: {:.3f}, time: {:.2f} sec."
    assert capsys.readouterr().out.splitlines() == [line.format(*r) for r in results]


def test_each_epoch_takes_full_batches_in_a_new_order(monkeypatch):
    monkeypatch.setattr(m, "update", Mock(wraps=m.update))  # update, noting its calls
    m.train(DATA, [784, 16, 10], epochs=2, batch_size=16)  # 500 // 16: 31 full batches an epoch, 4 images left out
    epochs = np.array([call.args[1] for call in m.update.call_args_list]).reshape(2, 31 * 16, 784)
    assert all(len(np.unique(images, axis=0)) == 496 for images in epochs) and not np.array_equal(*epochs)


def test_a_seed_gives_the_same_weights_each_time():
    first, again, other = (m.train(DATA, [784, 16, 10], epochs=1, seed=seed)[0][0][0] for seed in (0, 0, 1))
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_the_functions_run_in_the_articles_own_loop():
    X, y, X_test, y_test = DATA  # as the article has it: a legacy key, NumPy batches of 64, .item() at each step
    params = m.initialize_weights([784, 128, 10], key=random.PRNGKey(516), scale=0.02)
    for _ in range(4):  # epochs
        losses = []
        for i in range(0, len(X), 64):
            params, loss = m.update(params, X[i : i + 64], y[i : i + 64], lr=0.5)
            losses.append(loss.item())
    valid = [m.accuracy(m.forward(params, X_test[i : i + 64]), y_test[i : i + 64]).item() for i in (0, 64, 128)]
    assert np.mean(losses) < np.log(10) / 4 and np.mean(valid) > 0.9, (losses, valid)


@pytest.fixture
def server(monkeypatch):
    """A loopback server; mirror({name: body or (status, body)}) adds a mirror. "cut": half the body promised."""
    monkeypatch.setattr(m, "FILES", [(name, hashlib.sha256(gz).hexdigest()) for name, gz in TINY.items()])
    monkeypatch.setattr(m, "MIRRORS", [])  # no real mirror, and below, no proxy between the tests and loopback
    monkeypatch.setenv("no_proxy", "*")
    routes, requests = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            status, body = routes.get(self.path, (404, b""))
            self.send_response(200 if status == "cut" else status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if status == "cut" else body)

    def mirror(files):
        routes.update({f"/{len(m.MIRRORS)}/{name}": b if type(b) is tuple else (200, b) for name, b in files.items()})
        m.MIRRORS.append(f"http://127.0.0.1:{httpd.server_port}/{len(m.MIRRORS)}/")

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield Mock(requests=requests, mirror=mirror)
    httpd.shutdown()


def folder_with(path, files):
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return str(path)


@pytest.mark.parametrize("failure", FAILED)
def test_a_failed_download_goes_on_to_the_next_mirror(failure, server, tmp_path):
    server.mirror({FIRST: FAILED[failure]})  # the first mirror fails for the first file and lacks the rest
    server.mirror(TINY)
    m.load_mnist(str(tmp_path))
    assert server.requests == [f"/{i}/{name}" for name in TINY for i in (0, 1)]  # the mirrors in turn
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == TINY  # each kept only if its SHA-256 is right


def test_a_file_already_in_the_folder_is_used_as_it_is(server, tmp_path):
    theirs = gzipped_idx(np.full((3, 28, 28), 51))  # not MNIST's train images: Fashion-MNIST's, say, or one's own
    server.mirror(TINY)
    images = m.load_mnist(folder_with(tmp_path, {FIRST: theirs}))[0]
    assert images.shape == (3, 784) and np.allclose(images, 0.2) and (tmp_path / FIRST).read_bytes() == theirs
    assert server.requests == [f"/0/{name}" for name in list(TINY)[1:]]  # only the three missing files


def test_ctrl_c_at_the_rename_leaves_no_file_under_a_real_name(server, tmp_path, monkeypatch):
    server.mirror(TINY)
    monkeypatch.setattr(os, "replace", Mock(side_effect=KeyboardInterrupt))  # Ctrl-C as the first file is renamed
    with pytest.raises(KeyboardInterrupt):
        m.load_mnist(str(tmp_path))
    assert os.listdir(tmp_path) == [FIRST + ".part"]


@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_file_is_named_and_left_as_it_is(damage, server, tmp_path):
    folder = folder_with(tmp_path, {**TINY, FIRST: DAMAGED[damage]})
    with pytest.raises(OSError, match=rf"^{tmp_path / FIRST} can't be read \(.+\); it was left as it is: delete it"):
        m.load_mnist(folder)
    assert (tmp_path / FIRST).read_bytes() == DAMAGED[damage] and server.requests == []


def python(tmp_path, *args, xdg=None):  # `python *args`, offline; $XDG_CACHE_HOME tmp_path unless given; $HOME in it
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path) if xdg is None else xdg, HOME=str(tmp_path / "home"))
    env |= {"https_proxy": "http://127.0.0.1:1", "no_proxy": ""}  # the mirrors behind a proxy that isn't there
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("case", ["offline", "a folder that can't be made"])
def test_what_goes_wrong_is_one_message_and_exit_1(case, tmp_path):
    folder, e = tmp_path / "mlp_mnist", re.escape
    if case == "offline":  # a line for each mirror's answer, then what to do
        answers = "".join(rf"\n  {e(url + FIRST)}: <urlopen error \[Errno \d+\] .+>" for url in m.MIRRORS)
        said = rf"no mirror gave {e(FIRST)}:{answers}\nOffline\? Put MNIST's four \.gz files in {e(str(folder))}"
    else:
        folder.write_text("a file where the data folder would be")
        said = rf"\[Errno 17\] File exists: '{e(str(folder))}'"
    run = python(tmp_path, SCRIPT)
    assert run.returncode == 1 and re.fullmatch(f"error: {said}\n", run.stderr), run.stderr


@pytest.mark.parametrize("xdg, folder", [(None, "mlp_mnist"), ("", "home/.cache/mlp_mnist")])  # $XDG_CACHE_HOME set
def test_an_import_only_names_the_data_folder(xdg, folder, tmp_path):
    run = python(tmp_path, "-c", "import mlp_mnist; print(mlp_mnist.DATA_DIR)", xdg=xdg)
    assert run.stdout == f"{tmp_path / folder}\n" and os.listdir(tmp_path) == []  # no output, no folder


def test_the_whole_file_in_a_cell_trains_with_the_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder_with(tmp_path / "mlp_mnist", TINY)  # the default data folder, holding the tiny files
    exec(compile(open(SCRIPT).read(), "<cell>", "exec"), {"__name__": "__main__"})  # as Jupyter runs a cell
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"Epoch {m.EPOCHS}/{m.EPOCHS}: ")


def test_the_readmes_own_arrays_print_what_it_says(capsys):
    said = re.search(r"It ends at `(valid acc\.: [\d.]+)`, then prints `(.+?)` and `(.+?)`\.", TEXT)
    exec(BLOCKS[0], {})  # as pasted into a cell
    out = capsys.readouterr().out.splitlines()
    assert said[1] in out[-3] and out[-2:] == [said[2], said[3]]


def test_the_readmes_one_line_examples_give_what_it_says():
    claims = re.findall(r"`([^`]+)` → `([^`]+)`", TEXT)
    assert len(claims) == 3 and all(str(eval(e, {"jax": jax, "jnp": jnp, "np": np})) == shown for e, shown in claims)


def test_the_readmes_links_and_line_numbers_land_right():
    lines, links = open(SCRIPT).read().splitlines(), re.findall(r"\[`([^`]+)`\]\(mlp_mnist\.py#L(\d+)\)", README)
    assert len(links) >= 10 and all(name in lines[int(number) - 1] for name, number in links), links
    end = next(node.end_lineno for node in ast.parse("\n".join(lines)).body if getattr(node, "name", "") == "train")
    assert f"the lesson (lines 1-{end}," in TEXT  # the settings to the end of train: a notebook cell of their own


def test_the_readmes_scanned_epoch_gives_the_loops_weights(monkeypatch, capsys):
    monkeypatch.setattr(m, "load_mnist", Mock(return_value=DATA))  # tiny data for the block's MNIST
    exec(BLOCKS[1], {})
    out = capsys.readouterr().out.splitlines()
    assert [re.sub(r"\d+\.\d\d", "T", line) for line in out] == ["loop: T s, scan: T s"] * 2 + ["same weights: True"]


def test_the_readmes_jaxpr_holds_what_it_names(capsys):
    exec(BLOCKS[2], {})
    out, said = capsys.readouterr().out, re.search(r"\nIts (\d+) lines (.+?)\n", README)
    assert len(out.splitlines()) == int(said[1]) and all(name in out for name in re.findall(r"`([^`]+)`", said[2]))


def test_the_readmes_update_on_2_devices_gives_the_same_weights(tmp_path):
    folder_with(tmp_path / "mlp_mnist", TINY)
    run = python(tmp_path, "-c", BLOCKS[3])  # a process of its own, as the block makes 2 CPU devices before JAX starts
    said = re.fullmatch(r"on 2 devices; largest weight difference from one device: (\S+)\n", run.stdout)
    assert said and float(said[1]) <= 1e-5, run.stderr
