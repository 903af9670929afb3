"""Train a fully connected network (784-128-10, ReLU) on MNIST in plain JAX.

    pip install -r requirements.txt && python mlp_mnist.py

The network, loss and training run of part 3 of "Up and Running with JAX":
cross-entropy on log_softmax, gradients from jax.value_and_grad, a jitted SGD
`update`, 25 epochs at lr 0.01 and batch 64. One file, read top to bottom:
data, model, loss, update, accuracy, training loop, main(). Importing it only
defines things, so `from mlp_mnist import forward, update` works anywhere.
"""
import argparse
import gzip
import hashlib
import http.client
import math
import os
import struct
import sys
import time
import urllib.request
import zlib
from functools import partial

import numpy as np
import jax
import jax.numpy as jnp
from jax import jit, lax, random, value_and_grad
from jax.nn import log_softmax, relu

MIRRORS = {  # tried in order; each file is <mirror><name>.gz
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/",
              "http://yann.lecun.com/exdb/mnist/"),
    "fashion": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
}
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SHA256 = {  # of the decompressed IDX files, so any good copy verifies, gzipped or not
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
DATA_DIR_ENV = "MLP_MNIST_DATA_DIR"  # where the files are when --data-dir is not given
DOWNLOAD_TIMEOUT = 30                 # seconds a connection may stall before the next mirror
EVAL_BATCH = 2000                     # images per forward pass when measuring accuracy

# The article's training run.
HIDDEN, SEED, LR, BATCH_SIZE, EPOCHS = (128,), 516, 0.01, 64, 25


# ---------------------------------------------------------------------------
# Data: download once, verify, cache; parse the IDX format with NumPy.
# ---------------------------------------------------------------------------

class DataError(Exception):
    """A problem with the data that the user can fix; main() prints it, no traceback."""


def default_data_dir(dataset):
    """$MLP_MNIST_DATA_DIR if set, else a folder per dataset in the user's cache."""
    if os.environ.get(DATA_DIR_ENV):
        return os.environ[DATA_DIR_ENV]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "mlp_mnist", dataset)


def verified(raw, sha256):
    """The IDX bytes held in `raw` (gunzipped when it is gzip), if their SHA-256 is
    `sha256`; otherwise ValueError saying what is wrong. A truncated download fails
    here, never later as a puzzling EOFError."""
    try:
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (EOFError, OSError, zlib.error) as e:
        raise ValueError(f"damaged gzip data ({e})") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        known = [f"{d}'s {n}" for d, files in SHA256.items() for n, h in files.items() if h == digest]
        raise ValueError(f"it holds {known[0]} (is --dataset right?)" if known
                         else f"SHA-256 is {digest}, expected {sha256}")
    return data


