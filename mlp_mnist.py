# /// script
# requires-python = ">=3.11"
# dependencies = ["jax>=0.9.0", "numpy>=2.0"]
# ///
"""Train a fully connected network (784-128-10, ReLU) on MNIST in plain JAX.

    uv run mlp_mnist.py      (or: pip install -r requirements.txt && python mlp_mnist.py)

Part 3 of "Up and Running with JAX", with its names: cross-entropy on log_softmax, gradients from
jax.value_and_grad, a jitted SGD `update`, 25 epochs at lr 0.01 and batch 64. The model comes first,
the data and main() last; importing the file only defines things, and a notebook cell can hold it whole."""

import os
import signal
import sys

# Ctrl-C or SIGTERM while the imports run (JAX's take a second): a word, not a traceback. Only as a program:
if __name__ == "__main__" and "IPython" not in sys.modules:  # in a notebook, the kernel (IPython) owns the signals
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: (os.write(2, b"Interrupted.\n"), os._exit(130)))

import argparse
import contextlib
import gzip
import hashlib
import http.client
import io
import tempfile
import threading
import time
import urllib.request
import zlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import jit, lax, random, value_and_grad
from jax.nn import log_softmax, relu

HIDDEN, SEED, LR, BATCH_SIZE, EPOCHS = (128,), 516, 0.01, 64, 25  # the article's training run
EVAL_BATCH = 2000  # images per forward pass when measuring accuracy


# --- Model: a list of (W, b) pairs, one per layer -------------------------------
def initialize_weights(sizes, key, scale=0.02):
    """(W, b) per layer, W of shape (m, n), entries from N(0, scale²), which break the symmetry between
    units. Each W and b gets its own key from `split`: one key drawn from twice gives the same numbers."""
    params = []
    for m, n, layer_key in zip(sizes[:-1], sizes[1:], random.split(key, len(sizes) - 1), strict=True):
        w_key, b_key = random.split(layer_key)
        params.append((scale * random.normal(w_key, (m, n)), scale * random.normal(b_key, (n,))))
    return params


def forward(params, X):
    """Logits (batch, 10) for images X (batch, 784) in [0, 1]: ReLU after every layer but the last."""
    activations = X
    for W, b in params[:-1]:
        activations = relu(activations @ W + b)
    W, b = params[-1]
    return activations @ W + b


# --- Loss: cross-entropy against integer labels ---------------------------------
def cross_entropy_loss(params, X, y):
    """Mean of -log p(true label). log_softmax subtracts each row's largest logit before exponentiating,
    which is stable: finite where exp(logit) overflows, and where a label's softmax is 0 and its log
    would be -inf. Each row's label picks its entry by indexing, not through a one-hot matrix."""
    log_probs = log_softmax(forward(params, X))
    return -jnp.mean(log_probs[jnp.arange(len(y)), y])


# --- Update: one step of stochastic gradient descent ----------------------------
@jit
def update(params, X, y, lr=0.01):
    """One SGD step; returns (new params, loss). value_and_grad gives the loss and the gradient for every
    array in `params` in one forward and backward pass; jax.tree.map (the article's tree_map) applies
    p - lr * g to each. jit traces the function once per input signature (shapes, dtypes, structure) and
    compiles the trace; as the function is pure, replaying the trace computes what the Python would,
    up to rounding."""
    loss, grads = value_and_grad(cross_entropy_loss)(params, X, y)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss


# --- Accuracy -------------------------------------------------------------------
def accuracy(logits, labels):
    """Fraction of rows whose largest logit is at the true label."""
    return jnp.mean(jnp.argmax(logits, axis=1) == labels)


# --- Training loop: one compiled call per epoch, one for evaluation -------------
def as_floats(images):
    """float32 in [0, 1]: integer pixels (0-255, as load_mnist gives them) are divided by 255; float
    images (the article's arrays) are in [0, 1] already."""
    return images.astype(jnp.float32) / (255 if jnp.issubdtype(images.dtype, jnp.integer) else 1)


@partial(jit, static_argnames="batch_size")
def train_epoch(params, images, labels, key, lr, batch_size):
    """One pass over the training set in one call: shuffle with `key`, cut into full batches (the
    last, partial one is dropped) and run `update` on each inside lax.scan, which compiles the loop
    itself. Only the batch in hand becomes floats; the losses stay on the device until their mean."""
    n_batches = len(labels) // batch_size
    order = random.permutation(key, len(labels))[: n_batches * batch_size]

    def step(params, batch):
        return update(params, as_floats(images[batch]), labels[batch], lr)

    params, losses = lax.scan(step, params, order.reshape(n_batches, batch_size))
    return params, jnp.mean(losses)


