"""Tests for mlp_mnist.py: what autodiff computes, the shapes, the numerics, that
training learns, the data loader against a loopback server, and the command line.

    pip install -r requirements.txt pytest && python -m pytest -q

No network but 127.0.0.1: the mirrors are a local http.server, the data tiny
IDX files written here.
"""
import gzip
import hashlib
import http.server
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax import random
from jax.flatten_util import ravel_pytree

import mlp_mnist as m


# ---------------------------------------------------------------------------
# Gradients: what jax.grad computes, checked two ways, in float64.
# ---------------------------------------------------------------------------

def backward_by_hand(params, X, y):
    """The backward pass of cross_entropy_loss written out in NumPy.

    With p = softmax(logits), d loss / d logits = (p - onehot(y)) / batch. Going
    back through a layer a_out = a_in @ W + b: dW = a_in.T @ delta, db = sum of
    delta over the batch, and the delta for a_in is delta @ W.T, times 1 where
    that layer's ReLU was active and 0 where it was not."""
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
    """float64 params (scale 0.5, so many ReLUs are on and many off), images, labels."""
    k1, k2, k3 = random.split(random.PRNGKey(seed), 3)
    params = m.initialize_weights(sizes, k1, scale=0.5)
    X = random.uniform(k2, (batch, sizes[0]), dtype=jnp.float64)
    y = random.randint(k3, (batch,), 0, sizes[-1])
    return params, X, y


@pytest.mark.parametrize("sizes", [[20, 16, 10], [20, 12, 8, 10]], ids=["2-layer", "3-layer"])
def test_grad_matches_backward_pass_by_hand(sizes):
    with jax.enable_x64(True):
        params, X, y = small_problem(sizes)
        assert params[0][0].dtype == jnp.float64
        grads = jax.jit(jax.grad(m.cross_entropy_loss))(params, X, y)
        by_hand = backward_by_hand([tuple(map(np.asarray, layer)) for layer in params],
                                   np.asarray(X), np.asarray(y))
        for (dW, db), (dW_hand, db_hand) in zip(grads, by_hand):
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
        numeric = jax.vmap(lambda e: (loss(flat + eps * e) - loss(flat - eps * e)) / (2 * eps))(
            jnp.eye(len(flat)))
        analytic = ravel_pytree(jax.jit(jax.grad(m.cross_entropy_loss))(params, X, y))[0]
        assert np.abs(analytic).max() > 1e-3  # a real gradient, not all zeros
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------
# Shapes and dtypes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("sizes", [[784, 128, 10], [784, 10], [784, 256, 64, 10]])
def test_initialize_weights_shapes_dtypes_and_scale(sizes):
    params = m.initialize_weights(sizes, random.PRNGKey(0))
    assert [(W.shape, b.shape) for W, b in params] == [((a, b), (b,)) for a, b in zip(sizes[:-1], sizes[1:])]
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    assert abs(float(jnp.std(params[0][0])) - 0.02) < 0.001
    assert float(jnp.std(m.initialize_weights(sizes, random.PRNGKey(0), scale=0.5)[0][0])) > 0.45


def test_flat_draw_gives_the_numbers_of_a_matrix_draw():
    """initialize_weights draws W flat, then reshapes, only to compile faster."""
    key = random.split(random.split(random.PRNGKey(5), 2)[1])[0]  # layer 2's weight key
    W = m.initialize_weights([784, 128, 10], random.PRNGKey(5))[1][0]
    np.testing.assert_array_equal(W, 0.02 * random.normal(key, (128, 10)))


def test_forward_loss_and_update_shapes():
    params = m.initialize_weights([784, 32, 16, 10], random.PRNGKey(0))
    X = random.uniform(random.PRNGKey(1), (5, 784))
    y = jnp.arange(5)
    assert m.forward(params, X).shape == (5, 10)
    loss = m.cross_entropy_loss(params, X, y)
    assert loss.shape == () and loss.dtype == jnp.float32
    new_params, step_loss = m.update(params, X, y, 0.1)
    assert jax.tree_util.tree_structure(new_params) == jax.tree_util.tree_structure(params)
    for old, new in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(new_params)):
        assert new.shape == old.shape and new.dtype == old.dtype
    assert float(step_loss) == pytest.approx(float(loss), rel=1e-6)