def save(raw, path):
    """Write `raw` to a temporary file beside `path`, then rename it into place: a
    rename is atomic, so an interrupted write never leaves a complete-looking file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    part = f"{path}.{os.getpid()}.part"
    try:
        with open(part, "wb") as f:
            f.write(raw)
        os.replace(part, path)
    except BaseException:  # Ctrl-C included: leave nothing behind
        if os.path.exists(part):
            os.remove(part)
        raise


def fetch(name, folder, mirrors, sha256):
    """Verified bytes of the IDX file `name`: from `folder` when a good copy is
    there (no request, no write), else from the first mirror that serves a good
    one, which is then saved into `folder`."""
    for path in (os.path.join(folder, name + ".gz"), os.path.join(folder, name)):
        if os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    return verified(f.read(), sha256)
            except (OSError, ValueError) as e:
                print(f"{path} is unusable: {e}; fetching it again", file=sys.stderr)
    tried = []
    for mirror in mirrors:
        url = mirror + name + ".gz"
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
                raw = response.read()
            data = verified(raw, sha256)
        except (OSError, http.client.HTTPException, ValueError) as e:
            tried.append(f"  {url}: {e}")
            continue
        print(f"Downloaded {name}.gz from {mirror} ({len(raw) / 1e6:.1f} MB)", file=sys.stderr)
        try:
            save(raw, os.path.join(folder, name + ".gz"))
        except OSError as e:
            raise DataError(f"Downloaded {name}.gz but could not save it in {folder} ({e}). "
                            f"Choose a folder you can write to with --data-dir.") from None
        return data
    raise DataError(
        f"Could not get {name}.gz from any mirror:\n" + "\n".join(tried) + "\n"
        f"If this machine is offline, fetch the four files ({', '.join(n + '.gz' for n in FILES)}) "
        f"from one of these mirrors on a machine that is online, copy them into a folder here, and run "
        f"again with --data-dir FOLDER (or set {DATA_DIR_ENV}). Gzipped or not, they are checked "
        f"against known SHA-256 sums before use.")


def parse_idx(data, name):
    """An IDX file as an array: images (N, 784) uint8, labels (N,) int32. The
    header is checked so that a wrong or damaged file is named, not misread."""
    images = "images" in name
    magic, header = (2051, 16) if images else (2049, 8)
    if len(data) < header:
        raise DataError(f"{name}: {len(data)} bytes, too short for an IDX header")
    found, count = struct.unpack(">II", data[:8])
    if found != magic:
        raise DataError(f"{name}: magic number {found}, expected {magic} for IDX "
                        f"{'images' if images else 'labels'}")
    shape = (count,)
    if images:
        rows, cols = struct.unpack(">II", data[8:16])
        if (rows, cols) != (28, 28):
            raise DataError(f"{name}: images are {rows}x{cols}, expected 28x28")
        shape = (count, 28 * 28)
    if len(data) - header != math.prod(shape):
        raise DataError(f"{name}: the header announces {count} items ({math.prod(shape)} bytes) "
                        f"but the file holds {len(data) - header} bytes after it")
    array = np.frombuffer(data, np.uint8, offset=header).reshape(shape)
    if not images and count and array.max() > 9:
        raise DataError(f"{name}: label {array.max()} is not a class 0-9")
    return array if images else array.astype(np.int32)


def load_mnist(dataset="mnist", data_dir=None):
    """(train_images, train_labels, test_images, test_labels) as NumPy arrays.

    Images are (N, 784) uint8, 0-255 as stored: a quarter of the memory of
    float32. The training loop scales them to [0, 1] on the device."""
    folder = data_dir or default_data_dir(dataset)
    arrays = [parse_idx(fetch(name, folder, MIRRORS[dataset], SHA256[dataset][name]), name) for name in FILES]
    for split, images, labels in (("train", *arrays[:2]), ("t10k", *arrays[2:])):
        if len(images) != len(labels):
            raise DataError(f"{folder}: {split}-images holds {len(images)} images "
                            f"but {split}-labels holds {len(labels)} labels")
    return arrays


# ---------------------------------------------------------------------------
# Model: a list of (W, b) pairs, one per layer.
# ---------------------------------------------------------------------------

def initialize_weights(sizes, key, scale=0.02):
    """One (W, b) per layer, W of shape (m, n), every entry drawn from N(0, scale²).
    Small random values break the symmetry between units; each layer gets its own
    key, split from `key`, because a JAX key must never be used twice. W is drawn
    as a flat vector and reshaped: the same numbers as drawing shape (m, n), but
    XLA on CPU compiles the flat draw much faster (for (128, 10), 0.25 s not 1.2 s)."""
    params = []
    for m, n, layer_key in zip(sizes[:-1], sizes[1:], random.split(key, len(sizes) - 1)):
        w_key, b_key = random.split(layer_key)
        W = scale * random.normal(w_key, (m * n,)).reshape(m, n)
        params.append((W, scale * random.normal(b_key, (n,))))
    return params


def forward(params, X):
    """Logits (batch, 10) for images X (batch, 784) in [0, 1]: ReLU after every
    layer but the last, whose raw scores the loss turns into log-probabilities."""
    activations = X
    for W, b in params[:-1]:
        activations = relu(activations @ W + b)
    W, b = params[-1]
    return activations @ W + b


# ---------------------------------------------------------------------------
# Loss: cross-entropy against integer labels.
# ---------------------------------------------------------------------------

def cross_entropy_loss(params, X, y):
    """Mean of -log p(true label). log_softmax computes logits - logsumexp(logits)
    with the largest logit subtracted first, so it is exact for logits near 1e3,
    where exp() overflows, and for a true label far below the rest, whose softmax
    underflows to 0 and whose log would be -inf. Labels y are integers, used as
    indices: no one-hot matrix is built."""
    log_probs = log_softmax(forward(params, X))
    return -jnp.mean(log_probs[jnp.arange(len(y)), y])


# ---------------------------------------------------------------------------
# Update: one step of stochastic gradient descent.
# ---------------------------------------------------------------------------

@jit
def update(params, X, y, lr):
    """One SGD step; returns (new params, loss). value_and_grad gives the loss and
    its gradient for every array in `params` in one forward and backward pass;
    tree_map applies p - lr * g to each, however many layers there are. It is a
    pure function (new params out, nothing changed in place), which is what lets
    jit trace it once and compile it into a single fused program."""
    loss, grads = value_and_grad(cross_entropy_loss)(params, X, y)
    params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
    return params, loss


# ---------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------

def accuracy(logits, labels):
    """Fraction of rows whose largest logit is at the true label."""
    return jnp.mean(jnp.argmax(logits, axis=1) == labels)


# ---------------------------------------------------------------------------
# Training loop: one compiled program per epoch, one for evaluation.
# ---------------------------------------------------------------------------

def scale(images):
    """uint8 pixels 0-255 -> float32 in [0, 1], what forward and update expect."""
    return images.astype(jnp.float32) / 255.0


@partial(jit, static_argnames="batch_size")
def train_epoch(params, images, labels, key, lr, batch_size):
    """One pass over the training set as one call: shuffle with `key`, cut into
    full batches (the last, partial one is dropped), and run `update` on each in
    a lax.scan, which compiles the loop itself. Only the batch in hand is turned
    into floats, and the losses stay on the device: their mean comes back once."""
    n_batches = len(labels) // batch_size
    # A random order is an argsort of random keys: one sort, where random.permutation
    # sorts twice to rule out ties, which here would only keep two images in order.
    order = jnp.argsort(random.bits(key, (len(labels),)))[:n_batches * batch_size]

    def step(params, batch):
        return update(params, scale(images[batch]), labels[batch], lr)

    params, losses = lax.scan(step, params, order.reshape(n_batches, batch_size))
    return params, jnp.mean(losses)


@jit
def evaluate(params, splits):
    """Accuracy on each (images, labels) pair in `splits`, in one compiled call.
    lax.map runs forward on EVAL_BATCH images at a time, so the float copy of the
    images never exceeds one chunk."""
    return [accuracy(lax.map(lambda x: forward(params, scale(x)), images, batch_size=EVAL_BATCH), labels)
            for images, labels in splits]


def train(data, sizes, seed=SEED, epochs=EPOCHS, lr=LR, batch_size=BATCH_SIZE):
    """The article's loop: each epoch trains (timed), then measures accuracy on the
    whole training set and on every test image, and prints one line. Returns the
    trained params; raises FloatingPointError if the loss stops being finite."""
    train_images, train_labels, test_images, test_labels = (jax.device_put(a) for a in data)
    key, init_key = random.split(random.PRNGKey(seed))
    # jit compiles the initialization as one program, not call by call; sizes is static
    params = jit(initialize_weights, static_argnums=0)(tuple(sizes), init_key)
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        key, epoch_key = random.split(key)  # a fresh key for this epoch's shuffle
        params, loss = train_epoch(params, train_images, train_labels, epoch_key, lr, batch_size)
        loss = float(loss)  # waits for the epoch to finish
        epoch_time = time.perf_counter() - start
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss} in epoch {epoch}")
        train_acc, valid_acc = evaluate(params, [(train_images, train_labels), (test_images, test_labels)])
        print(f"Epoch {epoch}/{epochs}: loss: {loss:.4f}, train acc.: {float(train_acc):.3f}, "
              f"valid acc.: {float(valid_acc):.3f}, time: {epoch_time:.2f} sec.", flush=True)
    print(f"Done: {epochs} epochs in {time.perf_counter() - started:.1f} sec., "
          f"final valid acc.: {float(valid_acc):.3f}", flush=True)
    return params


# ---------------------------------------------------------------------------
# main(): the command line.
# ---------------------------------------------------------------------------

def positive(kind):
    """An argparse type: a finite number of `kind` above 0, or a usage error."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}")
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
        return value
    return parse


