# /// script
# requires-python = ">=3.11"
# dependencies = ["jax>=0.9.0", "numpy>=2.0"]  # what `uv run` installs: a PEP 723 block
# ///
"""Train a fully connected network (784-128-10, ReLU) on MNIST in plain JAX: `python mlp_mnist.py`.

Part 3 of "Up and Running with JAX", with the article's function names, except that MNIST is
downloaded here (not by torchvision), `update` handles any number of layers, and an epoch is one
compiled call. https://www.jtrive.com/posts/intro-to-jax-part-3/intro-to-jax-part-3.html"""

import argparse
import gzip
import hashlib
import os
import sys
import tempfile
import time
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
from jax import jit, lax, random, value_and_grad
from jax.nn import log_softmax, relu


# --- The model: a list of (W, b) pairs, one per layer -----------------------------------------
def initialize_weights(sizes, key, scale=0.02):
    """A (W, b) pair per layer, W of shape (m, n), every entry drawn from N(0, scale²)."""
    # params is a pytree, JAX's name for nested lists, tuples and dicts with arrays as leaves:
    # grad, jit and jax.tree.map take a pytree whole and work on every array in it.
    params = []
    keys = random.split(key, len(sizes) - 1)  # a key per layer
    for m, n, layer_key in zip(sizes[:-1], sizes[1:], keys):
        w_key, b_key = random.split(layer_key)  # a key used twice gives the same numbers: split it
        params.append((scale * random.normal(w_key, (m, n)), scale * random.normal(b_key, (n,))))
    return params


def forward(params, X):
    """The logits, a score per class, for a batch of images: ReLU after every layer but the last."""
    activations = X  # (batch, 784): the 28 x 28 pixels of each image, in [0, 1]
    for W, b in params[:-1]:  # in 784-128-10: (batch, 784) @ (784, 128) + (128,) -> (batch, 128)
        activations = relu(activations @ W + b)
    W, b = params[-1]
    return activations @ W + b  # in 784-128-10: (batch, 128) @ (128, 10) + (10,) -> (batch, 10)


# --- The loss and one step of stochastic gradient descent -------------------------------------
def cross_entropy_loss(params, X, y):
    """The mean over the batch of -log p(true label)."""
    log_probs = log_softmax(forward(params, X))  # log(softmax) in one step: never log(0) = -inf
    # Row i's entry in column y[i]. A sharp bit: JAX doesn't check indices. A label of 10 would
    # read column 9 in the loss (reads clamp), but add no gradient (out-of-range writes drop).
    return -jnp.mean(log_probs[jnp.arange(len(y)), y])


# jit traces: at the first call with new shapes or dtypes it runs the Python once, on tracers that
# record each array operation; XLA, JAX's compiler, compiles that record, and later calls just run
# it. So a jitted function must be pure: its result depends only on its arguments; a print in it
# runs only while tracing.
@jit
def update(params, X, y, lr=0.01):
    """One SGD step: returns the new params and the batch's loss."""
    loss, grads = value_and_grad(cross_entropy_loss)(params, X, y)  # grads: a pytree like params
    # jax.tree.map(f, params, grads) calls f on each array of params and its gradient in grads
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss


def accuracy(logits, labels):
    """The fraction of rows whose largest logit is at the true label."""
    return jnp.mean(jnp.argmax(logits, axis=1) == labels)


# --- Training: an epoch is one compiled call --------------------------------------------------
@jit
def train_epoch(params, images, labels, batches, lr):
    """Runs `update` on each row of `batches` (image indices); returns the params and mean loss."""

    def step(params, batch):  # one iteration of the article's loop
        return update(params, images[batch], labels[batch], lr)  # train_epoch's inputs: still pure

    # lax.scan(step, params, batches) runs this loop as one compiled program, tracing step once:
    #     losses = []
    #     for batch in batches:
    #         params, loss = step(params, batch)
    #         losses.append(loss)
    # step returns (carry, output): the carry, params, goes on to the next step; the outputs, the
    # losses, come back stacked in one array.
    params, losses = lax.scan(step, params, batches)
    return params, jnp.mean(losses)


@jit
def evaluate(params, X, y):
    """The accuracy on images X with labels y, in one compiled call."""
    return accuracy(forward(params, X), y)