def test_update_is_one_sgd_step():
    params = m.initialize_weights([784, 32, 10], random.PRNGKey(0))
    X, y = random.uniform(random.PRNGKey(1), (8, 784)), jnp.arange(8)
    grads = jax.grad(m.cross_entropy_loss)(params, X, y)
    new_params, _ = m.update(params, X, y, 0.5)
    for p, g, new in zip(*(jax.tree_util.tree_leaves(t) for t in (params, grads, new_params))):
        np.testing.assert_allclose(new, p - 0.5 * g, rtol=1e-5, atol=1e-7)


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
    # why log_softmax: exp(1000) overflows float32, so softmax computed as written
    # is inf / inf = nan; and even a max-shifted softmax gives p = exp(-1008) = 0
    # for label 9, whose log is -inf
    logits = m.forward(params, X)
    assert np.isnan(jnp.exp(logits) / jnp.exp(logits).sum(1, keepdims=True)).any()
    assert np.isinf(jnp.log(jax.nn.softmax(logits))[:, 9]).all()


def test_uniform_logits_give_log_10():
    params = [(jnp.zeros((784, 10)), jnp.zeros(10))]
    X = random.uniform(random.PRNGKey(0), (7, 784))
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
        images[labels == c, c * 78:(c + 1) * 78] += 190
    return images.astype(np.uint8), labels


def test_scale_maps_uint8_to_unit_interval():
    scaled = m.scale(jnp.array([0, 51, 255], dtype=jnp.uint8))
    assert scaled.dtype == jnp.float32
    np.testing.assert_allclose(scaled, [0.0, 0.2, 1.0])


def test_train_epoch_is_the_python_loop_over_update():
    """The compiled epoch computes what a plain loop over `update` would."""
    images, labels = synthetic(200, 0)
    params = m.initialize_weights([784, 16, 10], random.PRNGKey(0))
    key = random.PRNGKey(3)
    scanned, mean_loss = m.train_epoch(params, images, labels, key, 0.05, 64)

    order = np.argsort(np.asarray(random.bits(key, (200,))), kind="stable")
    looped, losses = params, []
    for i in range(200 // 64):  # 3 full batches; the last 8 images are dropped
        batch = order[i * 64:(i + 1) * 64]
        looped, loss = m.update(looped, images[batch] / np.float32(255), labels[batch], 0.05)
        losses.append(float(loss))
    assert float(mean_loss) == pytest.approx(np.mean(losses), rel=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(scanned), jax.tree_util.tree_leaves(looped)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_evaluate_matches_accuracy_of_forward():
    images, labels = synthetic(2 * m.EVAL_BATCH + 123, 1)  # not a whole number of chunks
    params = m.initialize_weights([784, 16, 10], random.PRNGKey(0), scale=0.1)
    expected = m.accuracy(m.forward(params, m.scale(jnp.asarray(images))), labels)
    (got,) = m.evaluate(params, [(images, labels)])
    assert 0.02 < float(expected) < 0.98  # neither trivial nor perfect, so the check has teeth
    assert float(got) == pytest.approx(float(expected), abs=1e-6)


def test_training_lowers_the_loss_and_learns(capsys):
    data = (*synthetic(512, 0), *synthetic(200, 1))
    params = m.train(data, [784, 32, 10], seed=0, epochs=4, lr=0.1, batch_size=16)
    lines = capsys.readouterr().out.splitlines()
    losses = [float(re.search(r"loss: ([0-9.]+)", line)[1]) for line in lines[:4]]
    assert losses[-1] < losses[0] / 2
    (valid_acc,) = m.evaluate(params, [(data[2], data[3])])
    assert float(valid_acc) > 0.95


def test_one_seed_gives_identical_parameters(capsys):
    data = (*synthetic(256, 0), *synthetic(64, 1))
    run = lambda seed: m.train(data, [784, 16, 10], seed=seed, epochs=2, lr=0.05, batch_size=32)
    first, again, other = run(7), run(7), run(8)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(first),
                                                    jax.tree_util.tree_leaves(again)))
    assert not np.array_equal(first[0][0], other[0][0])


# ---------------------------------------------------------------------------
# Data: tiny IDX files, served by a loopback HTTP server standing in for the mirrors
# ---------------------------------------------------------------------------

