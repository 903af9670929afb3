"""Tests for mlp_mnist.py: first the lesson, in the order it teaches, then the data code.

The data tests serve tiny IDX files from a loopback HTTP server that they start: no test needs the
internet or the real MNIST.
"""

import gzip
import hashlib
import http.server
import os
import re
import subprocess
import sys
import threading
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import random
from jax.flatten_util import ravel_pytree

import mlp_mnist as m

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlp_mnist.py")


def backward_by_hand(params, X, y):
    """cross_entropy_loss's gradient for params, derived by hand and computed in NumPy.

    d loss / d logits = (softmax(logits) - onehot(y)) / batch. Going back through a layer
    out = a @ W + b gives dW = a.T @ delta and db = delta summed over the batch, and the delta
    of the layer before is delta @ W.T, where that layer's ReLU was on.
    """
    activations = [X]
    pre_activations = []
    for W, b in params[:-1]:
        pre_activations.append(activations[-1] @ W + b)
        activations.append(np.maximum(pre_activations[-1], 0))
    logits = activations[-1] @ params[-1][0] + params[-1][1]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))  # shifted by the largest: no overflow
    softmax = p / p.sum(axis=1, keepdims=True)
    delta = (softmax - np.eye(logits.shape[1])[y]) / len(y)
    grads = []
    for i in reversed(range(len(params))):
        grads.append((activations[i].T @ delta, delta.sum(axis=0)))
        if i > 0:
            delta = (delta @ params[i][0].T) * (pre_activations[i - 1] > 0)
    return grads[::-1]


def random_params(sizes, rng):
    """(W, b) pairs of float64 weights of scale 0.5: many ReLUs on, many off."""
    return [
        (0.5 * rng.standard_normal((a, b)), 0.5 * rng.standard_normal(b))
        for a, b in zip(sizes, sizes[1:])
    ]


@pytest.mark.parametrize("sizes", [[20, 16, 10], [20, 12, 8, 10]], ids=["2-layer", "3-layer"])
def test_grad_is_the_backward_pass_by_hand(sizes):
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = random_params(sizes, rng)
        X = rng.random((8, sizes[0]))
        y = rng.integers(0, sizes[-1], 8)
        grads = jax.grad(m.cross_entropy_loss)(params, X, y)
        expected = backward_by_hand(params, X, y)
        np.testing.assert_allclose(ravel_pytree(grads)[0], ravel_pytree(expected)[0], rtol=1e-10)


@pytest.mark.parametrize("sizes", [[784, 10], [784, 32, 16, 10]])
def test_shapes_follow_the_layer_sizes(sizes):
    params = m.initialize_weights(sizes, random.key(0))
    logits = m.forward(params, jnp.zeros((5, 784)))
    assert [(W.shape, b.shape) for W, b in params] == [
        ((a, b), (b,)) for a, b in zip(sizes, sizes[1:])
    ]
    assert logits.shape == (5, 10)  # a row of 10 logits per image


def test_each_layer_and_each_array_draws_from_its_own_key(monkeypatch):
    """Records the key of each draw: which numbers a key gives depends on JAX's PRNG, which keys
    the code uses does not."""
    keys = []

    def normal_noting_its_key(key, shape):
        keys.append(tuple(np.ravel(random.key_data(key))))
        return jnp.zeros(shape)

    monkeypatch.setattr(m.random, "normal", normal_noting_its_key)
    m.initialize_weights([3, 3, 3], random.key(0))  # W1, b1, W2, b2
    assert len(keys) == 4
    assert len(set(keys)) == 4


def test_update_is_one_sgd_step():
    params = m.initialize_weights([784, 32, 10], random.key(0), scale=0.5)
    X = jnp.ones((5, 784))
    y = jnp.arange(5)
    loss, grads = jax.value_and_grad(m.cross_entropy_loss)(params, X, y)
    new_params, step_loss = m.update(params, X, y, 0.5)
    old, grad, new = (ravel_pytree(tree)[0] for tree in (params, grads, new_params))
    np.testing.assert_allclose(new, old - 0.5 * grad, rtol=1e-5)  # jit may round its own way
    np.testing.assert_allclose(step_loss, loss, rtol=1e-5)


