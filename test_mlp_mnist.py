"""Tests for mlp_mnist.py, in the order the file teaches, then the data, the command line and the README's code:
`pip install -r requirements.txt pytest && python -m pytest -q`. No network but 127.0.0.1: the mirrors are
loopback HTTP servers, the data tiny IDX files written here."""

import ast
import concurrent.futures
import functools
import gzip
import hashlib
import http.server
import os
import re
import runpy
import socket
import subprocess
import sys
import threading
import time
import tomllib
from types import ModuleType, SimpleNamespace
from unittest.mock import Mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import random
from jax.flatten_util import ravel_pytree

import mlp_mnist as m

ROOT = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(ROOT, "mlp_mnist.py")
README = open(os.path.join(ROOT, "README.md")).read()
MIRRORS = list(m.MIRRORS)  # the real ones: the tests below put loopback mirrors in their place


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Every test gets its own empty cache folder, no proxy and no data folder from the environment."""
    monkeypatch.setattr(m, "CACHE", str(tmp_path / "cache"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "MLP_MNIST_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)


# --- The gradient: what jax.grad computes, checked two ways, in float64 -------------------------------------------
def backward_by_hand(params, X, y):
    """The backward pass of cross_entropy_loss, written out in NumPy.

    With p = softmax(logits), d loss / d logits = (p - onehot(y)) / batch. Back through a layer a_out = a_in @ W + b:
    dW = a_in.T @ delta, db = delta summed over the batch, and a_in's delta is delta @ W.T, times 1 where that
    layer's ReLU was on and 0 where it was off."""
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
        grads.append((activations[i].T @ delta, delta.sum(axis=0)))
        if i:
            delta = (delta @ params[i][0].T) * (pre_activations[i - 1] > 0)
    return grads[::-1]


def small_problem(sizes, seed=0, batch=8):
    """float64 params (scale 0.5, so that many ReLUs are on and many off), images and labels."""
    rng = np.random.default_rng(seed)
    params = [(0.5 * rng.standard_normal((a, b)), 0.5 * rng.standard_normal(b)) for a, b in zip(sizes, sizes[1:])]
    return params, rng.random((batch, sizes[0])), rng.integers(0, sizes[-1], batch)


@pytest.mark.parametrize("sizes", [[20, 16, 10], [20, 12, 8, 10]], ids=["2-layer", "3-layer"])
def test_grad_is_the_backward_pass_written_by_hand_and_matches_finite_differences(sizes):
    with jax.enable_x64(True):
        params, X, y = small_problem(sizes)
        grads = jax.grad(m.cross_entropy_loss)(jax.tree.map(jnp.asarray, params), X, y)
        assert grads[0][0].dtype == jnp.float64
        for (dW, db), (dW_hand, db_hand) in zip(grads, backward_by_hand(params, X, y), strict=True):
            np.testing.assert_allclose(dW, dW_hand, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(db, db_hand, rtol=1e-10, atol=1e-12)
        flat, unflatten = ravel_pytree(jax.tree.map(jnp.asarray, params))  # every weight and bias, in one vector
        loss = jax.jit(lambda v: m.cross_entropy_loss(unflatten(v), X, y))
        eps = 1e-6  # (loss(v + eps e_i) - loss(v - eps e_i)) / 2 eps, for every direction e_i at once:
        numeric = jax.vmap(lambda e: (loss(flat + eps * e) - loss(flat - eps * e)) / (2 * eps))(jnp.eye(len(flat)))
        assert np.abs(numeric).max() > 1e-3  # a real gradient, not all zeros
        np.testing.assert_allclose(ravel_pytree(grads)[0], numeric, rtol=1e-6, atol=1e-8)


# --- Shapes and the article's signatures -------------------------------------------------------------------------
@pytest.mark.parametrize("sizes", [[784, 10], [784, 32, 16, 10]])
def test_shapes_dtypes_scale_and_update_is_one_sgd_step_with_the_articles_default_lr(sizes):
    params = m.initialize_weights(sizes, random.key(0))
    assert [(W.shape, b.shape) for W, b in params] == [((a, b), (b,)) for a, b in zip(sizes, sizes[1:])]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params)) and abs(jnp.std(params[0][0]) - 0.02) < 1e-3
    assert float(jnp.std(m.initialize_weights(sizes, random.key(0), scale=0.5)[0][0])) > 0.45
    X, y = random.uniform(random.key(1), (5, 784)), jnp.arange(5)
    assert m.forward(params, X).shape == (5, 10) and m.forward(params, X[0]).shape == (10,)
    loss, grads = m.cross_entropy_loss(params, X, y), jax.grad(m.cross_entropy_loss)(params, X, y)
    for lr, (new_params, step_loss) in [(0.5, m.update(params, X, y, 0.5)), (0.01, m.update(params, X, y))]:
        assert jax.tree.structure(new_params) == jax.tree.structure(params) and step_loss == loss and loss.shape == ()
        for p, g, new in zip(*(jax.tree.leaves(t) for t in (params, grads, new_params)), strict=True):
            np.testing.assert_allclose(new, p - lr * g, rtol=1e-5, atol=1e-7)