@jit
def evaluate(params, splits):
    """Accuracy on each (images, labels) pair in `splits`, in one compiled call; lax.map runs forward on
    EVAL_BATCH images at a time, so no float copy is larger than that."""
    return [
        accuracy(lax.map(lambda x: forward(params, as_floats(x)), images, batch_size=EVAL_BATCH), labels)
        for images, labels in splits
    ]


def train(data, sizes, seed=SEED, epochs=EPOCHS, lr=LR, batch_size=BATCH_SIZE):
    """The article's loop: each epoch trains (timed), measures accuracy on all training and test
    images and prints a line. Returns the params and `results`, the article's list of (epoch, loss,
    train acc, valid acc, seconds). Raises FloatingPointError if the loss stops being finite."""
    train_images, train_labels, test_images, test_labels = (jax.device_put(a) for a in data)
    key, init_key = random.split(random.key(seed))  # random.key: the article's PRNGKey, typed
    params = jax.block_until_ready(initialize_weights(sizes, init_key))  # out of memory? say so now
    results = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        key, subkey = random.split(key)  # a fresh key for this epoch's shuffle
        params, loss = train_epoch(params, train_images, train_labels, subkey, lr, batch_size)
        loss = float(loss)  # waits for the epoch to finish
        epoch_time = time.perf_counter() - start
        if not np.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss} in epoch {epoch}")
        train_acc, valid_acc = map(float, evaluate(params, [(train_images, train_labels), (test_images, test_labels)]))
        results.append((epoch, loss, train_acc, valid_acc, epoch_time))
        accuracies = f"train acc.: {train_acc:.3f}, valid acc.: {valid_acc:.3f}"
        print(f"Epoch {epoch}/{epochs}: loss: {loss:.4f}, {accuracies}, time: {epoch_time:.2f} sec.", flush=True)
    return params, results


