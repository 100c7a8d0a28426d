"""Independent float64 NumPy versions of the objectives, written from the papers' formulas.

They build the full matrices and loop where that is clearer, sharing no code with jaxalign.
"""

import numpy as np


def _log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def clip_loss(image, text, logit_scale, label_smoothing=0.0):
    image, text = np.float64(image), np.float64(text)
    n = len(image)
    logits = np.exp(min(logit_scale, np.log(100.0))) * image @ text.T
    target = (1 - label_smoothing) * np.eye(n) + label_smoothing / n
    i2t = -(target * _log_softmax(logits)).sum(axis=1).mean()
    t2i = -(target * _log_softmax(logits.T)).sum(axis=1).mean()
    return (i2t + t2i) / 2


def siglip_loss(image, text, logit_scale, logit_bias):
    image, text = np.float64(image), np.float64(text)
    n = len(image)
    logits = np.exp(min(logit_scale, np.log(100.0))) * image @ text.T + logit_bias
    labels = 2 * np.eye(n) - 1
    return np.logaddexp(0.0, -labels * logits).sum() / n  # -log sigmoid(z) = log(1 + e^-z)


def nt_xent(z1, z2, temperature):
    views = np.concatenate([np.float64(z1), np.float64(z2)])
    n = len(z1)
    sims = views @ views.T / temperature
    losses = []
    for k in range(2 * n):
        positive = (k + n) % (2 * n)
        others = np.delete(sims[k], k)
        log_norm = np.log(np.exp(others - others.max()).sum()) + others.max()
        losses.append(log_norm - sims[k, positive])
    return np.mean(losses)


def domain_adversarial_loss(source_logits, target_logits):
    s = np.float64(source_logits).ravel()
    t = np.float64(target_logits).ravel()
    sigmoid = lambda x: 1 / (1 + np.exp(-x))
    bce = np.concatenate([-np.log(sigmoid(s)), -np.log(1 - sigmoid(t))])
    correct = np.concatenate([s > 0, t <= 0])
    return bce.mean(), correct.mean()


def mmd(source, target, kernel_mults=(0.125, 0.25, 0.5, 1.0, 2.0), estimator="unbiased"):
    x, y = np.float64(source), np.float64(target)
    pooled = np.concatenate([x, y])
    n_all = len(pooled)
    sq = ((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(-1)
    base = sq.sum() / (n_all * (n_all - 1))  # the diagonal is zero

    def k(a, b):
        d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sum(np.exp(-d / (2 * m * base)) for m in kernel_mults)

    m = len(x)
    if estimator == "linear":
        total = 0.0
        for i in range(m // 2):
            s1, s2, t1, t2 = x[2 * i : 2 * i + 1], x[2 * i + 1 : 2 * i + 2], y[2 * i], y[2 * i + 1]
            t1, t2 = t1[None], t2[None]
            total += (k(s1, s2) + k(t1, t2) - k(s1, t2) - k(s2, t1)).item()
        return total / (m // 2)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    if estimator == "biased":
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    off_diagonal = lambda a: (a.sum() - np.trace(a)) / (len(a) * (len(a) - 1))
    return off_diagonal(kxx) + off_diagonal(kyy) - 2 * kxy.mean()


def coral(source, target):
    cs = np.cov(np.float64(source), rowvar=False)
    ct = np.cov(np.float64(target), rowvar=False)
    d = cs.shape[0]
    return ((cs - ct) ** 2).sum() / (4 * d * d)


def masked_mean_squared_error(prediction, target, weights=None):
    """Loops over the batch's positions: the mean over the weighted positions of each
    position's mean squared error."""
    prediction, target = np.float64(prediction), np.float64(target)
    if weights is None:
        weights = np.ones(prediction.shape[:2])
    total = count = 0.0
    for b in range(prediction.shape[0]):
        for i in range(prediction.shape[1]):
            total += weights[b, i] * np.mean((prediction[b, i] - target[b, i]) ** 2)
            count += weights[b, i]
    return total / count


def masked_token_cross_entropy(logits, labels, weights):
    """The mean of -log softmax(logits)[label] over the chosen tokens, and their accuracy."""
    logits = np.float64(logits)
    log_probs = _log_softmax(logits.reshape(-1, logits.shape[-1])).reshape(logits.shape)
    chosen = np.argwhere(weights > 0)
    ce = [-log_probs[b, t, labels[b, t]] for b, t in chosen]
    hits = [logits[b, t].argmax() == labels[b, t] for b, t in chosen]
    return float(np.mean(ce)), float(np.mean(hits))
