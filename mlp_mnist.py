# /// script
# requires-python = ">=3.11"
# dependencies = ["jax>=0.9.0", "numpy>=2.0"]
# ///
"""Train a fully connected network (784-128-10, ReLU) on MNIST in plain JAX.

Part 3 of "Up and Running with JAX", with its names. The lesson comes first (model, loss, update, accuracy, training
loop), then the plumbing: the data, then main(). Run it with `uv run mlp_mnist.py`, or `pip install -r requirements.txt`
and `python mlp_mnist.py`."""

import argparse
import contextlib
import gzip
import hashlib
import http.client
import io
import os
import pathlib
import signal
import sys
import tempfile
import time
import urllib.request
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import jit, lax, random, value_and_grad
from jax.nn import log_softmax, relu

HIDDEN = (128,)  # hidden layer sizes: the network is 784-128-10
SEED = 516  # the article's seed: the initial weights and every shuffle derive from it
LR = 0.01  # learning rate of stochastic gradient descent
BATCH_SIZE = 64  # images per SGD step
EPOCHS = 25  # passes over the training set
EVAL_BATCH = 2000  # images per step when measuring accuracy (in evaluate)


# --- Model: a list of (W, b) pairs, one per layer -------------------------------
def initialize_weights(sizes, key, scale=0.02):
    """(W, b) per layer, W of shape (m, n), entries from N(0, scale²), which break the symmetry between units.
    Each W and b gets its own key from `split`: one key drawn from twice gives the same numbers. The list of
    (W, b) tuples is a pytree: nested lists, tuples and dicts with arrays at the leaves, which grad, jit and
    jax.tree.map take and give back whole."""
    params = []
    for m, n, layer_key in zip(sizes[:-1], sizes[1:], random.split(key, len(sizes) - 1), strict=True):
        w_key, b_key = random.split(layer_key)
        params.append((scale * random.normal(w_key, (m, n)), scale * random.normal(b_key, (n,))))
    return params


def forward(params, X):
    """Logits (batch, 10) for images X (batch, 784) in [0, 1], or (10,) for one image (784,): ReLU after all but
    the last layer."""
    activations = X
    for W, b in params[:-1]:
        activations = relu(activations @ W + b)
    W, b = params[-1]
    return activations @ W + b


# --- Loss: cross-entropy against integer labels ---------------------------------
def cross_entropy_loss(params, X, y):
    """Mean of -log p(true label). log_softmax(z) is z - m - log(sum(exp(z - m))), m the largest logit: stable, as
    no exp can overflow and a logit far below m gives a large negative number, not log(0) = -inf. Row i's label
    picks its entry, [i, y[i]], by indexing, not through a one-hot matrix."""
    log_probs = log_softmax(forward(params, X))
    return -jnp.mean(log_probs[jnp.arange(len(y)), y])


# --- Update: one step of stochastic gradient descent ----------------------------
@jit
def update(params, X, y, lr=0.01):
    """One SGD step; returns (new params, loss). value_and_grad gives the loss and its gradient with respect to
    `params`, a pytree of the same structure: a (dW, db) pair per layer. That shared structure is what lets
    jax.tree.map (the article's tree_map) pair each array with its gradient, p - lr * g, at any depth. jit
    traces the function once for each new input signature (shapes, dtypes, pytree structure) and compiles the
    trace; a call with a signature it has seen runs the compiled program, not the Python. So it must be pure: a
    global it reads, or a print, is read or done only while tracing."""
    loss, grads = value_and_grad(cross_entropy_loss)(params, X, y)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss


def accuracy(logits, labels):
    """Fraction of rows whose largest logit is at the true label."""
    return jnp.mean(jnp.argmax(logits, axis=1) == labels)


# --- Training loop: one compiled call per epoch, one for evaluation -------------
def as_floats(images):
    """float32 in [0, 1]: integer pixels (0-255, as load_mnist gives them) are divided by 255, float images (the
    article's) only made float32. Under jit, `images` is a tracer, a stand-in known by shape and dtype only: this
    Python `if` runs then, at trace time, and the compiled program holds only the division it chose."""
    return images.astype(jnp.float32) / (255 if jnp.issubdtype(images.dtype, jnp.integer) else 1)


