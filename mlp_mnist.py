"""Train a 784-128-10 ReLU network on MNIST in plain JAX, as "Up and Running with JAX" part 3 does.

Read from the top: settings, model, loss, one SGD step, accuracy, and the article's loop in `train`.
The code after it downloads MNIST. The block below lists what `uv run mlp_mnist.py` installs."""

# /// script
# requires-python = ">=3.11"
# dependencies = ["jax>=0.9.0", "numpy>=2.0"]
# ///

import gzip
import hashlib
import os
import time
import urllib.request
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import jit, random, value_and_grad
from jax.nn import log_softmax, relu

# Settings: the article's. Edit them here, or pass others to train(...).
LAYER_SIZES = [784, 128, 10]  # 28 x 28 pixels in, one hidden layer of 128, a score per digit out
EPOCHS = 25
LR = 0.01  # the learning rate: each step moves the params by -LR times their gradient
BATCH_SIZE = 64
SEED = 516


def initialize_weights(sizes, key, scale=0.02):
    """A (W, b) pair per layer, W of shape (m, n), every entry drawn from N(0, scale²)."""
    params = []
    # A key used twice gives the same numbers twice, so each layer gets its own, split for W and b.
    for m, n, layer_key in zip(sizes[:-1], sizes[1:], random.split(key, len(sizes) - 1)):
        w_key, b_key = random.split(layer_key)
        params.append((scale * random.normal(w_key, (m, n)), scale * random.normal(b_key, (n,))))
    return params


def forward(params, X):
    """The logits, a score per class, for a batch of images: ReLU after every layer but the last."""
    activations = X  # (batch, 784): the 28 x 28 pixels of each image, in [0, 1]
    for W, b in params[:-1]:  # params: (W, b) pairs, W of shape (in, out), e.g. (784, 128)
        activations = relu(activations @ W + b)  # first: (batch, 784) @ (784, 128) + (128,)
    W, b = params[-1]
    return activations @ W + b  # (batch, 128) @ (128, 10) + (10,) -> (batch, 10)


def cross_entropy_loss(params, X, y):
    """The mean over the batch of -log p(true label)."""
    # log_softmax is log(softmax) in one step, so a tiny probability never becomes log(0) = -inf.
    log_probs = log_softmax(forward(params, X))
    # Row i's entry in column y[i]. Labels must be 0 to 9: JAX assumes indices are in bounds and
    # checks none. -1 reads column 9, as in NumPy; 10, unlike in NumPy, is no error but undefined.
    return -jnp.mean(log_probs[jnp.arange(len(y)), y])


# @jit compiles update. At the first call with new shapes or dtypes, JAX runs the Python once on
# tracers, stand-ins for arrays that record each operation, and XLA compiles that record. Later
# calls run only the compiled program, so a print in update would print only while it is traced.
@jit
def update(params, X, y, lr):
    """One SGD step, of learning rate lr (no default): returns the new params and the loss."""
    # value_and_grad gives the loss and its gradient with respect to the first argument, params.
    loss, grads = value_and_grad(cross_entropy_loss)(params, X, y)
    # grads has the structure of params, a (dW, db) pair per layer. JAX calls such nested lists and
    # tuples of arrays a pytree. lr is traced like the arrays: a new float lr compiles nothing new.
    return [(W - lr * dW, b - lr * db) for (W, b), (dW, db) in zip(params, grads)], loss


def accuracy(logits, labels):
    """The fraction of rows whose largest logit is at the true label."""
    return jnp.mean(jnp.argmax(logits, axis=1) == labels)


@jit
def evaluate(params, X, y):
    """The accuracy on images X with labels y, in one compiled call."""
    return accuracy(forward(params, X), y)


