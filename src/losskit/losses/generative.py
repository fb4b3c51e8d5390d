r"""Generative-model losses: `gaussian_kl` (VAE latent KL), `bernoulli_nll` (reconstruction)."""

from keras import ops

from losskit import domains as dom
from losskit.losses._common import (
    family,
    loss_class,
    neg_log_binary,
    per_sample_sum,
    public,
    register,
)


@register(domains=dict(free_bits=dom.nonnegative))
def gaussian_kl(z_mean, z_log_var, free_bits=0.0):
    r"""KL divergence of the VAE posterior :math:`\mathcal N(\mu, \operatorname{diag}\sigma^2)`
    from the prior :math:`\mathcal N(0, I)`, summed over the latent dimensions:

    .. math:: \sum_j \max\!\left(\lambda,\ \tfrac12\left(\mu_j^2 + \sigma_j^2 - 1 -
              \log\sigma_j^2\right)\right), \qquad \log\sigma_j^2 = \texttt{z\_log\_var}_j

    with :math:`\sigma^2 - 1` computed as `expm1(z_log_var)` (accurate near 0). Each term is
    :math:`\ge 0`. `free_bits` :math:`\lambda \ge 0` (nats per dimension) stops pushing a
    dimension's KL below :math:`\lambda`, against posterior collapse; Kingma et al. clamp the
    minibatch mean per group of dimensions, here it is applied per sample and dimension (the
    per-sample contract). `free_bits=0` is the plain KL.

    Reference: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014, appendix B;
    free bits: Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
    NeurIPS 2016, appendix C.8.
    """
    z_log_var = ops.cast(z_log_var, z_mean.dtype)
    per_dim = 0.5 * (ops.square(z_mean) + ops.expm1(z_log_var) - z_log_var)
    if free_bits:
        per_dim = ops.maximum(per_dim, free_bits)
    return per_sample_sum(per_dim)


@register(domains=dict(from_logits=dom.boolean))
def bernoulli_nll(targets, predictions, from_logits=False):
    r"""Bernoulli reconstruction NLL, summed over all non-batch axes (e.g. pixels):

    .. math:: -\sum_i \left[x_i \log p_i + (1 - x_i)\log(1 - p_i)\right]

    with :math:`-\log p = \operatorname{softplus}(-z)`, :math:`-\log(1-p) =
    \operatorname{softplus}(z)` for logits (exact for any :math:`z`), or probabilities clipped to
    :math:`[\epsilon, 1-\epsilon]`. Targets in [0, 1] (binarised or grey-level images).

    Reference: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014, appendix C.1.
    Keras: `keras.losses.binary_crossentropy` times the number of features.
    """
    targets = ops.cast(targets, predictions.dtype)
    neg_log_p, neg_log_q = neg_log_binary(predictions, from_logits)
    return per_sample_sum(targets * neg_log_p + (1.0 - targets) * neg_log_q)


GaussianKL = loss_class(gaussian_kl, "GaussianKL")
BernoulliNLL = loss_class(bernoulli_nll, "BernoulliNLL")

FUNCTIONS, CLASSES = family(__name__)
__all__ = public(FUNCTIONS, CLASSES)
