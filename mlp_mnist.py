# /// script
# requires-python = ">=3.11"
# dependencies = ["jax>=0.9.0", "numpy>=2.0"]
# ///
"""Train a fully connected network (784-128-10, ReLU) on MNIST in plain JAX.

Part 3 of "Up and Running with JAX", with its names; README.md lists where it differs. The lesson comes first (model,
loss, update, accuracy, training loop), then the data and the command line. Run it with `uv run mlp_mnist.py`."""

import argparse
import gzip
import hashlib
import os
import pathlib
import sys
import tempfile
import time
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
from jax import jit, lax, random, value_and_grad
from jax.nn import log_softmax, relu


# --- Model: a list of (W, b) pairs, one per layer ----------------------------------------------------------------
def initialize_weights(sizes, key, scale=0.02):
    """A (W, b) pair per layer, W of shape (m, n), every entry drawn from N(0, scale²)."""
    params = []  # a list of tuples of arrays is a pytree: grad, jit and jax.tree.map take and return it whole
    for m, n, layer_key in zip(sizes[:-1], sizes[1:], random.split(key, len(sizes) - 1)):  # a key per layer
        w_key, b_key = random.split(layer_key)  # a key used twice gives the same random bits twice: split it
        params.append((scale * random.normal(w_key, (m, n)), scale * random.normal(b_key, (n,))))
    return params


def forward(params, X):
    """The logits, a score per class, for a batch of images: ReLU after every layer but the last."""
    activations = X  # (batch, 784): the 28 x 28 pixels of each image, in [0, 1]
    for W, b in params[:-1]:
        activations = relu(activations @ W + b)  # first layer: (batch, 784) @ (784, 128) + (128,) -> (batch, 128)
    W, b = params[-1]
    return activations @ W + b  # (batch, 128) @ (128, 10) + (10,) -> (batch, 10)


# --- Loss and update: cross-entropy against integer labels, one step of stochastic gradient descent ---------------
def cross_entropy_loss(params, X, y):
    """The mean over the batch of -log p(true label)."""
    log_probs = log_softmax(forward(params, X))  # log(softmax) computed in one step, so it never takes log(0)
    return -jnp.mean(log_probs[jnp.arange(len(y)), y])  # row i's entry in column y[i]: no one-hot matrix


@jit  # on the first call with new input shapes or dtypes, traces update and compiles it; later calls skip the Python
def update(params, X, y, lr=0.01):  # so it must be pure: a print in here would run only while tracing
    """One SGD step: returns the new params and the batch's loss."""
    loss, grads = value_and_grad(cross_entropy_loss)(params, X, y)  # grads: a pytree of the same structure as params
    return jax.tree.map(lambda p, g: p - lr * g, params, grads), loss  # each array p with its gradient g: p - lr * g


def accuracy(logits, labels):
    """The fraction of rows whose largest logit is at the true label."""
    return jnp.mean(jnp.argmax(logits, axis=1) == labels)


# --- Training loop: an epoch is one compiled call ----------------------------------------------------------------
@jit
def train_epoch(params, images, labels, batches, lr):
    """One pass over the training set, a step of `update` per row of `batches`; returns the params and the mean loss."""
    # In plain Python, the line below is this loop; lax.scan(f, carry, xs) runs it compiled, tracing f once:
    #     losses = []
    #     for batch in batches:  # the indices of 64 images
    #         params, loss = update(params, images[batch], labels[batch], lr)  # update: traced into this program
    #         losses.append(loss)
    # f(carry, x) returns (carry, y): the carry, here params, goes on to the next step; the ys come back stacked.
    # f may read images, labels and lr from train_epoch: traced with it, as arrays (so a new lr compiles nothing new)
    params, losses = lax.scan(lambda params, batch: update(params, images[batch], labels[batch], lr), params, batches)
    return params, jnp.mean(losses)


evaluate = jit(lambda params, X, y: accuracy(forward(params, X), y))  # jit as a function: the same as @jit


def train(data, sizes, seed=516, epochs=25, lr=0.01, batch_size=64):
    """Trains a network of layer `sizes` on `data`, printing a line per epoch; returns the params and `results`."""
    train_images, train_labels, test_images, test_labels = (jax.device_put(a) for a in data)  # on JAX's device, once
    key, init_key = random.split(random.key(seed))  # random.key: today's form of the article's PRNGKey(516)
    params = initialize_weights(sizes, init_key)
    n_batches = len(train_labels) // batch_size  # full batches only: the last, partial one is dropped
    results = []  # the article's list: (epoch, loss, train accuracy, valid accuracy, seconds)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        key, shuffle_key = random.split(key)  # a new key for each epoch's order
        order = random.permutation(shuffle_key, len(train_labels))[: n_batches * batch_size]
        params, loss = train_epoch(params, train_images, train_labels, order.reshape(n_batches, batch_size), lr)
        loss = float(loss)  # asynchronous dispatch: train_epoch returned once the epoch was queued; float() waits
        epoch_time = time.perf_counter() - start  # the first epoch's includes compiling train_epoch
        if not np.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss} in epoch {epoch}: try a smaller learning rate than {lr}")
        train_acc = float(evaluate(params, train_images, train_labels))  # on every training image
        valid_acc = float(evaluate(params, test_images, test_labels))  # "valid", as in the article: the test set
        results.append((epoch, loss, train_acc, valid_acc, epoch_time))
        accuracies = f"train acc.: {train_acc:.3f}, valid acc.: {valid_acc:.3f}"
        print(f"Epoch {epoch}/{epochs}: loss: {loss:.4f}, {accuracies}, time: {epoch_time:.2f} sec.", flush=True)
    return params, results


