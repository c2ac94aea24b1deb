"""FeatUp's training formulas re-derived for the tests, independently of featup_plugin's implementation (written
from FeatUp's code's formulas: explicit loops or plain torch ops, float64, small tensors). Nothing here calls the
code under test."""

import math

import torch
import torch.nn.functional as F


def pad_crop_flip(x, pad, y, x0, flip):
    """A view without zoom: reflect-pad every side by ``pad``, crop the original size at ``(y, x0)``, mirror."""
    h, w = x.shape[-2:]
    out = F.pad(x, [pad] * 4, mode='reflect')[:, :, y : y + h, x0 : x0 + w]
    return out.flip(-1) if flip else out


def gaussian_blur_5x5(x):
    """kornia's ``gaussian_blur2d(x, 5, (1, 1))``: a normalised 5x5 Gaussian (sigma 1), reflect border."""
    t = torch.arange(5, dtype=x.dtype) - 2
    g = torch.exp(-(t**2) / 2)
    g = g / g.sum()
    k2 = g[:, None] * g[None, :]
    c = x.shape[1]
    return F.conv2d(F.pad(x, [2, 2, 2, 2], mode='reflect'), k2.expand(c, 1, 5, 5), groups=c)


def attention_downsample(x, kernel, out_size, lin_w, lin_b, w, b, blur=True):
    """FeatUp's ``AttentionDownsampler`` in eval mode: windows of ``kernel`` at stride ``(H - k) // (h - 1)``,
    logits ``Linear(patch feature) * w + b`` per tap, softmax over the window, weighted sum of the (blurred)
    features. Loops over the windows."""
    inputs = gaussian_blur_5x5(x) if blur else x
    bsz, c, hh, ww = x.shape
    h, wd = out_size
    sy = (hh - kernel) // (h - 1) if h > 1 else 1
    sx = (ww - kernel) // (wd - 1) if wd > 1 else 1
    out = torch.zeros(bsz, c, h, wd, dtype=x.dtype)
    for i in range(h):
        for j in range(wd):
            patch = inputs[:, :, i * sy : i * sy + kernel, j * sx : j * sx + kernel].reshape(bsz, c, -1)  # [B, C, k2]
            logits = torch.einsum('bcp,c->bp', patch, lin_w) + lin_b
            att = torch.softmax(logits * w.reshape(1, -1) + b.reshape(1, -1), dim=-1)
            out[:, :, i, j] = torch.einsum('bcp,bp->bc', patch, att)
    return out


def blur_downsample(x, kernel_params, out_size):
    """FeatUp's ``SimpleDownsampler``: one ``|k| / sum |k|`` kernel, stride ``(H - k) // (h - 1)``."""
    k = kernel_params.abs() / kernel_params.abs().sum()
    ks = k.shape[0]
    bsz, c, hh, ww = x.shape
    h, wd = out_size
    s = (hh - ks) // (h - 1)
    out = torch.zeros(bsz, c, h, wd, dtype=x.dtype)
    for i in range(h):
        for j in range(wd):
            out[:, :, i, j] = (x[:, :, i * s : i * s + ks, j * s : j * s + ks] * k).sum((-1, -2))
    return out


def scale(feats, weight, bias, min_scale=1e-4):
    """FeatUp's ``ScaleNet`` / ``get_scale``: ``exp(conv1x1 + 0.1).clamp_min(1e-4)``."""
    return (
        torch.exp(torch.einsum('bchw,c->bhw', feats, weight.flatten()) + bias + 0.1).unsqueeze(1).clamp_min(min_scale)
    )


def uncertainty(pred, target, s):
    """``mean(1 / (2 s^2) * (pred - target)^2 + log s)`` over every element (``s`` broadcast over channels)."""
    return ((1 / (2 * s**2)) * (pred - target) ** 2 + s.log().expand_as(pred)).mean()


def magnitude(x):
    return x.square().sum(1, keepdim=True).sqrt()


def total_variation(img):
    """FeatUp's ``total_variation``: sums of squared vertical and horizontal differences over ``B*C*H*W``."""
    b, c, h, w = img.shape
    tot = 0.0
    for bi in range(b):
        for ci in range(c):
            for i in range(h):
                for j in range(w):
                    if i + 1 < h:
                        tot += float(img[bi, ci, i + 1, j] - img[bi, ci, i, j]) ** 2
                    if j + 1 < w:
                        tot += float(img[bi, ci, i, j + 1] - img[bi, ci, i, j]) ** 2
    return tot / (b * c * h * w)


def crf(guidance, feats, ys, xs, alpha=0.1, beta=0.15, gamma=0.005, w1=10.0, w2=3.0, shift=0.0):
    """FeatUp's ``SampledCRFLoss`` on the given pixels, one pair at a time."""
    b = feats.shape[0]
    h, w = feats.shape[-2:]
    n = len(ys)
    tot = 0.0
    for bi in range(b):
        for i in range(n):
            for j in range(n):
                dp = (ys[i] / h - ys[j] / h) ** 2 + (xs[i] / w - xs[j] / w) ** 2
                dg = float((guidance[bi, :, ys[i], xs[i]] - guidance[bi, :, ys[j], xs[j]]).square().sum())
                df = float((feats[bi, :, ys[i], xs[i]] - feats[bi, :, ys[j], xs[j]]).square().sum())
                k = w1 * math.exp(-dp / (2 * alpha) - dg / (2 * beta)) + w2 * math.exp(-dp / (2 * gamma)) - shift
                tot += df * k
    return tot / (b * n * n)


def entropy(kernel):
    """FeatUp's ``entropy``: ``-sum k log(max(k, 1e-7))``."""
    return -float((kernel * kernel.clamp_min(1e-7).log()).sum())