def train(data, sizes, seed=516, epochs=25, lr=0.01, batch_size=64):
    """Trains on `data`, train and test images and labels; returns the params and `results`."""
    # device_put copies each NumPy array to JAX's device (a GPU if any) once, not at every call
    train_images, train_labels, test_images, test_labels = (jax.device_put(a) for a in data)
    # random.key(seed): today's PRNGKey(seed), a key with a dtype of its own, not two uint32s
    key, init_key = random.split(random.key(seed))
    params = initialize_weights(sizes, init_key)
    n_batches = len(train_labels) // batch_size  # full batches: the rest sit out this epoch
    results = []  # the article's list: (epoch, loss, train accuracy, valid accuracy, seconds)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        key, shuffle_key = random.split(key)  # a new key for each epoch's order
        order = random.permutation(shuffle_key, len(train_labels))[: n_batches * batch_size]
        batches = order.reshape(n_batches, batch_size)
        params, loss = train_epoch(params, train_images, train_labels, batches, lr)
        loss = float(loss)  # asynchronous dispatch: train_epoch returned at once; float() waits
        epoch_time = time.perf_counter() - start  # so the whole epoch; the first includes compiling
        train_acc = float(evaluate(params, train_images, train_labels))
        valid_acc = float(evaluate(params, test_images, test_labels))  # "valid": the test set
        results.append((epoch, loss, train_acc, valid_acc, epoch_time))
        scores = f"train acc.: {train_acc:.3f}, valid acc.: {valid_acc:.3f}"
        print(f"Epoch {epoch}/{epochs}: loss: {loss:.4f}, {scores}, time: {epoch_time:.2f} sec.")
    return params, results


# --- The data: MNIST's four files, read from a folder, else downloaded into it ----------------
FILES = [  # in the order load_mnist returns them, each with the SHA-256 of the .gz
    ("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    ("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    ("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    ("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
]
MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"]
DATA_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlp_mnist")


def download(name, sha256, folder):
    """Saves into `folder` the first copy of `name`, from the mirrors in order, whose SHA-256 is right."""
    answers = ""
    for url in [mirror + name for mirror in MIRRORS]:
        print(f"Downloading {url}")
        try:  # timeout: the seconds a mirror may stay silent
            data = urllib.request.urlopen(url, timeout=20).read()
            if hashlib.sha256(data).hexdigest() != sha256:  # an HTML error page, a file cut short
                raise ValueError(f"{len(data):,} bytes, not the real file")
        except Exception as e:  # no network, an HTTP error, a cut connection, the wrong bytes
            answers += f"\n  {url}: {e}"
            continue
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".part", delete=False) as part:
            part.write(data)  # whole, under a temporary name; then renamed, so that the real name
        os.replace(part.name, os.path.join(folder, name))  # never holds half a file
        return
    raise OSError(f"no mirror gave {name}:{answers}")


def load_mnist(data_dir=DATA_DIR):
    """Train images, train labels, test images, test labels, in NumPy; images (N, 784) in [0, 1]."""
    os.makedirs(data_dir, exist_ok=True)
    arrays = []
    for name, sha256 in FILES:
        path = os.path.join(data_dir, name)
        if not os.path.exists(path):  # a file already there is used as it is
            download(name, sha256, data_dir)
        try:  # IDX: bytes 0, 0, 8 (uint8), k; k sizes as big-endian uint32; then the values
            with gzip.open(path) as f:
                data = f.read()
            shape = np.frombuffer(data, ">u4", count=data[3], offset=4)
            arrays.append(np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(shape))
        except Exception as e:  # not gzip, cut short, not IDX
            raise OSError(f"{path} can't be read as gzipped IDX ({e}); it was left as it is") from None
    return [a.reshape(len(a), 784) / np.float32(255) if a.ndim == 3 else a for a in arrays]


def main(argv=None):
    """The command line: reads the options in `argv` (else sys.argv[1:]), loads MNIST and trains."""
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default=DATA_DIR, help="the folder that has, or gets, the four .gz files")
    parser.add_argument("--hidden", type=int, nargs="+", default=[128], help="hidden layer sizes")
    parser.add_argument("--epochs", type=int, default=25, help="passes over the training set")
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--seed", type=int, default=516, help="for the first weights and the shuffles")
    args = parser.parse_args(argv)
    if min(args.epochs, args.batch_size, *args.hidden) < 1:
        parser.error("--epochs, --batch-size and --hidden take whole numbers of 1 or more")
    try:
        data = load_mnist(args.data_dir)
    except OSError as e:  # offline, a folder that can't be made, a damaged file: exit 1, no traceback
        sys.exit(f"error: {e}\nOffline, or another folder? Put MNIST's four .gz files in it, pass --data-dir.")
    train(data, [784, *args.hidden, 10], args.seed, args.epochs, args.lr, args.batch_size)


if __name__ == "__main__":  # python mlp_mnist.py, %run mlp_mnist.py --epochs 3, or pasted in a cell
    run_as_a_file = os.path.basename(sys.argv[0]) == os.path.basename(globals().get("__file__", ""))
    main(None if run_as_a_file else [])  # a pasted cell sees the kernel's sys.argv: it runs the defaults
