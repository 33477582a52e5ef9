"""Render docs/nn_math.md: the CNN arithmetic worked by hand, every number computed by the code.

    python scripts/render_nn_math_docs.py           # rewrite docs/nn_math.md
    python scripts/render_nn_math_docs.py --check   # exit 1 if the committed page is stale

Each hand-worked sum is built with plain Python loops here and asserted equal to what
``skulens.nn_math`` returns, so the page cannot show arithmetic the code disagrees with.
tests/test_nn_math.py re-renders the page and compares it with the committed file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from skulens import nn_math as nm

PAGE = Path(__file__).resolve().parents[1] / "docs" / "nn_math.md"

# The worked example of the design notes (§4.4), as printed there.
NOTES_INPUT = np.arange(1, 10).reshape(3, 3)
NOTES_KERNEL = np.array([[1, 0, 1], [1, 1, 1], [0, 1, 1]])
NOTES_SUMS = [  # (output name, [(weight, pixel), ...], value the notes state)
    ("output_11", [(1, 1), (0, 4), (1, 7)], 8),
    ("output_12", [(1, 2), (1, 4), (1, 8)], 11),
    ("output_13", [(1, 3), (0, 5), (1, 9)], 12),
    ("output_21", [(1, 4), (1, 5), (1, 7)], 12),
    ("output_22", [(1, 5), (1, 6), (1, 8)], 14),
    ("output_23", [(1, 6), (1, 7), (1, 9)], 16),
    ("output_31", [(0, 4), (1, 5), (1, 8)], 13),
    ("output_32", [(0, 5), (1, 6), (1, 9)], 15),
    ("output_33", [(0, 6), (1, 7), (1, 9)], 16),
]
NOTES_RESULT = np.array([[8, 11, 12], [12, 14, 16], [13, 15, 16]])
NOTES_MAX_POOL, NOTES_AVG_POOL = 3, 2.5  # §4.3, for the region [[1, 2], [3, 4]]


def num(v) -> str:
    """Integers as integers, other values to at most 4 decimals (stable across platforms)."""
    v = float(v)
    if abs(v - round(v)) < 1e-9:
        return str(int(round(v)))
    return f"{v:.4f}".rstrip("0")


def mat(a, indent: int = 0) -> str:
    """A vector on one line; a matrix with aligned columns, continuation rows indented by ``indent``."""
    a = np.asarray(a)
    if a.ndim == 1:
        return "[" + ", ".join(num(v) for v in a) + "]"
    cells = [[num(v) for v in row] for row in a]
    width = max(len(c) for row in cells for c in row)
    rows = ["[" + " ".join(c.rjust(width) for c in row) + "]" for row in cells]
    return ("\n" + " " * (indent + 1)).join(["[" + rows[0]] + rows[1:]) + "]"


def eq(label: str, a) -> str:
    return label + mat(a, len(label))


def inline(a) -> str:
    a = np.asarray(a)
    return "[" + ", ".join(inline(r) for r in a) + "]" if a.ndim > 1 else mat(a)


def block(*lines: str) -> str:
    return "```\n" + "\n".join(lines) + "\n```"


def hand_conv(x: np.ndarray, w: np.ndarray, i: int, j: int, stride: int = 1, padding: int = 0):
    """The products of one output value, by the definition, with explicit loops (no NumPy maths)."""
    rows, cols = len(x), len(x[0])
    terms = []
    for k in range(len(w)):
        for l in range(len(w[0])):
            r, c = i * stride + k - padding, j * stride + l - padding
            pixel = int(x[r][c]) if 0 <= r < rows and 0 <= c < cols else 0  # zero padding
            terms.append((int(w[k][l]), pixel))
    return terms


def sum_text(terms) -> str:
    return " + ".join(f"({num(a)})·{num(b)}" if a < 0 else f"{num(a)}·{num(b)}" for a, b in terms)


def checked(value, expected, what: str):
    if not np.allclose(value, expected):
        raise AssertionError(f"{what}: hand-worked {expected} but nn_math gives {value}")
    return value


def section_convolution() -> str:
    x, w = NOTES_INPUT, np.array([[1, 0], [1, 1]])
    out = nm.conv2d(x, w)
    lines = []
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            terms = hand_conv(x, w, i, j)
            total = checked(out[i, j], sum(a * b for a, b in terms), f"conv out[{i},{j}]")
            lines.append(f"out[{i},{j}] = {sum_text(terms)} = {num(total)}")
    flipped = w[::-1, ::-1]
    true_conv = nm.conv2d(x, flipped)
    x2 = np.stack([x, x[::-1]])  # two channels: the image and the image upside down
    w2 = np.stack([w, -w])[None]  # one output channel, one 2x2 kernel per input channel
    out2 = nm.conv2d(x2, w2, np.array([0.5]))
    t0, t1 = hand_conv(x2[0], w2[0, 0], 0, 0), hand_conv(x2[1], w2[0, 1], 0, 0)
    v2 = checked(out2[0, 0, 0], sum(a * b for a, b in t0 + t1) + 0.5, "two-channel out[0,0,0]")
    shapes = []
    for size, k, s, p in [(5, 3, 1, 0), (5, 3, 1, 1), (5, 3, 2, 1), (6, 3, 2, 0), (150, 3, 1, 0)]:
        n = nm.conv_output_size(size, k, s, p)
        assert nm.conv2d(np.zeros((size, size)), np.ones((k, k)), stride=s, padding=p).shape == (n, n)
        shapes.append(
            f"| {size}x{size} | {k}x{k} | {s} | {p} | floor(({size} + 2·{p} - {k}) / {s}) + 1 = {n} | {n}x{n} |"
        )
    return "\n".join(
        [
            "## 1. Convolution",
            "",
            "A convolution layer slides a small kernel over the image and, at each position, multiplies",
            "the kernel's weights with the pixels under them and adds the products up (plus a bias). With",
            "0-based indices, stride `s` and the input zero-padded by `p` on each side:",
            "",
            block(
                "out[o, i, j] = bias[o] + sum over c, k, l of  w[o, c, k, l] · x[c, i·s + k - p, j·s + l - p]",
                "",
                "o: output channel   c: input channel   (i, j): output position   (k, l): position inside the kernel",
            ),
            "",
            "Like PyTorch and Keras, `nn_math.conv2d` computes this *cross-correlation*: the kernel is not",
            "flipped. The convolution of mathematics flips it first; for a trained network it makes no",
            "difference (it learns the flipped kernel), but hand-worked numbers differ (below).",
            "An output side is `floor((n + 2p - K) / s) + 1`: the number of positions where the whole",
            "kernel fits.",
            "",
            "### A 3x3 input and a 2x2 kernel give a 2x2 output (no padding)",
            "",
            block(eq("x = ", x), "", eq("w = ", w)),
            "",
            "The kernel fits in 2 positions down and 2 across, so `conv2d(x, w)` is 2x2:",
            "",
            block(*lines, "", eq("conv2d(x, w) = ", out)),
            "",
            "Flipping the kernel first (the textbook convolution) gives "
            + f"`{inline(true_conv)}`"
            + " instead, which is why the direction matters when checking numbers by hand.",
            "",
            "### Several channels",
            "",
            "With several input channels each has its own kernel slice and all the products go into one",
            "sum; each output channel has its own kernel and bias. Two input channels (`x` and `x` upside",
            "down), kernels `w` and `-w`, bias 0.5:",
            "",
            block(
                f"out[0,0,0] = ({sum_text(t0)}) + ({sum_text(t1)}) + 0.5 = {num(v2)}",
                "",
                eq("conv2d(x2, w2, [0.5])[0] = ", out2[0]),
            ),
            "",
            "### Output sizes with stride and padding",
            "",
            "| input | kernel | stride | padding | output side | output |",
            "| --- | --- | --- | --- | --- | --- |",
            *shapes,
        ]
    )


def section_relu() -> str:
    x = np.array([-2, -0.5, 0, 1.5, 3])
    return "\n".join(
        [
            "## 2. ReLU",
            "",
            "`relu(x) = max(0, x)`, element by element: negative values become 0, the rest pass unchanged.",
            "",
            block(f"relu({mat(x)}) = {mat(nm.relu(x))}"),
            "",
            f"In particular `relu(-2) = {num(checked(nm.relu(-2), 0, 'relu(-2)'))}`, as the design notes say.",
        ]
    )


def section_pooling() -> str:
    region = np.array([[1, 2], [3, 4]])
    mx = checked(nm.max_pool2d(region, 2)[0, 0], max(1, 2, 3, 4), "max pool")
    av = checked(nm.avg_pool2d(region, 2)[0, 0], (1 + 2 + 3 + 4) / 4, "average pool")
    x = np.array([[1, 3, 2, 0], [5, 6, 1, 2], [7, 0, 4, 8], [1, 2, 3, 9]])
    odd = np.arange(25).reshape(5, 5)
    return "\n".join(
        [
            "## 3. Pooling",
            "",
            "Pooling shrinks a feature map: each window of `size x size` values becomes one value, its",
            "maximum (max pooling) or its mean (average pooling). The windows step by `size` by default,",
            "so a 2x2 pool halves each side.",
            "",
            block(
                eq("region = ", region),
                "",
                f"max_pool2d(region, 2) = max(1, 2, 3, 4) = {num(mx)}",
                f"avg_pool2d(region, 2) = (1 + 2 + 3 + 4) / 4 = 10 / 4 = {num(av)}",
            ),
            "",
            "A 4x4 map in four 2x2 windows:",
            "",
            block(
                eq("x = ", x),
                "",
                eq("max_pool2d(x, 2) = ", nm.max_pool2d(x, 2)),
                eq("avg_pool2d(x, 2) = ", nm.avg_pool2d(x, 2)),
            ),
            "",
            "A window that would run past the edge is dropped, as in PyTorch and Keras (`padding='valid'`):",
            f"a 5x5 map pools to {nm.max_pool2d(odd, 2).shape[0]}x{nm.max_pool2d(odd, 2).shape[1]}, the last row and column unused.",
        ]
    )


def section_dense_softmax() -> str:
    x = np.array([1, 2, 3])
    w = np.array([[0.5, -1, 0.25], [1, 0, -0.5], [-0.5, 0.5, 0.5]])
    b = np.array([0.5, 1, -1])
    logits = nm.dense(x, w, b)
    rows = []
    for o in range(len(w)):
        total = checked(logits[o], sum(w[o][c] * x[c] for c in range(len(x))) + b[o], f"dense {o}")
        products = sum_text([(w[o][c], x[c]) for c in range(len(x))])
        rows.append(f"z[{o}] = {products} + {'(' + num(b[o]) + ')' if b[o] < 0 else num(b[o])} = {num(total)}")
    probs = nm.softmax(logits)
    exps = [float(np.exp(v)) for v in logits]
    for o in range(len(w)):
        checked(probs[o], exps[o] / sum(exps), f"softmax {o}")
    big = nm.softmax(logits + 1000)
    checked(big, probs, "softmax shift")
    return "\n".join(
        [
            "## 4. Dense layer and softmax",
            "",
            "A dense (fully connected) layer gives every output its own weight for every input:",
            "`z = W x + b`, with `W` stored as (outputs, inputs) like PyTorch's `nn.Linear`. Softmax turns",
            "the class scores (logits) into probabilities: `p_i = exp(z_i) / sum_j exp(z_j)`.",
            "",
            block("x = " + mat(x), eq("W = ", w), "b = " + mat(b), "", *rows),
            "",
            block(
                "exp(z) = " + mat(np.array(exps)) + f"   sum = {num(sum(exps))}",
                "softmax(z) = exp(z) / sum = " + mat(probs) + f"   (sums to {num(probs.sum())})",
            ),
            "",
            "Adding the same number to every logit changes nothing (`softmax(z + 1000)` is the same",
            "vector), so `nn_math.softmax` subtracts the largest logit first: `exp(1000)` would overflow.",
        ]
    )


def section_seedcnn() -> str:
    import torch

    from skulens.models.seedcnn import SeedCNN

    size, classes, chans = 150, 8, 3
    model = SeedCNN(classes, img_size=size)
    side, c_in = size, chans
    rows = [f"| input | {side}x{side}x{c_in} | 0 |"]
    total = 0
    for name, c_out in (("conv1", 32), ("conv2", 64), ("conv3", 128)):
        side = nm.conv_output_size(side, 3)
        params = 3 * 3 * c_in * c_out + c_out
        assert params == sum(p.numel() for p in getattr(model, name).parameters())
        total += params
        rows.append(f"| {name} 3x3 + ReLU | {side}x{side}x{c_out} | 3·3·{c_in}·{c_out} + {c_out} = {params:,} |")
        side = nm.conv_output_size(side, 2, 2)
        rows.append(f"| max pool 2x2 | {side}x{side}x{c_out} | 0 |")
        c_in = c_out
    flat = side * side * c_in
    rows.append(f"| flatten | {flat:,} | 0 |")
    for name, n_in, n_out in (("fc1 dense + ReLU", flat, 512), ("classifier dense + softmax", 512, classes)):
        params = n_in * n_out + n_out
        total += params
        rows.append(f"| {name} | {n_out} | {n_in:,}·{n_out} + {n_out} = {params:,} |")
        if name.startswith("fc1"):
            rows.append("| dropout 0.5 (training only) | 512 | 0 |")
    assert total == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert model.forward_features(torch.zeros(1, chans, size, size)).shape[1:] == (c_in, side, side)
    small = 28
    for _ in range(2):
        small = nm.conv_output_size(nm.conv_output_size(small, 3), 2, 2)
    small = nm.conv_output_size(small, 3)
    return "\n".join(
        [
            "## 5. The seedcnn, layer by layer",
            "",
            f"The CNN of the design notes (§5.2) on a {size}x{size} colour photo with {classes} classes. Each",
            "3x3 convolution has no padding, so it trims one pixel from every border; each 2x2 pool",
            "halves the side, rounding down. The parameter counts are checked against the PyTorch model.",
            "",
            "| layer | output | parameters |",
            "| --- | --- | --- |",
            *rows,
            f"| **total** | | **{total:,}** |",
            "",
            f"Flattening the {side}x{side}x{c_in} map gives {flat:,} features, so the first dense layer holds",
            f"{100 * flat * 512 / total:.0f}% of all the weights. The 28x28x1 example of §3.3 flattens a",
            f"{small}x{small}x64 map ({small * small * 64} features) into its Dense(64).",
            "",
            "`nn_math.seedcnn_forward(load_seedcnn_weights(run), x)` replays a trained seedcnn with the",
            "functions above (dropout passes values through at prediction time); tests/test_nn_math.py",
            "checks that its class probabilities equal PyTorch's on the bundled demo photos.",
        ]
    )


def section_notes() -> str:
    valid = nm.conv2d(NOTES_INPUT, NOTES_KERNEL)
    terms = hand_conv(NOTES_INPUT, NOTES_KERNEL, 0, 0)
    checked(valid[0, 0], sum(a * b for a, b in terms), "notes valid")
    same = nm.conv2d(NOTES_INPUT, NOTES_KERNEL, padding=1)
    corner = hand_conv(NOTES_INPUT, NOTES_KERNEL, 0, 0, padding=1)
    checked(same[0, 0], sum(a * b for a, b in corner), "notes padded corner")
    two = nm.conv2d(NOTES_INPUT, NOTES_KERNEL[:2, :2])
    wrong_sums = []
    for name, pairs, stated in NOTES_SUMS:
        value = sum(a * b for a, b in pairs)
        if value != stated:
            wrong_sums.append((name, sum_text(pairs), stated, value))
    mx = nm.max_pool2d(np.array([[1, 2], [3, 4]]), 2)[0, 0]
    av = nm.avg_pool2d(np.array([[1, 2], [3, 4]]), 2)[0, 0]
    assert mx != NOTES_MAX_POOL and av == NOTES_AVG_POOL
    return "\n".join(
        [
            "## 6. Where the design notes go wrong",
            "",
            "The Chinese article in `../shared/design-notes/` (§4) has the right ideas but several of its",
            "formulas and worked numbers are wrong. The right values, all computed above by the code:",
            "",
            "| notes | what they say | right |",
            "| --- | --- | --- |",
            '| §4.1 convolution formula | `output_ij = sum_k sum_l w_kl · x_{i+k-j, l+m-j}`; "i, j, k, l are indices of the output" '
            "| `m` is never defined and `j` appears in both subscripts. It is `out[i, j] = sum_k sum_l w[k, l] · x[i·s + k, j·s + l]` "
            "(+ bias): `i, j` index the output, `k, l` the kernel (section 1) |",
            "| §4.2 `ReLU(-2)` | 0 | 0: right |",
            f"| §4.3 max pooling of `[[1, 2], [3, 4]]` | {NOTES_MAX_POOL} | **{num(mx)}**, the largest of the four values |",
            f"| §4.3 average pooling of `[[1, 2], [3, 4]]` | {num(NOTES_AVG_POOL)} | {num(av)}: right |",
            "| §4.3 pooling formulas | the same broken subscripts as §4.1 | `out[i, j] = max` (or mean) `over k, l of x[i·s + k, j·s + l]`, "
            "with stride `s` = the window size for the usual non-overlapping pool |",
            '| §4.4 "a 2x2 kernel" | its weight matrix is 3x3 | a 3x3 matrix is a 3x3 kernel |',
            f"| §4.4 output of a 3x3 input | a 3x3 map `{inline(NOTES_RESULT)}` "
            f"| without padding a KxK kernel leaves (3 - K + 1) positions per side: the 3x3 kernel gives one value, "
            f"**{num(valid[0, 0])}** (`{sum_text(terms)}`); a 2x2 kernel (its top-left corner) gives the 2x2 "
            f"`{inline(two)}`; a 3x3 output needs padding 1: "
            f"`{inline(same)}` (e.g. `out[0,0] = {sum_text(corner)} = {num(same[0, 0])}`) |",
            "| §4.4 each output value | a sum of 3 products | a 3x3 kernel multiplies 9 pixels (4 for a 2x2 kernel); "
            "the 3 products listed do not follow any kernel position |",
            "| §4.4 arithmetic of its own sums | "
            + "; ".join(f"`{n} = {t} = {st}`" for n, t, st, _ in wrong_sums)
            + " | "
            + "; ".join(f"`{t} = {v}`" for _, t, _, v in wrong_sums)
            + " (the other five sums add up) |",
            "",
            "The article's Keras models (§3.3, §5.2) are consistent; the seedcnn is the §5.2 one, with a",
            "softmax over N classes where §5.2 has a single sigmoid output for two.",
        ]
    )


def render() -> str:
    sections = [
        "# The CNN arithmetic, worked by hand",
        "",
        "<!-- Generated by scripts/render_nn_math_docs.py from skulens.nn_math; do not edit by hand.",
        "     tests/test_nn_math.py re-renders this page and fails when it differs. -->",
        "",
        "`skulens.nn_math` is a small NumPy reference of the operations a CNN such as `seedcnn` is",
        "built from: `conv2d`, `relu`, `max_pool2d`, `avg_pool2d`, `dense` and `softmax`. The tests",
        "compare each with PyTorch on random inputs. Every number on this page was computed by those",
        "functions when the page was rendered, and every sum written out by hand was checked against",
        "them, so the page and the code cannot disagree.",
        "",
        section_convolution(),
        "",
        section_relu(),
        "",
        section_pooling(),
        "",
        section_dense_softmax(),
        "",
        section_seedcnn(),
        "",
        section_notes(),
        "",
    ]
    return "\n".join(sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/nn_math.md is not up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = PAGE.read_text(encoding="utf-8") if PAGE.is_file() else ""
        if current != text:
            print(f"{PAGE} is out of date: run python scripts/render_nn_math_docs.py", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
