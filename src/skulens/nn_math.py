"""The CNN arithmetic of the design notes (section 4), in plain NumPy, as a reference.

Every operation computes what PyTorch computes (tests compare them on random inputs), and
:func:`seedcnn_forward` replays a trained ``seedcnn`` from its safetensors weights with nothing
but these functions. Written for reading, not speed: loops are over kernel offsets only, so a
150 px seedcnn still runs in well under a second.

Layouts follow PyTorch: images are ``(C, H, W)`` or ``(N, C, H, W)``; a 2-D ``(H, W)`` array is
one channel. Convolution kernels are ``(out, in, kh, kw)`` (or 2-D ``(kh, kw)`` for one channel in
and out); dense weights are ``(out, in)``. ``docs/nn_math.md`` works the small cases by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skulens.errors import SkulensError

__all__ = [
    "conv2d",
    "relu",
    "max_pool2d",
    "avg_pool2d",
    "dense",
    "softmax",
    "conv_output_size",
    "load_seedcnn_weights",
    "seedcnn_forward",
]


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or any(int(v) != v for v in pair):
        raise SkulensError(f"{name} must be an integer or a pair of integers, got {value!r}")
    return int(pair[0]), int(pair[1])


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """floor((size + 2 * padding - kernel) / stride) + 1: positions where the whole kernel fits."""
    return (size + 2 * padding - kernel) // stride + 1


def _as_batch(x: np.ndarray) -> tuple[np.ndarray, int]:
    """View ``x`` as (N, C, H, W); also return how many leading axes were added."""
    x = np.asarray(x)
    if x.ndim == 2:
        return x[None, None], 2
    if x.ndim == 3:
        return x[None], 1
    if x.ndim == 4:
        return x, 0
    raise SkulensError(f"expected an (H, W), (C, H, W) or (N, C, H, W) array, got shape {x.shape}")


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride=1, padding=0) -> np.ndarray:
    """2-D convolution as deep-learning frameworks compute it: a cross-correlation (no kernel flip).

    ``out[n, o, i, j] = bias[o] + sum over c, k, l of weight[o, c, k, l] * xp[n, c, i*sh + k, j*sw + l]``
    where ``xp`` is ``x`` zero-padded by ``padding`` on each side. Output side:
    :func:`conv_output_size`. The result has as many dimensions as ``x``.
    """
    xb, added = _as_batch(x)
    w = np.asarray(weight)
    if w.ndim == 2:
        w = w[None, None]
    if w.ndim != 4:
        raise SkulensError(f"expected a (kh, kw) or (out, in, kh, kw) kernel, got shape {w.shape}")
    if w.shape[1] != xb.shape[1]:
        raise SkulensError(f"the kernel expects {w.shape[1]} input channel(s) but the input has {xb.shape[1]}")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise SkulensError(f"stride must be >= 1 and padding >= 0, got stride={stride!r}, padding={padding!r}")
    kh, kw = w.shape[2:]
    n, _, h, wd = xb.shape
    oh, ow = conv_output_size(h, kh, sh, ph), conv_output_size(wd, kw, sw, pw)
    if oh < 1 or ow < 1:
        raise SkulensError(f"a {kh}x{kw} kernel does not fit a {h}x{wd} input with padding {padding}")
    xp = np.pad(xb, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    bias = None if bias is None else np.asarray(bias)
    out = np.zeros((n, w.shape[0], oh, ow), dtype=np.result_type(xb, w, *([] if bias is None else [bias])))
    # One matrix product per kernel offset (k, l): the input window that this weight touches,
    # strided like the output, times weight[:, :, k, l] summed over input channels.
    for k in range(kh):
        for l in range(kw):
            window = xp[:, :, k : k + sh * (oh - 1) + 1 : sh, l : l + sw * (ow - 1) + 1 : sw]
            out += np.einsum("nchw,oc->nohw", window, w[:, :, k, l])
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out[(0,) * added] if added else out


def relu(x: np.ndarray) -> np.ndarray:
    """max(0, x), element by element."""
    return np.maximum(np.asarray(x), 0)


def _pool(x: np.ndarray, size, stride, reduce) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2:
        raise SkulensError(f"pooling needs at least a 2-D (H, W) array, got shape {x.shape}")
    kh, kw = _pair(size, "size")
    sh, sw = _pair(size if stride is None else stride, "stride")
    if min(kh, kw, sh, sw) < 1:
        raise SkulensError(f"pool size and stride must be >= 1, got size={size!r}, stride={stride!r}")
    h, w = x.shape[-2:]
    oh, ow = conv_output_size(h, kh, sh), conv_output_size(w, kw, sw)
    if oh < 1 or ow < 1:
        raise SkulensError(f"a {kh}x{kw} pool does not fit a {h}x{w} input")
    # Windows that would run past the edge are dropped (floor), as in PyTorch and Keras 'valid'.
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(-2, -1))
    windows = windows[..., ::sh, ::sw, :, :][..., :oh, :ow, :, :]
    return reduce(windows, axis=(-2, -1))


def max_pool2d(x: np.ndarray, size=2, stride=None) -> np.ndarray:
    """The largest value of each ``size`` window over the last two axes; ``stride`` defaults to ``size``."""
    return _pool(x, size, stride, np.max)


def avg_pool2d(x: np.ndarray, size=2, stride=None) -> np.ndarray:
    """The mean of each ``size`` window over the last two axes (no padding, so no zeros are averaged in)."""
    return _pool(x, size, stride, np.mean)


def dense(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """A fully connected layer, ``x @ weight.T + bias``, with PyTorch's ``(out, in)`` weight layout."""
    x, weight = np.asarray(x), np.asarray(weight)
    if x.shape[-1] != weight.shape[-1]:
        raise SkulensError(f"the dense layer expects {weight.shape[-1]} inputs but got {x.shape[-1]}")
    out = x @ weight.T
    return out + np.asarray(bias) if bias is not None else out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x_i) / sum_j exp(x_j). Subtracting the maximum first changes nothing mathematically and
    keeps exp() from overflowing on large logits."""
    x = np.asarray(x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


SEEDCNN_TENSORS = (
    "conv1.weight",
    "conv1.bias",
    "conv2.weight",
    "conv2.bias",
    "conv3.weight",
    "conv3.bias",
    "fc1.weight",
    "fc1.bias",
    "classifier.weight",
    "classifier.bias",
)


def load_seedcnn_weights(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The weights of a seedcnn run as NumPy arrays, read from its safetensors file (never unpickled)."""

    from skulens.runs import RunFolder

    folder = RunFolder(run_dir)
    config = folder.config()
    if config.model.name != "seedcnn":
        raise SkulensError(f"{run_dir}: the NumPy forward pass replays seedcnn only, this run is {config.model.name}")
    # the same checks as every other load: present, and matching the checksum recorded at saving
    return {name: t.numpy() for name, t in folder.state_dict().items()}


