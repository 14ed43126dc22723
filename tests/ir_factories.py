"""Random IR networks built directly (no ONNX): MLPs, CNNs with every conv/pool option, Scale and residual Add.

Every factory takes a seed so hypothesis can draw and shrink it; weights are He-scaled so activations stay O(1)
and a box of moderate radius leaves a mix of stable and unstable ReLUs.
"""

from __future__ import annotations

import numpy as np

from mlrobust.ir.graph import Network, Node
from mlrobust.ir.ops import Add, AvgPool2d, Conv2d, Dense, MaxPool2d, Relu, Reshape, Scale


class NetBuilder:
    """Appends nodes to a growing network; each method consumes ``self.cur`` (or named tensors) and moves it on."""

    def __init__(self, sample_shape: tuple[int, ...], rng: np.random.Generator, input_name: str = "x"):
        self.rng = rng
        self.input_name = input_name
        self.input_shape = (1, *sample_shape)
        self.nodes: list[Node] = []
        self.shapes: dict[str, tuple[int, ...]] = {input_name: tuple(sample_shape)}
        self.cur = input_name

    @property
    def shape(self) -> tuple[int, ...]:
        return self.shapes[self.cur]

    def _add(self, op, inputs: tuple[str, ...], out_shape: tuple[int, ...]) -> str:
        name = f"t{len(self.nodes)}_{op.kind.lower()}"
        self.nodes.append(Node(f"n{len(self.nodes)}_{op.kind}", op, inputs, name, tuple(int(s) for s in out_shape)))
        self.shapes[name] = tuple(int(s) for s in out_shape)
        self.cur = name
        return name

    def dense(self, out: int, src: str | None = None) -> str:
        src = src or self.cur
        n_in = int(np.prod(self.shapes[src]))
        w = self.rng.normal(0, np.sqrt(2.0 / n_in), (out, n_in))
        b = self.rng.normal(0, 0.1, out)
        return self._add(Dense(w, b), (src,), (out,))

    def conv(self, c_out: int, kernel=(3, 3), stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups: int = 1,
             src: str | None = None) -> str:
        src = src or self.cur
        c_in, h, w = self.shapes[src]
        fan_in = c_in // groups * kernel[0] * kernel[1]
        weight = self.rng.normal(0, np.sqrt(2.0 / fan_in), (c_out, c_in // groups, *kernel))
        op = Conv2d(weight, self.rng.normal(0, 0.1, c_out), tuple(stride), tuple(padding), tuple(dilation), groups)
        return self._add(op, (src,), (c_out, *op.output_hw(h, w)))

    def relu(self) -> str:
        return self._add(Relu(), (self.cur,), self.shape)

    def maxpool(self, kernel, stride, padding=(0, 0, 0, 0)) -> str:
        c, h, w = self.shape
        op = MaxPool2d(tuple(kernel), tuple(stride), tuple(padding))
        return self._add(op, (self.cur,), (c, *op.output_hw(h, w)))

    def avgpool(self, kernel, stride, padding=(0, 0, 0, 0), count_include_pad: bool = False) -> str:
        c, h, w = self.shape
        op = AvgPool2d(tuple(kernel), tuple(stride), tuple(padding), count_include_pad)
        return self._add(op, (self.cur,), (c, *op.output_hw(h, w)))

    def reshape(self, shape: tuple[int, ...]) -> str:
        return self._add(Reshape(tuple(shape)), (self.cur,), shape)

    def flatten(self) -> str:
        return self.reshape((int(np.prod(self.shape)),))

    def scale(self, per_channel: bool = True) -> str:
        shape = self.shape
        cshape = (shape[0],) + (1,) * (len(shape) - 1) if per_channel else shape
        mul = self.rng.uniform(0.5, 2.0, cshape) * self.rng.choice([-1.0, 1.0], cshape)
        return self._add(Scale(mul, self.rng.normal(0, 0.2, cshape)), (self.cur,), shape)

    def add(self, a: str, b: str, coeff: float = 1.0) -> str:
        assert self.shapes[a] == self.shapes[b]
        return self._add(Add(float(coeff)), (a, b), self.shapes[a])

    def build(self) -> Network:
        return Network(self.input_name, self.input_shape, list(self.nodes), self.cur)


def random_mlp(seed: int) -> Network:
    """Dense/ReLU stack, optional input normalisation and a residual Add (or Sub) between equal-width layers."""
    rng = np.random.default_rng(seed)
    b = NetBuilder((int(rng.integers(2, 8)),), rng)
    if rng.random() < 0.5:
        b.scale(per_channel=False)
    width = int(rng.integers(3, 12))
    b.dense(width)
    b.relu()
    for _ in range(int(rng.integers(0, 3))):
        if rng.random() < 0.4:
            skip = b.cur
            b.dense(width)
            b.relu()
            b.dense(width)
            b.add(b.cur, skip, coeff=float(rng.choice([1.0, -1.0, 0.5])))
        else:
            width = int(rng.integers(3, 12))
            b.dense(width)
        b.relu()
    b.dense(int(rng.integers(2, 6)))
    return b.build()


def _conv_options(rng: np.random.Generator, c_in: int, h: int, w: int) -> dict:
    """Random kernel/stride/dilation/asymmetric padding/groups with a non-empty output."""
    groups = int(rng.choice([g for g in range(1, c_in + 1) if c_in % g == 0]))
    c_out = groups * int(rng.integers(1, 4))
    while True:
        kernel = tuple(int(k) for k in rng.integers(1, 4, 2))
        dilation = tuple(int(d) for d in rng.integers(1, 3, 2))
        stride = tuple(int(s) for s in rng.integers(1, 3, 2))
        padding = tuple(int(rng.integers(0, kernel[i % 2])) for i in range(4))
        op = Conv2d(np.zeros((c_out, c_in // groups, *kernel)), np.zeros(c_out), stride, padding, dilation, groups)
        if min(op.output_hw(h, w)) >= 1:
            return dict(c_out=c_out, kernel=kernel, stride=stride, padding=padding, dilation=dilation, groups=groups)


def _pool_options(rng: np.random.Generator, h: int, w: int) -> dict | None:
    kernel = tuple(int(k) for k in rng.integers(1, 4, 2))
    if kernel[0] > h or kernel[1] > w:
        return None
    stride = tuple(int(rng.integers(1, k + 1)) for k in kernel)
    padding = tuple(int(rng.integers(0, kernel[i % 2] // 2 + 1)) for i in range(4))
    return dict(kernel=kernel, stride=stride, padding=padding)


def random_cnn(seed: int) -> Network:
    """Conv (strides, asymmetric pads, dilations, groups) / ReLU / MaxPool / AvgPool / Scale / residual Add / Dense."""
    rng = np.random.default_rng(seed)
    c, h, w = int(rng.integers(1, 4)), int(rng.integers(4, 9)), int(rng.integers(4, 9))
    b = NetBuilder((c, h, w), rng)
    if rng.random() < 0.5:
        b.scale(per_channel=True)
    for layer in range(int(rng.integers(1, 3))):
        b.conv(**_conv_options(rng, *b.shape))
        if rng.random() < 0.3:
            b.scale(per_channel=rng.random() < 0.5)  # an unfolded BatchNorm between conv and activation
        if rng.random() < 0.25 and min(b.shape[1:]) >= 2:
            pool = _pool_options(rng, *b.shape[1:])  # MaxPool straight on a conv output (pre-activation)
            if pool:
                b.maxpool(**pool)
        b.relu()
        if rng.random() < 0.4:
            skip = b.cur
            c_cur = b.shape[0]
            b.conv(c_cur, kernel=(3, 3), padding=(1, 1, 1, 1))
            b.relu()
            b.add(b.cur, skip, coeff=float(rng.choice([1.0, -1.0, 0.5])))
        pool = _pool_options(rng, *b.shape[1:])
        if pool and rng.random() < 0.6:
            if rng.random() < 0.6:
                b.maxpool(**pool)
            else:
                b.avgpool(**pool, count_include_pad=bool(rng.random() < 0.5))
    if rng.random() < 0.5:
        b.flatten()
    b.dense(int(rng.integers(4, 12)))
    b.relu()
    b.dense(int(rng.integers(2, 6)))
    return b.build()


def random_network(kind: str, seed: int) -> Network:
    return {"mlp": random_mlp, "cnn": random_cnn}[kind](seed)


def reference_network(seed: int = 0, size: int = 64) -> Network:
    """The 64×64 reference architecture: Conv 1→8 k3 s2 p1, ReLU, Conv 8→16 k3 s2 p1, ReLU, MaxPool 4, Linear 256→10."""
    rng = np.random.default_rng(seed)
    b = NetBuilder((1, size, size), rng, input_name="input")
    b.conv(8, (3, 3), (2, 2), (1, 1, 1, 1))
    b.relu()
    b.conv(16, (3, 3), (2, 2), (1, 1, 1, 1))
    b.relu()
    b.maxpool((4, 4), (4, 4))
    b.flatten()
    b.dense(10)
    return b.build()


def random_box(net: Network, seed: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """A box around a random centre with per-coordinate radii in ``[0, radius]`` (some exactly 0)."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-1, 1, net.sample_shape)
    rad = rng.uniform(0, radius, net.sample_shape) * (rng.random(net.sample_shape) < 0.9)
    return centre - rad, centre + rad


def sample_box(lower: np.ndarray, upper: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` points of the box (batch axis first): the centre, random corners, and uniform interior points."""
    rng = np.random.default_rng(seed)
    n_corner = n // 2
    corners = np.where(rng.random((n_corner, *lower.shape)) < 0.5, lower, upper)
    inside = rng.uniform(lower, upper, (n - n_corner - 3, *lower.shape))
    return np.concatenate([((lower + upper) / 2)[None], lower[None], upper[None], corners, inside])