# --- Numerics: why log_softmax -----------------------------------------------------------------------------------
def test_log_softmax_keeps_the_loss_finite_and_right_where_log_of_softmax_fails_and_accuracy():
    biases = jnp.array([1000.0, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 0])
    params = [(jnp.zeros((784, 10)), biases)]  # one layer: the logits are the biases
    X, y, b = jnp.ones((2, 784)), jnp.array([0, 9]), np.asarray(biases, np.float64)
    logsumexp = b.max() + np.log(np.exp(b - b.max()).sum())  # -log p(label) = logsumexp(logits) - logit of the label
    assert float(m.cross_entropy_loss(params, X, y)) == pytest.approx(np.mean(logsumexp - b[[0, 9]]), rel=1e-6)
    logits = m.forward(params, X)  # written out, exp(1000) overflows: inf / inf = nan; max-shifted, log(0) = -inf
    assert np.isnan(jnp.exp(logits) / jnp.exp(logits).sum(1, keepdims=True)).any()
    assert np.isinf(jnp.log(jax.nn.softmax(logits))[:, 9]).all()
    uniform = [(jnp.zeros((784, 10)), jnp.zeros(10))]  # every logit 0: p = 1/10 for each class, a loss of log(10)
    assert float(m.cross_entropy_loss(uniform, jnp.ones((7, 784)), jnp.arange(7))) == pytest.approx(np.log(10))
    assert m.accuracy(jnp.array([[0.0, 2, 1], [3, 0, 0], [0, 0, 1], [1, 0, 0]]), jnp.array([1, 0, 2, 2])) == 0.75


# --- The compiled epoch, and learning ----------------------------------------------------------------------------
def synthetic(n, seed):
    """n images (n, 784) float32 in [0, 1], as load_mnist gives them, and uint8 labels; class c lights pixels
    c*78 to c*78+77."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 784))
    for c in range(10):
        images[labels == c, c * 78 : (c + 1) * 78] += 190
    return images / np.float32(255), labels


def test_train_epoch_is_the_python_loop_over_update():
    images, labels = synthetic(200, 0)
    params = m.initialize_weights([784, 16, 10], random.key(0))
    batches = np.random.default_rng(3).permutation(200)[:192].reshape(3, 64)
    scanned, mean_loss = m.train_epoch(params, images, labels, batches, 0.05)
    looped, losses = params, []
    for batch in batches:
        looped, loss = m.update(looped, images[batch], labels[batch], 0.05)
        losses.append(float(loss))
    assert float(mean_loss) == pytest.approx(np.mean(losses), rel=1e-5) and losses[-1] < losses[0]
    for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(looped), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_train_shuffles_learns_prints_the_articles_lines_and_repeats_with_a_seed(capsys, monkeypatch):
    data, batches, epoch = (*synthetic(500, 0), *synthetic(200, 1)), [], m.train_epoch
    monkeypatch.setattr(m, "train_epoch", lambda *args: batches.append(np.asarray(args[3])) or epoch(*args))
    params, results = m.train(data, [784, 16, 10], seed=0, epochs=4, lr=0.1, batch_size=16)
    assert all(b.shape == (31, 16) and len(set(b.ravel())) == 496 for b in batches)  # 31 full batches: 4 left out
    assert len({b.tobytes() for b in batches}) == 4  # a new order each epoch
    assert [r[0] for r in results] == [1, 2, 3, 4] and all(type(x) is float for r in results for x in r[1:])
    assert results[-1][1] < results[0][1] / 2 and results[-1][3] > 0.95
    assert results[-1][3] == pytest.approx(float(m.evaluate(params, data[2], data[3])))
    line = "Epoch 4/4: loss: {:.4f}, train acc.: {:.3f}, valid acc.: {:.3f}, time: {:.2f} sec.".format(*results[-1][1:])
    assert capsys.readouterr().out.splitlines()[-1] == line
    first, again, other = (m.train(data, [784, 16, 10], seed, epochs=1)[0][0][0] for seed in (0, 0, 1))
    assert np.array_equal(first, again) and not np.array_equal(first, other)  # one seed, the same weights


def test_the_articles_functions_in_the_articles_own_loop():
    """The article's loop, as written there: NumPy batches of 64, the loss pulled out with .item() at each step."""
    (X, y), (X_test, y_test) = synthetic(640, 0), synthetic(128, 1)
    params = m.initialize_weights([784, 128, 10], key=random.PRNGKey(516), scale=0.02)
    for _ in range(3):  # epochs
        losses = []
        for i in range(0, len(X), 64):
            params, loss = m.update(params, X[i : i + 64], y[i : i + 64], lr=0.5)
            losses.append(loss.item())
    valid_acc = np.mean([m.accuracy(m.forward(params, X_test[i : i + 64]), y_test[i : i + 64]).item() for i in (0, 64)])
    assert np.mean(losses) < np.log(10) / 4 and valid_acc > 0.9, (losses, valid_acc)


