"""Train a 784-128-10 ReLU network on MNIST in plain JAX, as "Up and Running with JAX" part 3 does:
https://www.jtrive.com/posts/intro-to-jax-part-3/intro-to-jax-part-3.html"""

# SPDX-License-Identifier: MIT
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

# The article's settings. To change one in a session, pass it to train: train(data, epochs=5).
LAYER_SIZES = [784, 128, 10]  # 28 x 28 pixels in, 10 scores out
EPOCHS = 25
LR = 0.01
BATCH_SIZE = 64
SEED = 516


def initialize_weights(sizes, key, scale=0.02):
    """Returns a list of (W, b) pairs, one per layer, their entries drawn from N(0, scale²)."""
    params = []
    # A key used twice gives the same numbers twice, so each layer and each array gets its own.
    for m, n, layer_key in zip(sizes[:-1], sizes[1:], random.split(key, len(sizes) - 1)):
        w_key, b_key = random.split(layer_key)
        params.append((scale * random.normal(w_key, (m, n)), scale * random.normal(b_key, (n,))))
    return params


def forward(params, X):
    """Returns the logits, a row of scores per image: ReLU after every layer but the last."""
    activations = X  # (batch, 784): the 28 x 28 pixels of each image, in [0, 1]
    for W, b in params[:-1]:  # params: (W, b) pairs, W of shape (in, out), e.g. (784, 128)
        activations = relu(activations @ W + b)  # first: (batch, 784) @ (784, 128) + (128,)
    W, b = params[-1]
    return activations @ W + b  # (batch, 128) @ (128, 10) + (10,) -> (batch, 10)


def cross_entropy_loss(params, X, y):
    """Returns the mean over the batch of -log p(true label)."""
    log_probs = log_softmax(forward(params, X))  # log(softmax) from the logits: never log(0)
    return -jnp.mean(log_probs[jnp.arange(len(y)), y])


# @jit compiles update: on the first call with new shapes or dtypes, JAX traces the Python,
# running it once on tracers, stand-ins that record each operation, and XLA compiles the record.
# Later calls run only the compiled code, so a print in update prints only while it is traced.
@jit
def update(params, X, y, lr):
    """Takes one SGD step: returns new params, leaving params as they are, and the batch's loss."""
    loss, grads = value_and_grad(cross_entropy_loss)(params, X, y)  # grads is built like params
    return [(W - lr * dW, b - lr * db) for (W, b), (dW, db) in zip(params, grads)], loss


def accuracy(logits, labels):
    """Returns the fraction of rows whose largest logit is at the true label."""
    return jnp.mean(jnp.argmax(logits, axis=1) == labels)


def train(data, sizes=LAYER_SIZES, epochs=EPOCHS, lr=LR, batch_size=BATCH_SIZE, seed=SEED):
    """Trains on the four arrays load_mnist returns; returns the params and the results list."""
    train_images, train_labels = data[:2]  # in NumPy, to cut batches from
    X_train, y_train, X_test, y_test = jax.device_put(data)  # to the device once, for accuracy
    print(f"Training on {jax.devices()[0].device_kind}")  # a GPU if JAX has one
    key, init_key = random.split(random.key(seed))  # the typed form of random.PRNGKey
    params = initialize_weights(sizes, init_key)
    n_batches = len(train_labels) // batch_size  # a shorter last batch would compile update again
    results = []  # (epoch, loss, train accuracy, test accuracy, seconds) per epoch
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        key, shuffle_key = random.split(key)  # a new key, so a new order
        order = np.asarray(random.permutation(shuffle_key, len(train_labels)))
        losses = []
        for i in range(n_batches):
            idx = order[i * batch_size : (i + 1) * batch_size]
            params, loss = update(params, train_images[idx], train_labels[idx], lr)
            losses.append(loss)
        # update returns before its step is done (asynchronous dispatch), so Python goes on to
        # the next. The article's loss.item() waits at every step; np.mean waits at the end.
        loss = float(np.mean(losses))
        epoch_time = time.perf_counter() - start  # the training only; epoch 1's includes compiling
        train_acc = float(accuracy(forward(params, X_train), y_train))
        test_acc = float(accuracy(forward(params, X_test), y_test))
        results.append((epoch, loss, train_acc, test_acc, epoch_time))
        acc = f"train acc.: {train_acc:.3f}, test acc.: {test_acc:.3f}"
        print(f"Epoch {epoch}/{epochs}: loss: {loss:.4f}, {acc}, time: {epoch_time:.2f} sec.")
    return params, results


FILES = {  # MNIST's four files, NAME.gz, in the order load_mnist returns them, and their SHA-256
    "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]
DATA_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlp_mnist"


def load_mnist(folder=DATA_DIR):
    """Returns train images, train labels, test images and test labels as NumPy arrays."""
    folder = Path(folder)
    paths = [folder / f"{name}.gz" for name in FILES]
    missing = [path for path in paths if not path.exists()]
    # MNIST fills in only its own folder, beside MNIST's files, or a new or empty folder of yours.
    if missing and folder != DATA_DIR and any(folder.glob("*")):
        raise FileNotFoundError(f"{folder} lacks {', '.join(p.name for p in missing)}: add them")
    for p in paths:
        if missing and p.exists() and hashlib.sha256(p.read_bytes()).hexdigest() != FILES[p.stem]:
            raise ValueError(f"{p} is not MNIST's: delete it, or pass its folder to load_mnist")
    for path in missing:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(download(path.name, FILES[path.stem], folder))
    train_images, train_labels, test_images, test_labels = [read_idx(path) for path in paths]
    return train_images / np.float32(255), train_labels, test_images / np.float32(255), test_labels


def download(name, sha256, folder):
    """Returns the file from the first mirror that sends it with the right SHA-256."""
    for mirror in MIRRORS:
        print(f"Downloading {mirror}{name}")
        try:
            data = urllib.request.urlopen(mirror + name, timeout=30).read()
            if hashlib.sha256(data).hexdigest() == sha256:
                return data
            print(f"  failed: {len(data):,} bytes, not MNIST's {name}")
        except Exception as e:  # offline, an HTTP error, a connection cut short
            print(f"  failed: {e}")
    raise OSError(f"No mirror sent {name}. Offline? Put MNIST's four .gz files in {folder}")


def read_idx(path):
    """Returns the array in a gzipped IDX file, each image as one row of height x width values."""
    try:
        data = gzip.decompress(path.read_bytes())
        if data[:3] != b"\0\0\x08":  # IDX: 0, 0, 8 for bytes, the number of dimensions, the sizes
            raise ValueError("no IDX header for unsigned bytes")
        shape = np.frombuffer(data, ">u4", count=data[3], offset=4)
        values = np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(shape)
    except Exception as e:  # not gzip, cut short, or not IDX
        raise ValueError(f"{path} is not a gzipped IDX file ({e}): replace it") from e
    return values.reshape(len(values), -1) if values.ndim > 1 else values


if __name__ == "__main__":  # python mlp_mnist.py, %run mlp_mnist.py, or the whole file in a cell
    train(load_mnist())