def idx(array):
    """IDX bytes: magic (2051 images, 2049 labels), the dimensions, the uint8 payload."""
    magic = 2051 if array.ndim == 3 else 2049
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def tiny_files(n_train=256, n_test=100):
    """The four IDX files of a small learnable dataset, decompressed: {name: bytes}."""
    (xtr, ytr), (xte, yte) = synthetic(n_train, 0), synthetic(n_test, 1)
    return {"train-images-idx3-ubyte": idx(xtr.reshape(-1, 28, 28)), "train-labels-idx1-ubyte": idx(ytr),
            "t10k-images-idx3-ubyte": idx(xte.reshape(-1, 28, 28)), "t10k-labels-idx1-ubyte": idx(yte)}


@pytest.fixture
def tiny(monkeypatch):
    """Registers a dataset 'tiny': the checksums of tiny_files(), no mirrors yet."""
    files = tiny_files()
    monkeypatch.setitem(m.SHA256, "tiny", {n: hashlib.sha256(d).hexdigest() for n, d in files.items()})
    monkeypatch.setitem(m.MIRRORS, "tiny", ())
    return files


def write_folder(folder, files, gz=True):
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return folder


@pytest.fixture
def server(monkeypatch):
    """A loopback HTTP server. routes maps a path to (behaviour, body); requests
    lists the paths asked for. Behaviours: serve, status (body is the code), drop
    (promise the whole body, send half, close), stall (say nothing)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    routes, requests, release = {}, [], threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            behaviour, body = routes.get(self.path, ("status", 404))
            if behaviour == "status":
                return self.send_error(body)
            if behaviour == "stall":
                release.wait(10)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if behaviour == "serve" else body[:len(body) // 2])
            if behaviour == "drop":
                self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", routes=routes, requests=requests)
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
    for a, b in zip(from_gz, from_raw):
        np.testing.assert_array_equal(a, b)
    train_images, train_labels, test_images, test_labels = from_gz
    assert train_images.shape == (256, 784) and test_images.shape == (100, 784)
    assert train_images.dtype == np.uint8 and train_labels.dtype == np.int32
    assert set(np.unique(train_labels)) <= set(range(10))
    np.testing.assert_array_equal(train_images, synthetic(256, 0)[0])
    scaled = m.scale(train_images)
    assert 0.0 <= float(scaled.min()) and float(scaled.max()) <= 1.0


@pytest.mark.parametrize("name, data, message", [
    ("train-images-idx3-ubyte", struct.pack(">IIII", 2049, 1, 28, 28) + bytes(784), "magic number 2049, expected 2051"),
    ("train-labels-idx1-ubyte", struct.pack(">II", 2051, 1) + bytes(1), "magic number 2051, expected 2049"),
    ("train-images-idx3-ubyte", struct.pack(">IIII", 2051, 1, 32, 32) + bytes(1024), "32x32, expected 28x28"),
    ("train-images-idx3-ubyte", struct.pack(">IIII", 2051, 2, 28, 28) + bytes(784), "announces 2 items"),
    ("train-labels-idx1-ubyte", struct.pack(">II", 2049, 2) + bytes([3, 12]), "label 12"),
    ("t10k-labels-idx1-ubyte", b"\x00\x00", "too short"),
], ids=["images-magic", "labels-magic", "not-28x28", "payload-length", "label-range", "short"])
def test_parse_idx_names_the_file_and_the_problem(name, data, message):
    with pytest.raises(m.DataError, match=re.escape(message)) as error:
        m.parse_idx(data, name)
    assert name in str(error.value)


def test_image_and_label_counts_must_agree(tiny, tmp_path, monkeypatch):
    files = dict(tiny, **{"t10k-labels-idx1-ubyte": idx(synthetic(99, 1)[1])})
    monkeypatch.setitem(m.SHA256, "tiny", {n: hashlib.sha256(d).hexdigest() for n, d in files.items()})
    with pytest.raises(m.DataError, match="100 images but t10k-labels holds 99 labels"):
        m.load_mnist("tiny", str(write_folder(tmp_path / "d", files)))


def test_truncated_gzip_is_a_clear_error_not_an_eof_traceback():
    data = idx(synthetic(10, 0)[1])
    truncated = gzip.compress(data)[:-20]
    with pytest.raises(ValueError, match="damaged gzip data"):
        m.verified(truncated, hashlib.sha256(data).hexdigest())


def test_verified_folder_makes_no_request_and_no_write(tiny, tmp_path, server, monkeypatch):
    folder = write_folder(tmp_path / "d", tiny)
    monkeypatch.setitem(m.MIRRORS, "tiny", (serve_all(server, tiny, "m1"),))
    before = sorted(os.listdir(folder))
    m.load_mnist("tiny", str(folder))
    assert server.requests == [] and sorted(os.listdir(folder)) == before


def test_read_only_verified_folder_works(tiny, tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "ro", tiny)
    for path in folder.iterdir():
        path.chmod(0o444)
    folder.chmod(0o555)
    # root ignores permission bits, so also make any attempt to write fail the test
    monkeypatch.setattr(m, "save", lambda *a: pytest.fail("tried to write into a read-only folder"))
    try:
        assert len(m.load_mnist("tiny", str(folder))[0]) == 256
    finally:
        folder.chmod(0o755)


def test_download_skips_a_403_mirror_verifies_and_caches(tiny, tmp_path, server, monkeypatch, capsys):
    good = serve_all(server, tiny, "good")
    for name in tiny:
        server.routes[f"/forbidden/{name}.gz"] = ("status", 403)
    monkeypatch.setitem(m.MIRRORS, "tiny", (f"{server.url}/forbidden/", good))
    folder = tmp_path / "cache" / "tiny"  # does not exist yet
    arrays = m.load_mnist("tiny", str(folder))
    assert len(arrays[0]) == 256
    assert sorted(os.listdir(folder)) == sorted(n + ".gz" for n in tiny)
    assert capsys.readouterr().err.count("Downloaded") == 4
    server.requests.clear()
    m.load_mnist("tiny", str(folder))  # second run: from the cache, silently
    assert server.requests == [] and capsys.readouterr().err == ""


@pytest.mark.parametrize("behaviour", ["truncated", "altered", "drop", "stall"])
def test_a_bad_mirror_is_rejected_and_the_next_one_used(behaviour, tiny, tmp_path, server, monkeypatch):
    for name, data in tiny.items():
        body = gzip.compress(data)
        server.routes[f"/bad/{name}.gz"] = {
            "truncated": ("serve", body[:len(body) // 2]),        # a short file, served in full
            "altered": ("serve", gzip.compress(data[:-1] + b"\x01")),  # valid gzip, wrong content
            "drop": ("drop", body),                               # connection closed mid-body
            "stall": ("stall", None),                             # never answers
        }[behaviour]
    monkeypatch.setitem(m.MIRRORS, "tiny", (f"{server.url}/bad/", serve_all(server, tiny, "good")))
    monkeypatch.setattr(m, "DOWNLOAD_TIMEOUT", 0.5)
    folder = tmp_path / "d"
    arrays = m.load_mnist("tiny", str(folder))
    np.testing.assert_array_equal(arrays[1], synthetic(256, 0)[1])
    assert sum(p.startswith("/good/") for p in server.requests) == 4
    assert sorted(os.listdir(folder)) == sorted(n + ".gz" for n in tiny)


def test_a_damaged_cached_file_is_reported_and_fetched_again(tiny, tmp_path, server, monkeypatch, capsys):
    folder = write_folder(tmp_path / "d", tiny)
    damaged = folder / "train-labels-idx1-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:-30])
    monkeypatch.setitem(m.MIRRORS, "tiny", (serve_all(server, tiny, "m"),))
    m.load_mnist("tiny", str(folder))
    assert server.requests == ["/m/train-labels-idx1-ubyte.gz"]
    assert "train-labels-idx1-ubyte.gz is unusable: damaged gzip data" in capsys.readouterr().err
    assert gzip.decompress(damaged.read_bytes()) == tiny["train-labels-idx1-ubyte"]


def test_another_datasets_file_is_named_as_such(tiny, tmp_path, monkeypatch, capsys):
    folder = write_folder(tmp_path / "d", tiny)
    monkeypatch.setitem(m.SHA256, "other", {n: hashlib.sha256(b"other" + d).hexdigest() for n, d in tiny.items()})
    monkeypatch.setitem(m.MIRRORS, "other", ())
    with pytest.raises(m.DataError, match="Could not get train-images-idx3-ubyte.gz"):
        m.load_mnist("other", str(folder))
    assert "it holds tiny's train-images-idx3-ubyte (is --dataset right?)" in capsys.readouterr().err


def unused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_all_mirrors_failing_is_a_clear_error_and_leaves_no_file(tiny, tmp_path, server, monkeypatch):
    for name in tiny:
        server.routes[f"/gone/{name}.gz"] = ("status", 403)
    closed = f"http://127.0.0.1:{unused_port()}/"
    monkeypatch.setitem(m.MIRRORS, "tiny", (f"{server.url}/gone/", closed))
    folder = tmp_path / "d"
    with pytest.raises(m.DataError) as error:
        m.load_mnist("tiny", str(folder))
    message = str(error.value)
    assert "train-images-idx3-ubyte.gz" in message and "--data-dir" in message
    assert f"{server.url}/gone/train-images-idx3-ubyte.gz: HTTP Error 403" in message
    assert f"{closed}train-images-idx3-ubyte.gz: <urlopen error" in message
    assert not folder.exists() or os.listdir(folder) == []


def test_interrupted_save_leaves_no_partial_file(tmp_path, monkeypatch):
    def interrupt(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        m.save(b"x" * 1000, str(tmp_path / "train-images-idx3-ubyte.gz"))
    assert os.listdir(tmp_path) == []


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(m.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert m.default_data_dir("fashion") == os.path.join(str(tmp_path), "mlp_mnist", "fashion")
    monkeypatch.setenv(m.DATA_DIR_ENV, "/data/mnist")
    assert m.default_data_dir("mnist") == "/data/mnist"


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

EPOCH_LINE = re.compile(r"Epoch (\d+)/2: loss: \d+\.\d{4}, train acc\.: [01]\.\d{3}, "
                        r"valid acc\.: [01]\.\d{3}, time: \d+\.\d{2} sec\.")


def test_main_trains_and_prints_the_article_format(tiny, tmp_path, capsys):
    folder = write_folder(tmp_path / "d", tiny)
    args = ["--dataset", "tiny", "--data-dir", str(folder), "--epochs", "2", "--batch-size", "32",
            "--hidden", "32", "--lr", "0.1"]
    assert m.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"JAX {jax.__version__} on ")
    assert [EPOCH_LINE.fullmatch(line)[1] for line in lines[1:3]] == ["1", "2"]
    assert re.fullmatch(r"Done: 2 epochs in [0-9.]+ sec\., final valid acc\.: [01]\.\d{3}", lines[3])
    assert len(lines) == 4


@pytest.mark.parametrize("args", [
    ["--epochs", "0"], ["--epochs", "two"], ["--batch-size", "0"], ["--lr", "0"], ["--lr", "-0.1"],
    ["--lr", "nan"], ["--lr", "inf"], ["--hidden", "0"], ["--hidden", "128", "-5"], ["--dataset", "cifar"],
])
def test_bad_arguments_exit_2_with_usage(args, capsys):
    with pytest.raises(SystemExit) as exit:
        m.main(args)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and "Traceback" not in err


def test_batch_size_larger_than_training_set_exits_2(tiny, tmp_path, capsys):
    folder = write_folder(tmp_path / "d", tiny)
    with pytest.raises(SystemExit) as exit:
        m.main(["--dataset", "tiny", "--data-dir", str(folder), "--batch-size", "257"])
    assert exit.value.code == 2
    assert "257 is more than the 256 training images" in capsys.readouterr().err


def test_diverging_loss_exits_1_and_suggests_a_smaller_lr(tiny, tmp_path, capsys):
    folder = write_folder(tmp_path / "d", tiny)
    assert m.main(["--dataset", "tiny", "--data-dir", str(folder), "--lr", "1e30", "--epochs", "3",
                   "--hidden", "16"]) == 1
    err = capsys.readouterr().err
    assert "epoch 1" in err and "smaller --lr" in err and "Traceback" not in err


def test_no_mirror_reachable_exits_1_with_a_message(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(m.MIRRORS, "tiny", (f"http://127.0.0.1:{unused_port()}/",))
    assert m.main(["--dataset", "tiny", "--data-dir", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Could not get train-images-idx3-ubyte.gz") and "--data-dir" in err
    assert capsys.readouterr().out == ""


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(m, "load_mnist", interrupted)
    assert m.main([]) == 130
    assert capsys.readouterr().err == "Interrupted.\n"


def test_the_script_itself_exits_2_on_bad_usage_and_import_is_silent(tmp_path):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlp_mnist.py")
    env = dict(os.environ, HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path))
    run = subprocess.run([sys.executable, script, "--epochs", "0"], capture_output=True, text=True, env=env)
    assert run.returncode == 2 and "usage:" in run.stderr and "Traceback" not in run.stderr
    imported = subprocess.run([sys.executable, "-c", "import mlp_mnist"], cwd=os.path.dirname(script),
                              capture_output=True, text=True, env=env)
    assert imported.returncode == 0 and imported.stdout == imported.stderr == ""
    assert os.listdir(tmp_path) == []  # nothing downloaded, nothing cached