def seedcnn_forward(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Class probabilities of a seedcnn for a preprocessed ``(C, H, W)`` or ``(N, C, H, W)`` input.

    Conv(3x3)-ReLU-MaxPool(2) three times, flatten in (C, H, W) order, Dense-ReLU, Dense, softmax.
    Dropout is absent: at prediction time it passes values through unchanged. Computed in float64
    so it serves as a reference for the float32 PyTorch model.
    """
    missing = [name for name in SEEDCNN_TENSORS if name not in weights]
    if missing:
        raise SkulensError(f"not seedcnn weights: missing {', '.join(missing)}")
    w = {name: np.asarray(weights[name], dtype=np.float64) for name in SEEDCNN_TENSORS}
    xb = np.asarray(x, dtype=np.float64)
    single = xb.ndim == 3
    if single:
        xb = xb[None]
    if xb.ndim != 4:
        raise SkulensError(f"expected a (C, H, W) or (N, C, H, W) input, got shape {np.shape(x)}")
    for layer in ("conv1", "conv2", "conv3"):
        xb = max_pool2d(relu(conv2d(xb, w[f"{layer}.weight"], w[f"{layer}.bias"])), 2)
    flat = xb.reshape(len(xb), -1)
    if flat.shape[1] != w["fc1.weight"].shape[1]:
        raise SkulensError(
            f"the input size does not match the weights: {flat.shape[1]} features reach the "
            f"dense layer, which was trained on {w['fc1.weight'].shape[1]}"
        )
    hidden = relu(dense(flat, w["fc1.weight"], w["fc1.bias"]))
    probs = softmax(dense(hidden, w["classifier.weight"], w["classifier.bias"]))
    return probs[0] if single else probs