# --- The data: read from a folder, else downloaded into it; always checked ---------------------------------------
CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlp_mnist")
MIRRORS = [  # tried in this order; a file is <mirror><name>.gz. Plain HTTP only where there is no second HTTPS one
    ("mnist", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    ("mnist", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    ("fashion", "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    ("fashion", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
]
SHA256 = {  # of each file decompressed, so that a good copy passes gzipped or not
    ("mnist", "train-images-idx3-ubyte"): "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ("mnist", "train-labels-idx1-ubyte"): "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ("mnist", "t10k-images-idx3-ubyte"): "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ("mnist", "t10k-labels-idx1-ubyte"): "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ("fashion", "train-images-idx3-ubyte"): "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ("fashion", "train-labels-idx1-ubyte"): "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ("fashion", "t10k-images-idx3-ubyte"): "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ("fashion", "t10k-labels-idx1-ubyte"): "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def fetch(dataset, name, folder):
    """The array in `dataset`'s file `name`: from its copy in `folder`, gzipped or not, else the first good download."""
    copies = [path for path in (os.path.join(folder, name + ".gz"), os.path.join(folder, name)) if os.path.exists(path)]
    answers = ""
    for source in copies[:1] or [url + name + ".gz" for of, url in MIRRORS if of == dataset]:
        try:  # timeout: the seconds a mirror may stay silent
            with open(source, "rb") if copies else urllib.request.urlopen(source, timeout=20) as f:
                raw = f.read()
            data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw  # 1f 8b: how every gzip file starts
            if hashlib.sha256(data).hexdigest() != SHA256[dataset, name]:
                raise ValueError("its SHA-256 is not the real file's")
        except Exception as e:  # no network, an HTTP error, a cut connection, damaged gzip data, the wrong file
            answers += f"\n  {source}: {e}"
            continue
        if not copies:  # a download: written whole to a temporary folder (removed whatever happens), then renamed
            with tempfile.TemporaryDirectory(dir=folder) as part:
                pathlib.Path(part, name).write_bytes(raw)
                os.replace(os.path.join(part, name), os.path.join(folder, name + ".gz"))
        shape = np.frombuffer(data, ">u4", count=data[3], offset=4)  # IDX: 0, 0, 8 (uint8), k; k sizes, big-endian
        return np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(shape)  # (count, rows, cols) or (count,)
    advice = "It was left as it is: delete it if damaged." if copies else "Offline? Put the four .gz files in a folder."
    raise OSError(f"No good copy of {dataset}'s {name}:{answers}\n{advice} --data-dir FOLDER picks the folder to read.")


def load_mnist(dataset="mnist", data_dir=None):
    """Train images, train labels, test images, test labels, as JAX arrays: images (N, 784), labels (N,)."""
    folder = data_dir or os.environ.get("MLP_MNIST_DATA_DIR") or os.path.join(CACHE, dataset)
    try:
        os.makedirs(folder, exist_ok=True)
        os.listdir(folder)  # a folder we can't read would look empty: refuse it now, before any download
    except OSError as e:
        raise OSError(f"No data folder: {e}. Choose another with --data-dir.") from None
    arrays = [jnp.asarray(fetch(dataset, name, folder)) for of, name in SHA256 if of == dataset]  # on JAX's device
    return [a.reshape(len(a), 784) / 255 if a.ndim == 3 else a for a in arrays]  # images: float32 in [0, 1]


def main(argv=None):
    """Runs the command line (`argv`, else sys.argv[1:]); returns the exit status, never raises SystemExit."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--dataset", choices=["mnist", "fashion"], default="mnist", help="(default: %(default)s)")
    add("--data-dir", help="has or gets the four files (default: $MLP_MNIST_DATA_DIR, else ~/.cache/mlp_mnist/DATASET)")
    add("--hidden", type=int, nargs="+", default=[128], help="hidden layer sizes (default: 128)")
    add("--epochs", type=int, default=25, help="passes over the training set (default: %(default)s)")
    add("--lr", type=float, default=0.01, help="learning rate (default: %(default)s)")
    add("--batch-size", type=int, default=64, help="images per step, at most 60000 (default: %(default)s)")
    add("--seed", type=int, default=516, help="for the weights and the shuffles (default: %(default)s)")
    try:
        args = parser.parse_args(argv)
        if min(args.epochs, args.batch_size, *args.hidden) < 1 or args.batch_size > 60000 or not 0 < args.lr < 1e38:
            parser.error("--epochs, --batch-size (up to 60000) and --hidden take 1 or more; --lr above 0, finite")
        print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}", flush=True)
        sizes = [784, *args.hidden, 10]
        train(load_mnist(args.dataset, args.data_dir), sizes, args.seed, args.epochs, args.lr, args.batch_size)
        return 0
    except SystemExit as e:  # argparse printed the help (0) or a usage error (2); a kernel would show it as an error
        return e.code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except (OSError, FloatingPointError) as e:  # the data folder, a file, the mirrors; a loss that is not finite
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # python mlp_mnist.py, uv run mlp_mnist.py, %run mlp_mnist.py, or the file pasted in a cell
    if "IPython" not in sys.modules:  # a program: keep what it compiles for the next run, then exit with the status
        jax.config.update("jax_compilation_cache_dir", os.path.join(CACHE, "jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # every program, however quick
        sys.exit(main())
    ours = os.path.basename(sys.argv[0]) == os.path.basename(globals().get("__file__", ""))  # %run, not a pasted cell
    if main(None if ours else []) == 130:  # a pasted cell sees the kernel's argv, not ours: it runs the defaults
        raise KeyboardInterrupt  # as an interrupted cell ends, so that the cells after it don't run