def test_the_loss_is_finite_where_exp_overflows():
    logits = np.array(
        [1000.0, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 0]
    )  # float32 exp overflows past 88.7
    params = [(jnp.zeros((784, 10)), jnp.asarray(logits))]  # no weights: the logits are the biases
    minus_log_p = logits.max() + np.log(np.exp(logits - logits.max()).sum()) - logits  # in float64
    loss = m.cross_entropy_loss(params, jnp.ones((2, 784)), jnp.array([0, 9]))
    assert float(loss) == pytest.approx(minus_log_p[[0, 9]].mean(), rel=1e-6)


def synthetic(n, seed):
    """n images as load_mnist gives them, (n, 784) in [0, 1], and their labels: an image of class
    c is bright at pixels 78c to 78c + 77, so that a network learns the classes in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 784)) + 190 * (np.arange(784) // 78 == labels[:, None])
    return (images / 255).astype(np.float32), labels


TRAIN = synthetic(500, 0)
TEST = synthetic(200, 1)
DATA = (*TRAIN, *TEST)  # train images, train labels, test images, test labels


def test_train_learns():
    results = m.train(DATA, [784, 16, 10], epochs=3, lr=0.1, batch_size=16)[1]
    assert results[-1][1] < results[0][1] / 2  # the loss halved
    assert results[-1][3] > 0.95  # test accuracy


def test_test_accuracy_is_measured_on_the_test_set():
    wrong_labels = (TEST[1] + 1) % 10  # every test label wrong: the test accuracy should be 0
    results = m.train((*TRAIN, TEST[0], wrong_labels), [784, 16, 10], 3, lr=0.1, batch_size=16)[1]
    assert results[-1][2] > 0.95  # train accuracy
    assert results[-1][3] < 0.05  # test accuracy


def test_the_epochs_loss_is_the_mean_of_its_steps(monkeypatch):
    losses = []
    update = m.update

    def update_noting_the_loss(params, X, y, lr):
        params, loss = update(params, X, y, lr)
        losses.append(float(loss))
        return params, loss

    monkeypatch.setattr(m, "update", update_noting_the_loss)
    results = m.train(DATA, [784, 16, 10], epochs=1, batch_size=16)[1]
    assert len(losses) == 500 // 16
    assert results[0][1] == pytest.approx(np.mean(losses), rel=1e-6)


def test_each_epoch_takes_full_batches_in_a_new_order(monkeypatch):
    batches = []

    def update_noting_the_batch(params, X, y, lr):
        batches.append(X)
        return params, jnp.float32(0)

    monkeypatch.setattr(m, "update", update_noting_the_batch)
    m.train(DATA, [784, 16, 10], epochs=2, batch_size=16)  # 500 // 16: 31 batches, 4 images left
    epochs = np.reshape(batches, (2, 31 * 16, 784))
    assert len(batches) == 2 * 31
    assert all(len(np.unique(images, axis=0)) == 31 * 16 for images in epochs)  # none twice
    assert not np.array_equal(epochs[0], epochs[1])


def test_the_seed_decides_the_run():
    first = m.train(DATA, [784, 16, 10], epochs=1, batch_size=16, seed=1)[0]
    again = m.train(DATA, [784, 16, 10], epochs=1, batch_size=16, seed=1)[0]
    other = m.train(DATA, [784, 16, 10], epochs=1, batch_size=16, seed=2)[0]
    assert np.array_equal(ravel_pytree(first)[0], ravel_pytree(again)[0])
    assert not np.array_equal(ravel_pytree(first)[0], ravel_pytree(other)[0])


def test_the_functions_run_in_the_articles_own_loop():
    X, y, X_test, y_test = DATA  # as the article has it: PRNGKey, NumPy batches, .item() each step
    params = m.initialize_weights([784, 128, 10], key=random.PRNGKey(516), scale=0.02)
    for _ in range(4):  # epochs
        losses = []
        for i in range(0, len(X), 64):
            params, loss = m.update(params, X[i : i + 64], y[i : i + 64], lr=0.5)
            losses.append(loss.item())
    assert np.mean(losses) < np.log(10) / 4  # the loss of a uniform guess is log(10)
    assert m.accuracy(m.forward(params, X_test), y_test).item() > 0.9


# The data code.


def gzipped_idx(array):
    """An IDX file, gzipped: 0, 0, 8 for bytes, the number of dimensions, the sizes, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def tiny_mnist(train_images):
    """MNIST's four files in miniature, {name: bytes}, with train_images (N, height, width)."""
    arrays = [train_images, np.arange(len(train_images)) % 10, np.zeros((3, 28, 28)), np.arange(3)]
    return {f"{name}.gz": gzipped_idx(array) for name, array in zip(m.FILES, arrays)}