@jit(static_argnames="batch_size")  # the others are traced as abstract arrays, known by shape and dtype only
def train_epoch(params, images, labels, key, lr, batch_size):
    """One pass over the training set as one compiled program: shuffle with `key`, cut into full batches (the last,
    partial one is dropped), run `update` on each; return the params and the mean of the steps' losses. batch_size
    is static, a plain int while tracing, as the reshape below needs it for a shape; each new value compiles anew."""
    n_batches = len(labels) // batch_size
    order = random.permutation(key, len(labels))[: n_batches * batch_size]

    def step(params, batch):  # batch: batch_size indices; only those images become floats
        return update(params, as_floats(images[batch]), labels[batch], lr)  # update: traced into this program

    # In plain Python, the line below is this loop; lax.scan(f, carry, xs) runs it compiled, tracing f once:
    #     losses = []
    #     for batch in order.reshape(n_batches, batch_size):
    #         params, loss = step(params, batch)
    #         losses.append(loss)
    # f(carry, x) returns (carry, y), here (params, loss); scan returns the last carry and the ys stacked, as losses.
    params, losses = lax.scan(step, params, order.reshape(n_batches, batch_size))
    return params, jnp.mean(losses)


@jit
def evaluate(params, splits):
    """Accuracy on each (images, labels) pair in `splits` (a list of pairs of arrays: a pytree), in one compiled
    call. lax.map(f, xs) is jnp.stack([f(x) for x in xs]) run by a scan; with batch_size it vmaps f, written here
    for one image x of shape (784,), over EVAL_BATCH images a step, so no more are floats at once."""
    return [
        accuracy(lax.map(lambda x: forward(params, as_floats(x)), images, batch_size=EVAL_BATCH), labels)
        for images, labels in splits
    ]


def train(data, sizes, seed=SEED, epochs=EPOCHS, lr=LR, batch_size=BATCH_SIZE):
    """The article's loop: each epoch trains (timed; the first includes compiling), measures accuracy on all training
    and test images and prints a line. Returns the params and `results`, the article's list of (epoch, loss, train
    acc, valid acc, seconds). Raises FloatingPointError if the loss stops being finite."""
    train_images, train_labels, test_images, test_labels = (jax.device_put(a) for a in data)  # copied once
    key, init_key = random.split(random.key(seed))  # random.key: today's form of the article's random.PRNGKey
    params = jax.block_until_ready(initialize_weights(sizes, init_key))  # wait: a too-large network fails here
    results = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        key, subkey = random.split(key)  # a fresh key for this epoch's shuffle
        params, loss = train_epoch(params, train_images, train_labels, subkey, lr, batch_size)
        loss = float(loss)  # asynchronous dispatch: train_epoch returned once the epoch was queued; float waits
        epoch_time = time.perf_counter() - start
        if not np.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss} in epoch {epoch}")
        train_acc, valid_acc = map(float, evaluate(params, [(train_images, train_labels), (test_images, test_labels)]))
        results.append((epoch, loss, train_acc, valid_acc, epoch_time))
        accuracies = f"train acc.: {train_acc:.3f}, valid acc.: {valid_acc:.3f}"
        print(f"Epoch {epoch}/{epochs}: loss: {loss:.4f}, {accuracies}, time: {epoch_time:.2f} sec.", flush=True)
    return params, results


# --- The plumbing: the data (downloaded once, verified, cached), then main() ----
MIRRORS = {  # mirror: its dataset; tried in this order, HTTPS first; each file is <mirror><name>.gz
    "https://ossci-datasets.s3.amazonaws.com/mnist/": "mnist",
    "https://storage.googleapis.com/cvdf-datasets/mnist/": "mnist",
    "http://yann.lecun.com/exdb/mnist/": "mnist",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/": "fashion",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/": "fashion",
}
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SHA256 = {  # of the decompressed files, so that any good copy verifies, gzipped or not
    "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db": ("mnist", FILES[0]),
    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5": ("mnist", FILES[1]),
    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7": ("mnist", FILES[2]),
    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2": ("mnist", FILES[3]),
    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888": ("fashion", FILES[0]),
    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9": ("fashion", FILES[1]),
    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b": ("fashion", FILES[2]),
    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34": ("fashion", FILES[3]),
}
N_TRAIN, N_TEST = 60_000, 10_000  # images in each dataset's two parts
TIMEOUT = 30  # seconds a mirror may stay silent before it counts as failed