def train(data, sizes=LAYER_SIZES, epochs=EPOCHS, lr=LR, batch_size=BATCH_SIZE, seed=SEED):
    """Trains on `data`, train and test images and labels; returns the params and `results`."""
    train_images, train_labels, test_images, test_labels = data  # NumPy arrays
    # evaluate reads all 70,000 images each epoch, so jax.device_put copies every array in these
    # tuples to JAX's device (a GPU if any) once. Batches are cut in NumPy and copied by update.
    train_set, test_set = jax.device_put(((train_images, train_labels), (test_images, test_labels)))
    # random.key is the typed, newer form of the article's random.PRNGKey (JEP 9263); both work.
    key, init_key = random.split(random.key(seed))
    params = initialize_weights(sizes, init_key)
    n_batches = len(train_labels) // batch_size  # a last, shorter batch would compile update again
    results = []  # the article's list: (epoch, loss, train accuracy, valid accuracy, seconds)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        key, shuffle_key = random.split(key)  # a new key, so a new order, for each epoch
        order = np.asarray(random.permutation(shuffle_key, len(train_labels)))
        losses = []
        for idx in order[: n_batches * batch_size].reshape(n_batches, batch_size):
            params, loss = update(params, train_images[idx], train_labels[idx], lr)
            losses.append(loss)
        # update returns before its step is done (asynchronous dispatch, a page in JAX's docs), so
        # Python cuts the next batch meanwhile. loss.item() would wait at each step, np.mean once.
        loss = float(np.mean(losses))
        epoch_time = time.perf_counter() - start  # epoch 1's includes compiling update
        train_acc = float(evaluate(params, *train_set))
        valid_acc = float(evaluate(params, *test_set))  # "valid", as in the article: the test set
        results.append((epoch, loss, train_acc, valid_acc, epoch_time))
        scores = f"train acc.: {train_acc:.3f}, valid acc.: {valid_acc:.3f}"
        print(f"Epoch {epoch}/{epochs}: loss: {loss:.4f}, {scores}, time: {epoch_time:.2f} sec.")
    return params, results


# The data. MNIST's four files, in the order load_mnist returns them, each with its SHA-256:
FILES = [
    ("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    ("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    ("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    ("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
]
MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"]
DATA_DIR = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlp_mnist")


def download(name, sha256, folder):
    """The bytes of `name` from the first mirror, in order, that sends them with the right SHA-256."""
    failures = ""
    for url in [mirror + name for mirror in MIRRORS]:
        print(f"Downloading {url}")
        try:  # timeout: the seconds a mirror may stay silent
            data = urllib.request.urlopen(url, timeout=20).read()
            if hashlib.sha256(data).hexdigest() == sha256:  # not an HTML error page, nor a file cut short
                return data
            failures += f"\n  {url}: {len(data):,} bytes, not the real file"
        except Exception as e:  # offline, an HTTP error, a connection cut short
            failures += f"\n  {url}: {e}"
    raise OSError(f"no mirror gave {name}:{failures}\nOffline? Put MNIST's four .gz files in {folder}")


def load_mnist(folder=DATA_DIR):
    """Train images, train labels, test images, test labels, in NumPy; images (N, 784) in [0, 1]."""
    os.makedirs(folder, exist_ok=True)  # if it can't be made, an OSError that names it
    arrays = []
    for name, sha256 in FILES:
        path = os.path.join(folder, name)
        if not os.path.exists(path):  # a file already there is used as it is, unchecked
            Path(path).write_bytes(download(name, sha256, folder))
        images = "images" in name  # IDX: a header of 16 bytes (images) or 8 (labels), then a byte a value
        try:
            values = np.frombuffer(gzip.decompress(Path(path).read_bytes()), np.uint8, offset=16 if images else 8)
            arrays.append(values.reshape(-1, 784) / np.float32(255) if images else values)
        except Exception as e:  # not gzip, cut short, or not IDX
            raise OSError(f"{path} can't be read ({e}); it was left as it is: delete it to download it again") from e
    return tuple(arrays)


if __name__ == "__main__":  # python mlp_mnist.py, %run mlp_mnist.py, or the whole file in a cell
    train(load_mnist())