TINY = tiny_mnist(np.full((128, 28, 28), 51))  # 2 batches of 64
FIRST = "train-images-idx3-ubyte.gz"


def folder_with(path, files):
    """The folder at path, made to hold files, {name: bytes}."""
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


@pytest.fixture
def tiny_checksums(monkeypatch):
    """load_mnist checks downloads against TINY's SHA-256s, not MNIST's."""
    checksums = {
        name.removesuffix(".gz"): hashlib.sha256(data).hexdigest() for name, data in TINY.items()
    }
    monkeypatch.setattr(m, "FILES", checksums)


@pytest.fixture
def mirrors(monkeypatch, tmp_path_factory, tiny_checksums):
    """mirrors(files, ...) serves each {name: bytes} on loopback as one of load_mnist's mirrors."""
    monkeypatch.setenv("no_proxy", "*")  # straight to loopback, past any proxy
    servers = []

    def serve(*folders):
        urls = []
        for files in folders:
            root = folder_with(tmp_path_factory.mktemp("mirror"), files)
            handler = partial(http.server.SimpleHTTPRequestHandler, directory=root)
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # 404 if no file
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
            urls.append(f"http://127.0.0.1:{server.server_port}/")
        monkeypatch.setattr(m, "MIRRORS", urls)
        return urls

    yield serve
    for server in servers:
        server.shutdown()


def test_the_header_gives_the_shape(tmp_path):
    folder = folder_with(tmp_path, tiny_mnist(np.zeros((49, 32, 30))))
    train_images, train_labels, test_images, test_labels = m.load_mnist(folder)
    assert train_images.shape == (49, 32 * 30)  # an image's row: height x width values
    assert train_labels.shape == (49,)
    assert test_images.shape == (3, 784)
    assert test_labels.shape == (3,)


def test_pixels_come_as_float32_from_0_to_1_and_labels_as_written(tmp_path):
    folder = folder_with(tmp_path, tiny_mnist(np.full((128, 28, 28), 255)))
    train_images, train_labels = m.load_mnist(folder)[:2]
    assert train_images.dtype == np.float32
    assert train_images.min() == train_images.max() == 1.0  # 255 / 255
    assert train_labels.tolist() == [i % 10 for i in range(128)]


DAMAGED = {
    "not gzip": b"<html>404</html>",
    "cut short": TINY[FIRST][:-30],
    "empty": gzip.compress(b""),
    "gzip, not IDX": gzip.compress(b"not IDX at all"),
    "IDX of another type than bytes": gzip.compress(bytes([0, 0, 13, 1, 0, 0, 0, 4]) + bytes(4)),
    "a byte fewer than its header says": gzip.compress(gzip.decompress(TINY[FIRST])[:-1]),
}


@pytest.mark.parametrize("damage", DAMAGED)
def test_a_file_that_is_not_idx_is_named_and_left_as_it_is(damage, tmp_path):
    folder = folder_with(tmp_path, {**TINY, FIRST: DAMAGED[damage]})
    with pytest.raises(ValueError, match=re.escape(str(folder / FIRST))):
        m.load_mnist(folder)
    assert (folder / FIRST).read_bytes() == DAMAGED[damage]


def test_a_bad_download_is_rejected_and_the_next_mirror_used(mirrors, tmp_path, capsys):
    first, second = mirrors({FIRST: TINY[FIRST][:-40]}, TINY)  # the first: FIRST cut short, no more
    m.load_mnist(tmp_path)
    printed = capsys.readouterr().out
    assert f"Downloading {first}{FIRST}\n" in printed
    assert f"Downloading {second}{FIRST}\n" in printed
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == TINY