class UserError(Exception):
    """A problem the user can fix (the data, JAX_PLATFORMS): main() prints its message, no traceback."""


def verified(source, dataset, name):
    """(raw, data): the bytes in `source` (a file or HTTP response) and the IDX file they hold, if it is `dataset`'s
    `name`. Neither is read past a good copy's size: an endless body or gzip bomb costs no more than the real file."""
    n = N_TRAIN if name.startswith("train") else N_TEST
    limit = (16 + 784 * n if "images" in name else 8 + n) * 101 // 100 + 65536
    if len(raw := source.read(limit + 1)) > limit:
        raise ValueError(f"it is larger than the {limit} bytes a good copy takes")
    try:
        data = gzip.GzipFile(fileobj=io.BytesIO(raw)).read(limit) if raw[:2] == b"\x1f\x8b" else raw
    except (EOFError, OSError, zlib.error) as e:
        raise ValueError(f"damaged gzip data ({e})") from None
    if (found := SHA256.get(hashlib.sha256(data).hexdigest())) != (dataset, name):
        raise ValueError(f"it holds {found[0]}'s {found[1]}" if found else "its SHA-256 is wrong")
    return raw, data


def fetch(dataset, name, folder, mirrors):
    """The IDX file `name`, verified: a copy in `folder`, else the first good one in `mirrors`, saved there. A bad
    file in `folder` is never replaced; a mirror that fails is moved to the end of `mirrors`, for the next files."""
    for path in (os.path.join(folder, name + ".gz"), os.path.join(folder, name)):
        if os.path.lexists(path):
            try:
                with open(path, "rb") as f:
                    return verified(f, dataset, name)[1]
            except (OSError, ValueError) as e:
                raise UserError(f"{path} is unusable: {e}. It was left as it is; delete it if damaged.") from None
    tried = []
    for mirror in list(mirrors):
        try:  # timeout: how long the server may stay silent, at each wait
            with urllib.request.urlopen(mirror + name + ".gz", timeout=TIMEOUT) as response:
                raw, data = verified(response, dataset, name)
        except (OSError, http.client.HTTPException, ValueError, OverflowError) as e:  # OSError: network, HTTP errors
            tried.append(f"\n  {mirror}{name}.gz: {' '.join(str(e).split())[:300]}")  # the server's text: one line
            mirrors.append(mirrors.pop(mirrors.index(mirror)))
            continue
        print(f"Downloaded {name}.gz from {mirror} ({len(raw):,} bytes)", file=sys.stderr)
        try:  # written in a new private folder (no planted symlink can redirect it), then renamed into place: atomic
            with tempfile.TemporaryDirectory(dir=folder) as private:  # removed whatever happens, Ctrl-C included
                pathlib.Path(private, name).write_bytes(raw)
                os.replace(os.path.join(private, name), os.path.join(folder, name + ".gz"))
        except OSError as e:
            raise UserError(f"Downloaded {name}.gz but could not save it in {folder} ({e}).") from None
        return data
    raise UserError(
        f"Could not get {name}.gz from any mirror:{''.join(tried)}\nIf this machine is offline, copy the four .gz "
        f"files ({', '.join(FILES)}) from one that is online into a folder here, and use --data-dir FOLDER."
    )


