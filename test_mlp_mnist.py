"""Tests for mlp_mnist.py, in the order the file teaches, then the data, the command line, notebooks and the
README: `pip install -r requirements.txt pytest && python -m pytest -q`. No network but 127.0.0.1: the mirrors
are loopback HTTP servers, the data tiny IDX files written here."""

import ast
import concurrent.futures
import gzip
import hashlib
import http.server
import os
import re
import subprocess
import sys
import threading
import tomllib
from types import SimpleNamespace
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
FILES, MIRRORS = list(m.FILES), list(m.MIRRORS)  # the real ones, before the tests put tiny ones in their place


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test reaches a real mirror, a proxy or the user's cache folder."""
    monkeypatch.setattr(m, "MIRRORS", [])
    monkeypatch.setattr(m, "DATA_DIR", str(tmp_path / "cache"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
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


@pytest.mark.parametrize("sizes", [[20, 16, 10], [20, 12, 8, 10]], ids=["2-layer", "3-layer"])
def test_grad_is_the_backward_pass_written_by_hand_and_matches_finite_differences(sizes):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)  # scale 0.5: many ReLUs on and many off
        params = [(0.5 * rng.standard_normal((a, b)), 0.5 * rng.standard_normal(b)) for a, b in zip(sizes, sizes[1:])]
        X, y = rng.random((8, sizes[0])), rng.integers(0, sizes[-1], 8)
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
    leaves = jax.tree.leaves(params)  # each from a key of its own, biases too: N(0, 0.02²)
    assert all(p.dtype == jnp.float32 for p in leaves) and len({float(p.ravel()[0]) for p in leaves}) == len(leaves)
    assert abs(jnp.std(params[0][0]) - 0.02) < 1e-3 and abs(jnp.std(jnp.concatenate(leaves[1::2])) - 0.02) < 0.01
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
    return (images / 255).astype(np.float32), labels


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
    (X, y), (X_test, y_test) = synthetic(500, 0), synthetic(200, 1)
    y_test[:40] = (y_test[:40] + 1) % 10  # 40 wrong test labels: valid accuracy near 0.8, train accuracy near 1
    data, spy = (X, y, X_test, y_test), Mock(wraps=m.train_epoch)  # train_epoch, noting its calls
    monkeypatch.setattr(m, "train_epoch", spy)
    params, results = m.train(data, [784, 16, 10], seed=0, epochs=4, lr=0.1, batch_size=16)
    batches = [np.asarray(call.args[3]) for call in spy.call_args_list]
    assert all(b.shape == (31, 16) and len(set(b.ravel())) == 496 for b in batches)  # 31 full batches: 4 left out
    assert len({b.tobytes() for b in batches}) == 4  # a new order each epoch
    assert [r[0] for r in results] == [1, 2, 3, 4] and all(type(x) is float for r in results for x in r[1:])
    assert results[-1][1] < results[0][1] / 2 and results[-1][2] > 0.95 and 0.7 < results[-1][3] < 0.85
    assert results[-1][2:4] == (float(m.evaluate(params, X, y)), float(m.evaluate(params, X_test, y_test)))
    line = "Epoch 4/4: loss: {:.4f}, train acc.: {:.3f}, valid acc.: {:.3f}, time: {:.2f} sec.".format(*results[-1][1:])
    assert capsys.readouterr().out.splitlines()[-1] == line
    first, again, other = (m.train(data, [784, 16, 10], seed, epochs=1)[0][0][0] for seed in (0, 0, 1))
    assert np.array_equal(first, again) and not np.array_equal(first, other)  # one seed, the same weights; 0 is one
    unsplit = m.initialize_weights([784, 16, 10], random.key(0))[0][0]  # the seed's own key, used twice: not so
    assert not np.array_equal(m.train(data, [784, 16, 10], 0, epochs=0)[0][0][0], unsplit)


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


# --- The data: tiny IDX files, served by a loopback HTTP server standing in for the mirrors ---------------------
def gzipped_idx(a):
    """An IDX file, gzipped: 0, 0, 8 (uint8), the number of dimensions; each size as a big-endian uint32; the values."""
    return gzip.compress(bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">u4").tobytes() + a.astype(np.uint8).tobytes())


@pytest.fixture
def tiny(monkeypatch):
    """MNIST's four files in miniature (256 training and 100 test images), their SHA-256s in m.FILES."""
    (xtr, ytr), (xte, yte) = synthetic(256, 0), synthetic(100, 1)
    arrays = [np.round(xtr * 255).reshape(-1, 28, 28), ytr, np.round(xte * 255).reshape(-1, 28, 28), yte]
    files = {name: gzipped_idx(a) for (name, _), a in zip(FILES, arrays)}
    monkeypatch.setattr(m, "FILES", [(name, hashlib.sha256(gz).hexdigest()) for name, gz in files.items()])
    return files