def main(argv=None):
    """Parse the options, load the data, train. Errors a user can meet become a
    message and an exit status (1 failure, 2 bad usage, 130 interrupted)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(MIRRORS), default="mnist",
                        help="mnist, or fashion for Fashion-MNIST (same format and sizes)")
    parser.add_argument("--data-dir", help=f"folder holding or receiving the four files "
                        f"(default: ${DATA_DIR_ENV}, else ~/.cache/mlp_mnist/DATASET)")
    parser.add_argument("--hidden", type=positive(int), nargs="+", default=list(HIDDEN),
                        help=f"hidden layer sizes; several make several layers (default: {HIDDEN[0]})")
    parser.add_argument("--epochs", type=positive(int), default=EPOCHS, help=f"default: {EPOCHS}")
    parser.add_argument("--lr", type=positive(float), default=LR, help=f"learning rate (default: {LR})")
    parser.add_argument("--batch-size", type=positive(int), default=BATCH_SIZE, help=f"default: {BATCH_SIZE}")
    parser.add_argument("--seed", type=int, default=SEED, help=f"for weights and shuffling (default: {SEED})")
    args = parser.parse_args(argv)
    try:
        data = load_mnist(args.dataset, args.data_dir)
        if args.batch_size > len(data[1]):
            parser.error(f"argument --batch-size: {args.batch_size} is more than the "
                         f"{len(data[1])} training images")
        print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}", flush=True)
        train(data, [784, *args.hidden, 10], args.seed, args.epochs, args.lr, args.batch_size)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except FloatingPointError as e:
        print(f"error: {e}. The learning rate {args.lr} is probably too large for this network; "
              f"try a smaller --lr (the default is {LR}).", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