# --- The data: tiny IDX files, served by loopback HTTP servers standing in for the mirrors -----------------------
@pytest.fixture
def tiny(monkeypatch):
    """Four tiny IDX files (256 training and 100 test images) that mlp_mnist takes for MNIST's; no mirrors yet."""
    (xtr, ytr), (xte, yte) = synthetic(256, 0), synthetic(100, 1)
    arrays = [np.round(xtr * 255).reshape(-1, 28, 28), ytr, np.round(xte * 255).reshape(-1, 28, 28), yte]
    # an IDX file: 0, 0, 8 (uint8), the number of dimensions; each size as a big-endian uint32; the values
    idx = [bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">u4").tobytes() + a.astype(np.uint8).tobytes() for a in arrays]
    files = dict(zip([name for of, name in m.SHA256 if of == "mnist"], idx))
    for (dataset, name), data in zip(m.SHA256.copy(), 2 * list(files.values())):  # MNIST's files, and Fashion's
        monkeypatch.setitem(m.SHA256, (dataset, name), hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(m, "MIRRORS", [])
    return files


def folder_with(path, files, gz=True):
    path.mkdir(exist_ok=True)
    for name, data in files.items():
        (path / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return path


def snapshot(folder):
    """Each entry's name, size, time and bytes: to show that nothing was written, even by root."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()}


@pytest.fixture
def server():
    """A loopback HTTP server: `routes` maps a path to (status, body); "cut" sends half the body it promises."""
    routes, requests = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            status, body = routes.get(self.path, (404, b""))
            if status not in (200, "cut"):
                return self.send_error(status)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if status == 200 else body[: len(body) // 2])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", routes=routes, requests=requests)
    httpd.shutdown()


def mirror(server, prefix, files, status=200, dataset="mnist"):
    """Serves `files`, gzipped, under /prefix/ and makes that a mirror of `dataset`."""
    server.routes.update({f"/{prefix}/{name}.gz": (status, gzip.compress(data)) for name, data in files.items()})
    m.MIRRORS.append((dataset, f"{server.url}/{prefix}/"))


def test_where_the_data_come_from(tiny, tmp_path, server, monkeypatch):
    """--data-dir, gzipped or not, read-only; else $MLP_MNIST_DATA_DIR; else the cache, filled from the mirrors."""
    for dataset in ("mnist", "fashion"):  # HTTPS first; plain HTTP only where a dataset has no second HTTPS mirror
        https = [url.startswith("https://") for of, url in MIRRORS if of == dataset]
        assert https == sorted(https, reverse=True) and (all(https) or https.count(True) == 1), dataset
    mirror(server, "forbidden", tiny, status=403)
    mirror(server, "good", tiny)
    gz, raw = folder_with(tmp_path / "gz", tiny), folder_with(tmp_path / "raw", tiny, gz=False)
    gz.chmod(0o555)  # read-only; root writes there all the same, so the snapshot is what shows nothing was written
    before = snapshot(gz)
    monkeypatch.setenv("MLP_MNIST_DATA_DIR", str(tmp_path / "not-read"))  # --data-dir comes first
    from_gz, from_raw = m.load_mnist(data_dir=str(gz)), m.load_mnist(data_dir=str(raw))
    assert snapshot(gz) == before and server.requests == [] and not os.path.exists(tmp_path / "not-read")
    assert all(np.array_equal(a, b) for a, b in zip(from_gz, from_raw, strict=True))
    assert from_gz[0].shape == (256, 784) and from_gz[0].dtype == np.float32 and from_gz[3].shape == (100,)
    assert np.allclose(from_gz[0], synthetic(256, 0)[0], atol=1e-6) and np.array_equal(from_gz[3], synthetic(100, 1)[1])
    monkeypatch.setenv("MLP_MNIST_DATA_DIR", str(raw))
    assert len(m.load_mnist()[0]) == 256 and server.requests == []
    monkeypatch.delenv("MLP_MNIST_DATA_DIR")  # now the cache: the first mirror refuses each file, the second sends it
    m.load_mnist()
    assert server.requests[:2] == ["/forbidden/train-images-idx3-ubyte.gz", "/good/train-images-idx3-ubyte.gz"]
    assert sorted(os.listdir(os.path.join(m.CACHE, "mnist"))) == sorted(name + ".gz" for name in tiny)
    assert len(m.load_mnist()[0]) == 256 and len(server.requests) == 8  # a second run reads the cache
    mirror(server, "fashion", tiny, dataset="fashion")  # --dataset fashion: its own mirrors, checksums and folder
    assert m.main(["--dataset", "fashion", "--epochs", "1"]) == 0 and len(os.listdir(f"{m.CACHE}/fashion")) == 4
    assert server.requests[8:] == [f"/fashion/{name}.gz" for name in tiny]


BAD_DOWNLOADS = [(200, b"<html>Error 503</html>"), (200, gzip.compress(bytes(5000))[:-40]), ("cut", bytes(999))]


@pytest.mark.parametrize("status, body", BAD_DOWNLOADS, ids=["html-page", "truncated-archive", "cut-connection"])
def test_a_bad_download_is_rejected_and_the_next_mirror_tried(status, body, tiny, tmp_path, server):
    mirror(server, "bad", {"train-images-idx3-ubyte": b""})
    server.routes["/bad/train-images-idx3-ubyte.gz"] = (status, body)
    mirror(server, "good", tiny)
    assert len(m.load_mnist(data_dir=str(tmp_path / "d"))[0]) == 256
    saved = (tmp_path / "d" / "train-images-idx3-ubyte.gz").read_bytes()
    assert gzip.decompress(saved) == tiny["train-images-idx3-ubyte"] and server.requests[0].startswith("/bad/")


@pytest.mark.parametrize("damage", ["truncated", "another-file"])
def test_a_bad_file_in_the_folder_is_named_left_alone_and_not_downloaded_again(damage, tiny, tmp_path, server, capsys):
    folder = folder_with(tmp_path / "d", tiny)
    bad = folder / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-30] if damage == "truncated" else gzip.compress(tiny["t10k-labels-idx1-ubyte"]))
    mirror(server, "m", tiny)
    before = snapshot(folder)
    assert m.main(["--data-dir", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: No good copy of mnist's train-labels-idx1-ubyte:\n  {bad}: ")
    assert "It was left as it is" in err and snapshot(folder) == before and server.requests == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_saving_leaves_no_half_file_after_an_error_or_ctrl_c_and_three_runs_at_once_succeed(error, tiny, server):
    mirror(server, "m", tiny)
    with pytest.MonkeyPatch.context() as patch, pytest.raises(error):
        patch.setattr(os, "replace", Mock(side_effect=error))  # as the first file is renamed into place
        m.load_mnist()
    assert os.listdir(os.path.join(m.CACHE, "mnist")) == []
    start = threading.Barrier(3)  # three runs at once on an empty cache
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: (start.wait(), m.load_mnist())[1], range(3)))
    assert all(np.array_equal(r[1], results[0][1]) for r in results)
    assert sorted(os.listdir(os.path.join(m.CACHE, "mnist"))) == sorted(name + ".gz" for name in tiny)


def test_every_mirror_failing_is_one_message_exit_1_and_no_file(tiny, tmp_path, server, capsys):
    mirror(server, "gone", tiny, status=403)
    with socket.socket() as s:  # a port nobody listens on: as a machine offline
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    m.MIRRORS.append(("mnist", closed))
    start = time.monotonic()
    assert m.main(["--data-dir", str(tmp_path / "d")]) == 1 and time.monotonic() - start < 60
    err = capsys.readouterr().err
    assert err.startswith("error: No good copy of mnist's train-images-idx3-ubyte:\n")
    assert f"{server.url}/gone/train-images-idx3-ubyte.gz: HTTP Error 403" in err
    assert f"{closed}train-images-idx3-ubyte.gz: <urlopen error" in err
    assert "Offline? Put the four .gz files in a folder. --data-dir FOLDER" in err and os.listdir(tmp_path / "d") == []


# --- The command line ----------------------------------------------------------------------------------------------
BAD_ARGS = ["--epochs 0", "--epochs two", "--batch-size 0", "--batch-size 60001", "--hidden 0", "--hidden 128 -5"]


@pytest.mark.parametrize("args", [*BAD_ARGS, "--lr 0", "--lr -0.1", "--lr nan", "--lr inf", "--dataset cifar"])
def test_a_value_that_makes_no_sense_is_a_usage_error_exit_2(args, server, capsys):
    mirror(server, "m", {})
    assert m.main(args.split()) == 2  # a status, not SystemExit, which a notebook's kernel would show as an error
    err = capsys.readouterr().err
    assert err.startswith("usage:") and err.count("error:") == 1 and "Traceback" not in err and not server.requests


def test_help_gives_the_defaults_that_train_uses(capsys):
    assert m.main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines where it likes
    assert m.train.__defaults__ == (516, 25, 0.01, 64)  # seed, epochs, lr, batch_size
    for option, default in [("epochs", 25), ("lr", 0.01), ("batch-size", 64), ("seed", 516), ("hidden", 128)]:
        assert re.search(rf"--{option} .*?\(default: {default}\)", text), option
    assert "(default: mnist)" in text and "$MLP_MNIST_DATA_DIR" in text and "None" not in text


@pytest.mark.parametrize("where", ["a-file", "below-a-file", "unreadable"])
def test_a_folder_that_cant_be_made_or_read_is_named_before_any_request(where, tmp_path, server, monkeypatch, capsys):
    mirror(server, "m", {"train-images-idx3-ubyte": b""})
    (tmp_path / "a-file").write_text("mine")
    folder = {"a-file": tmp_path / "a-file", "below-a-file": tmp_path / "a-file" / "data"}.get(where, tmp_path)
    if where == "unreadable":  # someone else's folder; root reads anything, so refuse by hand
        monkeypatch.setattr(os, "listdir", Mock(side_effect=PermissionError(13, "Permission denied", str(folder))))
    assert m.main(["--data-dir", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: No data folder: ") and str(folder) in err and "--data-dir" in err
    assert server.requests == [] and (tmp_path / "a-file").read_text() == "mine"


def test_a_loss_that_stops_being_finite_exits_1_naming_the_lr_and_ctrl_c_exits_130(tiny, tmp_path, monkeypatch, capsys):
    assert m.main(["--data-dir", str(folder_with(tmp_path / "d", tiny)), "--lr", "1e30", "--hidden", "16"]) == 1
    assert capsys.readouterr().err == "error: the loss became nan in epoch 1: try a smaller learning rate than 1e+30\n"
    monkeypatch.setattr(m, "load_mnist", Mock(side_effect=KeyboardInterrupt))
    assert m.main([]) == 130 and capsys.readouterr().err == "Interrupted.\n"


# --- Where readers run it: a program, a notebook, uv --------------------------------------------------------------
AS_A_PROGRAM = """
import ast, sys
sys.path.insert(0, {root!r})
import mlp_mnist as m
m.SHA256.update({hashes!r})
sys.argv[0] = m.__file__
vars(m)["__name__"] = "__main__"  # then the file's last statement, `if __name__ == "__main__": ...`, runs
exec(compile(ast.Module(ast.parse(open(m.__file__).read()).body[-1:], []), m.__file__, "exec"), vars(m))
"""


def test_as_a_program_it_exits_with_the_status_and_a_second_run_compiles_nothing(tiny, tmp_path):
    program = tmp_path / "program.py"
    program.write_text(AS_A_PROGRAM.format(root=ROOT, hashes={k: v for k, v in m.SHA256.items() if k[0] == "mnist"}))
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), JAX_LOG_COMPILES="1")  # JAX logs each compile
    run = functools.partial(subprocess.run, capture_output=True, text=True, env=env)
    folder = folder_with(tmp_path / "d", tiny)
    runs = [run([sys.executable, program, "--data-dir", folder, "--epochs", "1"]) for _ in range(2)]
    assert [run.returncode for run in runs] == [0, 0]
    assert runs[1].stdout.startswith(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}\nEpoch 1/1: loss: ")
    compiles, hits = ([run.stderr.count(s) for run in runs] for s in ["Finished XLA compilation", "cache hit for"])
    assert compiles[0] > 0 and hits == [0, compiles[0]]  # the second run found every program in the cache
    bad = run([sys.executable, program, "--epochs", "0"])
    assert bad.returncode == 2 and "usage:" in bad.stderr


def test_import_runs_nothing_and_the_cache_follows_xdg(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    module = runpy.run_path(SCRIPT, run_name="mlp_mnist")  # what `import mlp_mnist` runs
    assert capsys.readouterr() == ("", "") and module["CACHE"] == f"{tmp_path}/mlp_mnist" and os.listdir(tmp_path) == []


def test_in_a_notebook_the_pasted_file_trains_and_percent_run_takes_options(tiny, tmp_path, monkeypatch, capsys):
    """What Jupyter or Colab does with the file pasted into a cell: IPython is loaded, sys.argv is the kernel's, and
    the source runs as __main__, here in two parts, so that the tiny files stand in for MNIST in between."""
    monkeypatch.setitem(sys.modules, "IPython", ModuleType("IPython"))
    monkeypatch.setattr(sys, "argv", ["/usr/lib/python3/dist-packages/ipykernel_launcher.py", "-f", "kernel.json"])
    monkeypatch.setenv("MLP_MNIST_DATA_DIR", str(folder_with(tmp_path / "d", tiny)))
    cache_dir = jax.config.jax_compilation_cache_dir  # a kernel's JAX settings are its user's: left alone
    tree = ast.parse(open(SCRIPT).read())
    definitions, entry = (compile(ast.Module(body, []), SCRIPT, "exec") for body in (tree.body[:-1], tree.body[-1:]))
    cell = {"__name__": "__main__"}
    exec(definitions, cell)
    cell.update(SHA256=m.SHA256, MIRRORS=[])  # the tiny files' checksums; no mirrors
    exec(entry, cell)  # a SystemExit would fail the test here
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("JAX ") and out[-1].startswith("Epoch 25/25: ") and len(out) == 26
    assert jax.config.jax_compilation_cache_dir == cache_dir and cell["forward"] and cell["update"]
    cell["__file__"] = SCRIPT  # %run mlp_mnist.py --epochs 1: argv[0] as typed, __file__ the full path
    for args, expected in [(["--epochs", "1"], "Epoch 1/1: "), (["--epochs", "0"], "usage:")]:
        monkeypatch.setattr(sys, "argv", ["mlp_mnist.py", *args])
        exec(entry, cell)
        assert expected in "".join(capsys.readouterr())
    monkeypatch.setattr(sys, "argv", ["mlp_mnist.py"])
    cell["train"] = Mock(side_effect=KeyboardInterrupt)  # what the kernel's interrupt raises, mid-training
    with pytest.raises(KeyboardInterrupt):  # the cell ends as an interrupted cell does: Run All stops there
        exec(entry, cell)


def test_the_uv_block_asks_for_what_requirements_txt_does():
    block = re.search(r"(?m)^# /// script$\s((?:^#(?:| .*)$\s)+)^# ///$", open(SCRIPT).read())[1]  # PEP 723's regex
    requirements = open(os.path.join(ROOT, "requirements.txt")).read().split()
    assert tomllib.loads("".join(line[2:] + "\n" for line in block.splitlines()))["dependencies"] == requirements
    assert [r.split(">=")[0] for r in requirements] == ["jax", "numpy"]


# --- The README: its code, run as a reader would, and its links into the file -------------------------------------
README_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)


@pytest.mark.parametrize("block", README_BLOCKS, ids=[f"block-{i}" for i in range(len(README_BLOCKS))])
def test_the_readmes_code_runs_pasted_into_python(block, monkeypatch, tmp_path, capsys):
    """Each block on its own, as `python -i` runs what is pasted: statement by statement, echoing any bare
    expression's value. load_mnist gives the synthetic set: no download."""
    monkeypatch.setattr(m, "load_mnist", lambda *args, **kwargs: [*synthetic(512, 0), *synthetic(100, 1)])
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    for statement in ast.parse(block).body:
        exec(compile(ast.Interactive([statement]), "<README>", "single"), namespace)
    out = capsys.readouterr().out
    assert out and "Array(" not in out


def test_the_readmes_links_into_the_file_point_at_what_they_name():
    lines = open(SCRIPT).read().splitlines()
    links = re.findall(r"\[`([^`]+)`\]\(mlp_mnist\.py#L(\d+)\)", README)
    assert len(links) >= 8 and len(README_BLOCKS) >= 2
    for name, number in links:
        assert name in lines[int(number) - 1], (name, number)