def test_the_mirrors_are_tried_in_order_with_a_line_each(mirrors, tmp_path, capsys):
    first, second = mirrors({}, TINY)  # the first answers HTTP 404 for every file
    m.load_mnist(tmp_path)
    lines = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("Downloading")
    ]
    assert lines == [f"Downloading {url}{name}" for name in TINY for url in (first, second)]


def test_no_mirror_with_the_file_names_it_and_the_folder(mirrors, tmp_path):
    mirrors({}, {FIRST: b"<html>503</html>"})
    with pytest.raises(OSError) as error:
        m.load_mnist(tmp_path)
    assert FIRST in str(error.value)
    assert str(tmp_path) in str(error.value)


def test_the_data_folder_downloads_only_its_missing_files(mirrors, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        m, "DATA_DIR", tmp_path
    )  # the project's own folder, as after a cut download
    first = folder_with(tmp_path, {FIRST: TINY[FIRST]}) / FIRST
    written = first.stat().st_mtime_ns
    (url,) = mirrors(TINY)
    m.load_mnist(tmp_path)
    printed = capsys.readouterr().out
    assert f"Downloading {url}{FIRST}" not in printed
    assert first.stat().st_mtime_ns == written  # not written again
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(TINY)


def test_the_data_folder_takes_no_mnist_beside_other_data(mirrors, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(m, "DATA_DIR", tmp_path)
    theirs = folder_with(tmp_path, {FIRST: gzipped_idx(np.zeros((128, 28, 28)))}) / FIRST
    mirrors(TINY)
    with pytest.raises(ValueError, match=re.escape(str(theirs))):
        m.load_mnist(tmp_path)
    assert capsys.readouterr().out == ""  # no request
    assert os.listdir(tmp_path) == [FIRST]


def test_a_named_folder_of_other_files_gets_no_mnist(mirrors, tmp_path, capsys):
    mirrors(TINY)
    folder = folder_with(tmp_path, {"my-images.idx": b"theirs"})
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder))):
        m.load_mnist(folder)
    assert capsys.readouterr().out == ""  # no request
    assert os.listdir(folder) == ["my-images.idx"]


def test_a_named_folder_with_some_files_is_not_filled_up(mirrors, tmp_path, capsys):
    mirrors(TINY)
    last = "t10k-labels-idx1-ubyte.gz"
    folder = folder_with(tmp_path, {name: data for name, data in TINY.items() if name != last})
    with pytest.raises(FileNotFoundError) as error:
        m.load_mnist(folder)
    assert last in str(error.value)
    assert str(folder) in str(error.value)
    assert capsys.readouterr().out == ""  # no request
    assert not (folder / last).exists()


def python(tmp_path, *args):
    """What `python *args` prints, run in tmp_path with $XDG_CACHE_HOME and $HOME in it, offline."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = os.path.dirname(SCRIPT)
    env["https_proxy"] = "http://127.0.0.1:1"  # a proxy that refuses: no mirror can answer
    run = subprocess.run(
        [sys.executable, *args], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_an_import_prints_nothing_and_makes_no_folder(tmp_path):
    out = python(tmp_path, "-c", "import mlp_mnist")
    assert out == ""
    assert os.listdir(tmp_path) == []


def test_the_file_run_as_a_script_trains_with_the_settings(tmp_path):
    folder_with(tmp_path / "mlp_mnist", TINY)  # the default data folder: $XDG_CACHE_HOME/mlp_mnist
    lines = python(tmp_path, SCRIPT).splitlines()
    epoch_line = (
        r"Epoch (\d+)/(\d+): loss: [\d.]+, train acc\.: [\d.]+, test acc\.: [\d.]+, time: .*"
    )
    epochs = [re.fullmatch(epoch_line, line).groups() for line in lines[1:]]
    assert lines[0].startswith("Training on ")
    assert epochs == [(str(i), str(m.EPOCHS)) for i in range(1, m.EPOCHS + 1)]