def folder_with(path, files):
    path.mkdir()
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


@pytest.fixture
def server():
    """A loopback HTTP server: `routes` maps a path to (status, body); "cut" sends half the body it promises.
    mirror(prefix, files, status) serves `files` under /prefix/ and makes that the next of m.MIRRORS."""
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

    def mirror(prefix, files, status=200):  # files: name -> body, or name -> (status, body)
        routes.update({f"/{prefix}/{name}": b if type(b) is tuple else (status, b) for name, b in files.items()})
        m.MIRRORS.append(f"{url}/{prefix}/")

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    url = f"http://127.0.0.1:{httpd.server_port}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield SimpleNamespace(url=url, routes=routes, requests=requests, mirror=mirror)
    httpd.shutdown()


def test_mnist_only_its_four_files_each_asked_of_two_https_mirrors_in_turn_and_kept_if_right(
    tiny, server, tmp_path, capsys
):
    names = [f"{s}-{kind}-ubyte.gz" for s in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")]
    assert [name for name, _ in FILES] == names and all(re.fullmatch("[0-9a-f]{64}", sha) for _, sha in FILES)
    assert len(MIRRORS) == 2 and all(url.startswith("https://") and url.endswith("/") for url in MIRRORS)
    not_the_file = [(200, b"<html>503</html>"), (200, tiny[names[1]][:-40]), ("cut", tiny[names[2]]), (403, b"")]
    server.mirror("bad", dict(zip(names, not_the_file)))  # an HTML page, a truncated file, a cut connection, 403
    server.mirror("good", tiny)
    X, y, X_test, y_test = m.load_mnist(str(tmp_path / "d"))
    assert server.requests == [f"/{prefix}/{name}" for name in names for prefix in ("bad", "good")]
    assert capsys.readouterr().out.split() == [
        word for r in server.requests for word in ("Downloading", server.url + r)
    ]
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == tiny  # each file right, and nothing else
    (xtr, ytr), (xte, yte) = synthetic(256, 0), synthetic(100, 1)
    assert X.dtype == np.float32 and X.shape == (256, 784) and np.allclose(X, xtr) and np.array_equal(y, ytr)
    assert X_test.shape == (100, 784) and np.allclose(X_test, xte) and np.array_equal(y_test, yte)


def test_the_data_folder_is_the_users_cache_and_a_file_already_there_is_used_as_it_is(tiny, server, tmp_path):
    env, XDG = (
        dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home")),
        {"XDG_CACHE_HOME": ""},
    )
    where = [sys.executable, "-c", "import mlp_mnist; print(mlp_mnist.DATA_DIR)"]
    runs = [subprocess.run(where, env=e, capture_output=True, text=True, cwd=ROOT).stdout for e in (env, env | XDG)]
    assert runs == [os.path.join(tmp_path, *path, "mlp_mnist") + "\n" for path in (["xdg"], ["home", ".cache"])]
    assert os.listdir(tmp_path) == []  # import mlp_mnist made no folder
    theirs = gzipped_idx(np.full((3, 28, 28), 51))  # not MNIST's train images: Fashion-MNIST's, say, or one's own
    folder = folder_with(tmp_path / "d", {"train-images-idx3-ubyte.gz": theirs})
    server.mirror("m", tiny)
    X = m.load_mnist(str(folder))[0]
    assert X.shape == (3, 784) and np.allclose(X, 0.2) and (folder / FILES[0][0]).read_bytes() == theirs
    assert server.requests == [f"/m/{name}" for name in list(tiny)[1:]]  # only the three missing files


def test_a_download_is_renamed_into_place_once_whole_even_with_ctrl_c_and_two_runs_at_once(tiny, server, tmp_path):
    server.mirror("m", tiny)
    replace, both_written = os.replace, threading.Barrier(2, timeout=30)

    def replace_once_both_have_written(*args):  # the two runs below rename only once both have written their file
        both_written.wait()
        return replace(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", Mock(side_effect=KeyboardInterrupt))  # Ctrl-C as the first file is renamed
        with pytest.raises(KeyboardInterrupt):
            m.load_mnist(str(tmp_path / "a"))
        assert not set(os.listdir(tmp_path / "a")) & set(tiny)  # no file under a real name
        patch.setattr(os, "replace", replace_once_both_have_written)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two runs at once on an empty folder
            results = list(pool.map(m.load_mnist, [str(tmp_path / "b")] * 2))
    assert all(np.array_equal(a, b) for a, b in zip(*results)) and sorted(os.listdir(tmp_path / "b")) == sorted(tiny)


HINT = "Offline, or another folder? Put MNIST's four .gz files in it, pass --data-dir."


def test_what_can_go_wrong_is_one_message_saying_what_to_do_exit_1_and_no_traceback(tiny, server, tmp_path):
    server.mirror("gone", tiny, status=403)
    closed, name = "http://127.0.0.1:1/", FILES[0][0]  # nobody listens on port 1: as a machine offline

    def run(folder):
        code = f"import mlp_mnist as m; m.MIRRORS = {[*m.MIRRORS, closed]!r}; m.main(['--data-dir', {str(folder)!r}])"
        run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert run.returncode == 1 and "Traceback" not in run.stderr and "Epoch" not in run.stdout
        return run.stderr.splitlines()

    said = run(tmp_path / "d")  # every mirror failing
    assert said[:2] == [f"error: no mirror gave {name}:", f"  {server.url}/gone/{name}: HTTP Error 403: Forbidden"]
    assert said[2].startswith(f"  {closed}{name}: <urlopen error ") and said[3:] == [HINT]
    (tmp_path / "a-file").write_text("mine")  # a data folder that can't be made: a file there, or above it
    for folder in (tmp_path / "a-file", tmp_path / "a-file" / "d"):
        said = run(folder)
        assert said[0].startswith("error: [Errno ") and said[0].endswith(f": {str(folder)!r}") and said[1:] == [HINT]
    for i, damaged in enumerate([tiny[name][:-30], b"<html>Not Found</html>", gzip.compress(b"not IDX")]):
        folder = folder_with(tmp_path / f"damaged-{i}", {**tiny, name: damaged})  # cut short, not gzip, not IDX
        with pytest.raises(OSError, match=f"^{folder / name} can't be read as gzipped IDX .*; it was left as it is$"):
            m.load_mnist(str(folder))
        assert (folder / name).read_bytes() == damaged
    assert len(server.requests) == 1 and (tmp_path / "a-file").read_text() == "mine"  # nothing asked again


# --- The command line, and notebooks -----------------------------------------------------------------------------
def test_help_gives_each_default_bad_usage_is_exit_2_and_each_option_reaches_train(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(m, "DATA_DIR", "/home/ada/.cache/mlp_mnist")  # argparse would break a long path at hyphens
    with pytest.raises(SystemExit) as exit:
        m.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines where it likes
    assert exit.value.code == 0 and m.train.__defaults__ == (516, 25, 0.01, 64)  # seed, epochs, lr, batch_size
    defaults = {"data-dir": m.DATA_DIR, "hidden": [128], "epochs": 25, "lr": 0.01, "batch-size": 64, "seed": 516}
    for option, default in defaults.items():
        assert re.search(rf"--{option} .*?\(default: {re.escape(str(default))}\)", text), option
    for bad in ["--epochs 0", "--batch-size 0", "--hidden 0", "--hidden 128 -5", "--epochs two", "--lr x"]:
        with pytest.raises(SystemExit) as exit:
            m.main([*bad.split(), "--data-dir", str(tmp_path / "d")])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and err.startswith("usage:") and err.count("error:") == 1, bad
    assert not os.path.exists(tmp_path / "d")  # nothing done
    calls, folder = [], folder_with(tmp_path / "d", tiny)
    monkeypatch.setattr(m, "train", lambda *args: calls.append(args))
    m.main(f"--data-dir {folder} --hidden 32 16 --epochs 3 --lr 0.5 --batch-size 8 --seed 0".split())
    assert len(calls[0][0][0]) == 256 and calls[0][1:] == ([784, 32, 16, 10], 0, 3, 0.5, 8)  # seed 0 as any other


def test_pasted_in_a_cell_it_runs_the_defaults_and_percent_run_takes_options(tiny, tmp_path, monkeypatch, capsys):
    """What Jupyter or Colab does with the file pasted into a cell: the source runs as __main__, with no __file__
    and the kernel's sys.argv. %run sets both to the file's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the default data folder, where the files are used as they are
    folder = folder_with(tmp_path / "mlp_mnist", tiny)
    kernel = ["/usr/lib/python3/dist-packages/ipykernel_launcher.py", "-f", "/root/.local/share/jupyter/kernel.json"]
    cell = compile(open(SCRIPT).read(), "<cell>", "exec")
    monkeypatch.setattr(sys, "argv", kernel)
    for left_over in ({}, {"__file__": "mlp_mnist.py"}):  # a new kernel, and one where %run -i left a __file__
        exec(cell, {"__name__": "__main__", **left_over})  # a SystemExit would fail the test here
        out = capsys.readouterr().out.splitlines()
        assert len(out) == 25 and out[-1].startswith("Epoch 25/25: ")
    monkeypatch.setattr(sys, "argv", ["mlp_mnist.py", "--epochs", "2"])  # %run mlp_mnist.py --epochs 2
    exec(cell, {"__name__": "__main__", "__file__": SCRIPT})
    assert capsys.readouterr().out.splitlines()[-1].startswith("Epoch 2/2: ")
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"damaged")
    monkeypatch.setattr(sys, "argv", kernel)
    with pytest.raises(SystemExit, match=r"^error: .*t10k-labels-idx1-ubyte.gz can't be read"):  # the cell's error
        exec(cell, {"__name__": "__main__"})


# --- The README: its examples, run as a reader would, checked for what it says they print ------------------------
README_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
README_TEXT = re.sub(r"\n\s*", " ", README)  # its prose, wherever the lines break


def run_as_pasted(block, capsys):
    """Runs a README block as `python -i` runs what is pasted, statement by statement; returns what it printed."""
    namespace = {"__name__": "__readme__"}
    for statement in ast.parse(block).body:
        exec(compile(ast.Interactive([statement]), "<README>", "single"), namespace)
    return capsys.readouterr().out


def test_the_readmes_loop_against_scan_gives_the_same_weights(monkeypatch, capsys):
    monkeypatch.setattr(m, "load_mnist", lambda: [*synthetic(512, 0), *synthetic(100, 1)])
    lines = run_as_pasted(README_BLOCKS[0], capsys).splitlines()
    assert len(lines) == 2 and all(re.fullmatch(r"loop: [\d.]+ s, scan: [\d.]+ s (\S+) \1", line) for line in lines)
    assert len({line.split()[-1] for line in lines}) == 1  # the same weights both ways, both times


def test_the_readmes_own_arrays_learn_and_print_what_it_says(capsys):
    said = re.search(r"It ends at `(valid acc\.: ([\d.]+))`, then prints `(.+?)` and `(.+?)`\.", README_TEXT)
    out = run_as_pasted(README_BLOCKS[1], capsys).splitlines()
    assert len(out) == 5 and out[2].startswith("Epoch 3/3: ") and said[1] in out[2] and float(said[2]) >= 0.9
    predicted, true = said[3].split("] [")
    assert out[3:] == [said[3], said[4]] and predicted + "]" == "[" + true  # every prediction shown is right


def test_the_readmes_one_line_examples_give_what_it_says():
    claims = re.findall(r"`([^`]+)` → `([^`]+)`", README_TEXT)
    assert len(claims) >= 3
    for expression, shown in claims:
        assert str(eval(expression, {"jax": jax, "jnp": jnp, "np": np})) == shown, expression


def test_the_lesson_is_a_cell_of_its_own_within_100_columns_and_the_readmes_links_point_at_what_they_name():
    source = open(SCRIPT).read()
    end = next(node.end_lineno for node in ast.parse(source).body if getattr(node, "name", "") == "train")
    lines = source.splitlines()
    assert f"lines 1-{end} are the lesson" in README_TEXT and max(len(line) for line in lines[:end]) <= 100
    cell = {}
    exec("\n".join(lines[:end]), cell)
    data = (*synthetic(300, 0), *synthetic(100, 1))
    assert cell["train"](data, [784, 16, 10], epochs=3, lr=0.1, batch_size=16)[1][-1][3] > 0.9
    links = re.findall(r"\[`([^`]+)`\]\(mlp_mnist\.py#L(\d+)\)", README)
    assert len(links) >= 12 and len(README_BLOCKS) == 2
    for name, number in links:
        assert name in lines[int(number) - 1], (name, number)


def test_the_uv_block_asks_for_what_requirements_txt_does():
    block = re.search(r"(?m)^# /// script$\s((?:^#(?:| .*)$\s)+)^# ///$", open(SCRIPT).read())[1]  # PEP 723's regex
    requirements = open(os.path.join(ROOT, "requirements.txt")).read().split()
    assert tomllib.loads("".join(line[2:] + "\n" for line in block.splitlines()))["dependencies"] == requirements
    assert [r.split(">=")[0] for r in requirements] == ["jax", "numpy"]