def cache_home(*parts):
    """$XDG_CACHE_HOME/mlp_mnist, else ~/.cache/mlp_mnist; None if that is not an absolute path (no home folder)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "mlp_mnist", *parts) if os.path.isabs(cache) else None


def load_mnist(dataset="mnist", data_dir=None):
    """(train_images, train_labels, test_images, test_labels), NumPy arrays; images (N, 784) uint8, 0-255 as stored."""
    folder = data_dir or os.environ.get("MLP_MNIST_DATA_DIR") or cache_home(dataset)
    try:
        os.makedirs(folder, exist_ok=True)
        os.listdir(folder)  # made, or refused, before any request (a folder we can't read would look empty)
    except (OSError, TypeError) as e:  # TypeError: folder is None, there is no home folder
        raise UserError(f"No data folder: {folder or 'no home folder'} ({e}). Choose one with --data-dir.") from None
    arrays, mirrors = [], [mirror for mirror, of in MIRRORS.items() if of == dataset]
    for name in FILES:  # each verified, so the IDX header's sizes are known: the data follow it
        data = np.frombuffer(fetch(dataset, name, folder, mirrors), np.uint8, offset=16 if "images" in name else 8)
        arrays.append(data.reshape(-1, 784) if "images" in name else data.astype(np.int32))
    return arrays


def number(kind, low, high):
    """An argparse type: a `kind` from `low` to `high` (never nan), or a usage error."""

    def parse(text):
        with contextlib.suppress(ValueError):  # what int() or float() can't read
            if low <= (value := kind(text)) <= high:
                return value
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind.__name__} from {low} to {high}")

    return parse


def main(argv=None, compilation_cache=False):
    """The command line (`argv`, else sys.argv[1:]): returns the exit status, never SystemExit (a notebook's error)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--dataset", choices=sorted({d for d, _ in SHA256.values()}), default="mnist", help="(default: mnist)")
    add("--data-dir", help="holds or receives the four files (default: $MLP_MNIST_DATA_DIR, else a cache folder)")
    add("--hidden", type=number(int, 1, 2**20), nargs="+", default=list(HIDDEN), help="layer sizes (default: 128)")
    add("--epochs", type=number(int, 1, 2**31 - 1), default=EPOCHS, help="passes over the data (default: 25)")
    add("--lr", type=number(float, 1.2e-38, 3.4e38), default=LR, help="learning rate, a float32 (default: 0.01)")
    add("--batch-size", type=number(int, 1, N_TRAIN), default=BATCH_SIZE, help="images per step (default: 64)")
    add("--seed", type=number(int, 0, 2**32 - 1), default=SEED, help="for weights and shuffles (default: 516)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed the help (0) or the usage error (2)
        return e.code
    sizes = [784, *args.hidden, 10]
    try:
        if compilation_cache and "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # JAX reads that one itself
            with contextlib.suppress(OSError, TypeError):  # no home, or a folder we can't write to: no cache
                os.makedirs(folder := cache_home("jax"), mode=0o700, exist_ok=True)
                tempfile.TemporaryFile(dir=folder).close()  # can we write there? if not, no cache
                jax.config.update("jax_compilation_cache_dir", folder)  # a second run loads what the first compiled
                jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # every program, however quick
        try:  # JAX starts its backend here, before any download
            device = jax.devices()[0]
        except Exception as e:  # a JAX_PLATFORMS it can't start: RuntimeError (AssertionError: cuda on CPU-only JAX)
            hint = 'Unset JAX_PLATFORMS to use a device JAX has, or for an NVIDIA GPU: pip install -U "jax[cuda13]".'
            raise UserError(f"JAX could not start a backend ({str(e)[:300] or type(e).__name__}). {hint}") from None
        print(f"JAX {jax.__version__} on {device.device_kind}", flush=True)
        train(load_mnist(args.dataset, args.data_dir), sizes, args.seed, args.epochs, args.lr, args.batch_size)
        return 0
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except UserError as e:
        message = str(e)  # it may quote a server: control characters are shown escaped below, never raw
    except FloatingPointError as e:
        message = f"{e}. The learning rate {args.lr} is probably too large; try a smaller --lr (default {LR})."
    except jax.errors.JaxRuntimeError as e:
        if "out of memory" not in str(e).lower():
            raise  # a bug, not something the user did
        message = f"the network {sizes} does not fit in memory: {str(e).splitlines()[0]}"
    except OSError as e:  # writing the output (every print flushes, so nothing is left for the exit to write)
        if isinstance(e, BrokenPipeError):  # a closed pipe, as with | head: quietly
            return 1
        message = f"could not write the output ({e})"
    print("error: " + "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in message), file=sys.stderr)
    return 1


if __name__ == "__main__" and "IPython" not in sys.modules:  # python mlp_mnist.py, uv run mlp_mnist.py
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM unwinds as Ctrl-C does: cleanup, exit 130
    if (status := main(compilation_cache=True)) == 130:  # the cache only here: a kernel's JAX settings are its user's
        os._exit(130)  # at once, not after the computation in flight (a large network's epoch) has finished
    sys.exit(status)
elif __name__ == "__main__":  # a notebook: %run names this file in argv[0]; a pasted cell has the kernel's argv
    ours = "__file__" in globals() and os.path.realpath(sys.argv[0]) == os.path.realpath(__file__)
    if main(None if ours else []) == 130:  # never an exit, which the kernel would show as an error
        raise KeyboardInterrupt  # as an interrupted cell does, so that the cells queued after this one don't run