# --- Data: the four IDX files, downloaded once, verified, cached ----------------
MIRRORS = {  # tried in order, HTTPS first; each file is <mirror><name>.gz
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion": (
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
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
DEADLINE = 30  # seconds for a whole download, from the request to the last byte
DATA_DIR_ENV = "MLP_MNIST_DATA_DIR"  # the data folder, when --data-dir is not given


class UserError(Exception):
    """A problem the user can fix (the data, JAX_PLATFORMS): main() prints its message, no traceback."""


def ceiling(name):
    """A bound on a good copy of `name`: IDX header, a byte per pixel or label, room for gzip."""
    n = N_TRAIN if name.startswith("train") else N_TEST
    return (16 + 784 * n if "images" in name else 8 + n) * 101 // 100 + 65536


def verified(raw, dataset, name):
    """The IDX bytes in `raw`, gunzipped if gzip, if they are `dataset`'s file `name`; else ValueError."""
    try:
        data = gzip.GzipFile(fileobj=io.BytesIO(raw)).read(ceiling(name)) if raw[:2] == b"\x1f\x8b" else raw
    except (EOFError, OSError, zlib.error) as e:
        raise ValueError(f"damaged gzip data ({e})") from None
    if (found := SHA256.get(hashlib.sha256(data).hexdigest())) != (dataset, name):
        raise ValueError(f"it holds {found[0]}'s {found[1]} (is --dataset right?)" if found else "its SHA-256 is wrong")
    return data


class Redirects(urllib.request.HTTPRedirectHandler):  # follows only http and https; urllib's own, ftp too
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not newurl.lower().startswith(("http://", "https://")):
            raise OSError(f"a redirect to {newurl} is refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download(url, limit):
    """The body at `url` if it is at most `limit` bytes and comes within DEADLINE s. A thread reads it, so
    the deadline holds even when headers trickle; one that overruns is a daemon, left to end by itself."""
    answer, give_up = [], time.monotonic() + DEADLINE

    def get():
        try:
            body = bytearray()
            with urllib.request.build_opener(Redirects).open(url, timeout=DEADLINE) as response:
                while len(body) <= limit and time.monotonic() < give_up and (chunk := response.read1(1 << 16)):
                    body += chunk
                if len(body) > limit:
                    raise OSError(f"more than the {limit} bytes a good copy takes")
            answer.append(bytes(body))
        except Exception as e:  # handed over: fetch tells a failed mirror from a bug
            answer.append(e)

    (worker := threading.Thread(target=get, daemon=True)).start()
    worker.join(DEADLINE)
    if not answer or time.monotonic() >= give_up:
        raise TimeoutError(f"no complete answer within {DEADLINE} s")
    if isinstance(answer[0], Exception):
        raise answer[0]
    return answer[0]


def save(raw, path):
    """Write `raw` to a new file beside `path` (O_EXCL: no planted symlink can redirect it), then
    rename it into place, atomically: no one ever sees a half-written file."""
    fd, part = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(part, 0o644)  # mkstemp makes it private; it is public data, readable by all
        os.replace(part, path)
    except BaseException:  # Ctrl-C and SIGTERM included
        os.remove(part)
        raise


def fetch(dataset, name, folder, mirrors):
    """Verified bytes of the IDX file `name`: a copy in `folder`, gzipped or not, else the first good one
    in `mirrors` (which a failed mirror leaves for its end), saved there. A bad file there is never replaced."""
    for path in (os.path.join(folder, name + ".gz"), os.path.join(folder, name)):
        if os.path.lexists(path):
            try:
                if not os.path.isfile(path):
                    raise ValueError("it is not a regular file")
                with open(path, "rb") as f:
                    return verified(f.read(ceiling(name) + 1), dataset, name)
            except (OSError, ValueError) as e:
                raise UserError(
                    f"{path} is unusable: {e}. It was left as it is; if it is a damaged copy, "
                    f"delete it and run again to download a good one."
                ) from None
    tried = []
    for mirror in list(mirrors):
        try:
            raw = download(mirror + name + ".gz", ceiling(name))
            data = verified(raw, dataset, name)
        except (OSError, http.client.HTTPException, ValueError, OverflowError) as e:  # OSError: HTTP, network
            tried.append(f"  {mirror}{name}.gz: {e}")
            mirrors.append(mirrors.pop(mirrors.index(mirror)))  # asked last for the files after this one
            continue
        print(f"Downloaded {name}.gz from {mirror} ({len(raw) / 1e6:.1f} MB)", file=sys.stderr)
        try:
            os.makedirs(folder, exist_ok=True)
            save(raw, os.path.join(folder, name + ".gz"))
        except OSError as e:
            raise UserError(
                f"Downloaded {name}.gz but could not save it in {folder} ({e}). "
                f"Choose a folder you can write to with --data-dir."
            ) from None
        return data
    raise UserError(
        f"Could not get {name}.gz from any mirror:\n" + "\n".join(tried) + "\nIf this machine is "
        f"offline, fetch the four files ({', '.join(n + '.gz' for n in FILES)}) from a mirror on one "
        f"that is online, copy them into a folder here and run again with --data-dir FOLDER."
    )


def cache_home(*parts):
    """A folder in $XDG_CACHE_HOME/mlp_mnist (ignored if relative, as XDG says) or ~/.cache/mlp_mnist."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    cache = cache if os.path.isabs(cache) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "mlp_mnist", *parts) if os.path.isabs(cache) else None


def load_mnist(dataset="mnist", data_dir=None):
    """(train_images, train_labels, test_images, test_labels) as NumPy arrays. Images are (N, 784)
    uint8, 0-255 as stored: a quarter of the memory of float32."""
    folder = data_dir or os.environ.get(DATA_DIR_ENV) or cache_home(dataset)
    if not folder:
        raise UserError("No folder for the data: there is no home folder. Choose one with --data-dir.")
    arrays, mirrors = [], list(MIRRORS[dataset])
    for name in FILES:  # each verified, so the IDX header's sizes are known: the data follow it
        data = np.frombuffer(fetch(dataset, name, folder, mirrors), np.uint8, offset=16 if "images" in name else 8)
        arrays.append(data.reshape(-1, 784) if "images" in name else data.astype(np.int32))
    return arrays


# --- main(): the command line ---------------------------------------------------
def use_compilation_cache():
    """Keep compiled programs beside the data cache, so that a second run compiles nothing. A
    JAX_COMPILATION_CACHE_DIR the user set wins; a folder that can't be written is skipped."""
    folder = cache_home("jax")
    with contextlib.suppress(OSError):
        if folder and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()  # can we write there?
            jax.config.update("jax_compilation_cache_dir", folder)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # every program


def number(kind, low, high):
    """An argparse type: a `kind` from `low` to `high`, or a usage error."""

    def parse(text):
        with contextlib.suppress(ValueError, OverflowError):
            if low <= (value := kind(text)) <= high:  # never true for nan
                return value
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind.__name__} from {low} to {high}")

    return parse


def default_device():
    """The device JAX computes on. JAX starts its backend here, before any download; if JAX_PLATFORMS asks for one
    that JAX can't start, it fails in its own way (RuntimeError; for cuda on a CPU-only JAX, a failed assert)."""
    try:
        return jax.devices()[0]
    except Exception as e:
        if not (platforms := os.environ.get("JAX_PLATFORMS")):
            raise  # not the user's setting: a bug
        reason = str(e)[:300] or type(e).__name__
        raise UserError(
            f"JAX could not start the backend JAX_PLATFORMS={platforms[:100]!r} names ({reason}). Unset JAX_PLATFORMS "
            "to let JAX use a device it has (in a notebook, then restart the kernel), or, for an NVIDIA GPU, install "
            'JAX\'s CUDA build: pip install -U "jax[cuda13]".'
        ) from None


def main(argv=None, compilation_cache=False):
    """The command line (`argv`, else sys.argv[1:]); returns the exit status and never raises SystemExit, which a
    notebook shows as an error. Errors a user can meet get a message; a closed pipe (| head) ends quietly, with 1."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add = parser.add_argument
    add("--dataset", choices=sorted(MIRRORS), default="mnist", help="fashion: Fashion-MNIST")
    add("--data-dir", help=f"holds or receives the four files; default ${DATA_DIR_ENV}, else a cache folder")
    add("--hidden", type=number(int, 1, 2**20), nargs="+", default=list(HIDDEN), help="hidden layer sizes")
    add("--epochs", type=number(int, 1, 2**31 - 1), default=EPOCHS, help="passes over the training set")
    add("--lr", type=number(float, 1.2e-38, 3.4e38), default=LR, help="learning rate, a float32 above 0")
    add("--batch-size", type=number(int, 1, N_TRAIN), default=BATCH_SIZE, help="images per step")
    add("--seed", type=number(int, 0, 2**32 - 1), default=SEED, help="for the weights and the shuffles")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed the help (0) or the usage error (2)
        return e.code
    try:
        if compilation_cache:  # only as a program: a notebook kernel's JAX settings are its user's
            use_compilation_cache()
        print(f"JAX {jax.__version__} on {default_device().device_kind}", flush=True)
        data = load_mnist(args.dataset, args.data_dir)
        train(data, [784, *args.hidden, 10], args.seed, args.epochs, args.lr, args.batch_size)
        return 0
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except UserError as e:
        message = str(e)
    except FloatingPointError as e:
        message = f"{e}. The learning rate {args.lr} is probably too large; try a smaller --lr (default {LR})."
    except jax.errors.JaxRuntimeError as e:
        if "out of memory" not in str(e).lower():
            raise  # a bug, not something the user did
        message = f"the network {[784, *args.hidden, 10]} does not fit in memory: {str(e).splitlines()[0]}"
    except OSError as e:  # writing the output: a closed pipe (| head), a full disk
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush can't fail too
        if isinstance(e, BrokenPipeError):
            return 1
        message = f"could not write the output ({e})"
    # control characters (a terminal's escape sequences, from a server say) are shown escaped, never raw
    print("error: " + "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in message), file=sys.stderr)
    return 1


if __name__ == "__main__" and "IPython" not in sys.modules:  # python mlp_mnist.py, uv run mlp_mnist.py
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here Ctrl-C and SIGTERM unwind,
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # so cleanup runs: exit 130
    status = main(compilation_cache=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not break JAX's cleanup at exit
    sys.exit(status)
elif __name__ == "__main__":  # a notebook: %run names this file in argv[0]; a pasted cell has the kernel's argv
    ours = "__file__" in globals() and os.path.realpath(sys.argv[0]) == os.path.realpath(__file__)
    if main(None if ours else []) == 130:  # never an exit, which the kernel would show as an error
        raise KeyboardInterrupt  # as an interrupted cell does, so that the cells queued after this one don't run
