"""Language-modelling losses: causal LM pre-training (`clm_loss`) and completion-only SFT (`sft_loss`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses._utils import f32, masked_mean, stop
from jaxalign.losses.logprobs import TokenStats, token_stats

Array = jax.Array


def nll_loss(stats: TokenStats, mask: Array | None = None, z_loss: float = 0.0) -> tuple[Array, dict]:
    """`clm_loss` from per-token results instead of logits (`logprobs.token_stats`, or
    `logprobs.chunked_token_stats`, which never holds the [B, T, V] logits):

        L = -sum m log p(y) / max(sum m, 1)  +  z_loss * sum m (log Z)^2 / max(sum m, 1)

    Args:
      stats: TokenStats (logprobs, lse, is_argmax), each [B, T].
      mask: [B, T] 0/1 or None (every token counts).
      z_loss: coefficient of the z-loss.

    Returns:
      (loss, metrics) as `clm_loss`.
    """
    lp, lse = stats.logprobs, stats.lse
    mask = jnp.ones(lp.shape, jnp.float32) if mask is None else f32(mask)
    nll = -masked_mean(lp, mask)
    z_term = z_loss * masked_mean(jnp.square(lse), mask)
    correct = f32(stats.is_argmax)
    metrics = {
        "nll": nll,
        "perplexity": jnp.exp(nll),
        "mean_token_accuracy": masked_mean(correct, mask),
        "z_loss": z_term,
        "num_tokens": jnp.sum(mask),
    }
    return nll + z_term, stop(metrics)


def clm_loss(
    logits: Array, targets: Array, mask: Array | None = None, z_loss: float = 0.0
) -> tuple[Array, dict]:
    """Causal language-modelling loss: token-mean negative log-likelihood, plus an optional z-loss.

        L = -sum_{b,t} m_bt log p(y_bt) / max(sum m, 1)  +  z_loss * sum_{b,t} m_bt (log Z_bt)^2 / max(sum m, 1)

    with log Z = logsumexp of the logits. The z-loss (PaLM, Chowdhery et al. 2022, sec. 5) keeps the
    softmax normaliser near 1; 1e-4 is the paper's value, 0 turns it off.

    Args:
      logits: [B, T, V] float32 or bf16; `logits[b, t]` predicts `targets[b, t]`.
      targets: [B, T] int.
      mask: [B, T] 0/1 or None (every token counts). Packed rows and padding are handled by the mask.
      z_loss: coefficient of the z-loss.

    Returns:
      (loss, metrics): float32 scalar; metrics `nll`, `perplexity` (= exp(nll)), `mean_token_accuracy`
      (argmax == target over unmasked tokens), `z_loss` (the added term), `num_tokens`.
    """
    return nll_loss(token_stats(logits, targets), mask, z_loss)


def sft_loss(logits: Array, targets: Array, loss_mask: Array) -> tuple[Array, dict]:
    """Supervised fine-tuning loss: NLL of the completion tokens only, token-mean over the whole batch.

        L = -sum_{b,t} m_bt log p(y_bt) / max(sum_{b,t} m_bt, 1)

    Prompt tokens are excluded by `loss_mask` (TRL's `completion_only_loss`); every completion token
    in the batch weighs the same, as in TRL's SFTTrainer (so long answers count more than short ones).

    Args:
      logits: [B, T, V] float32 or bf16.
      targets: [B, T] int.
      loss_mask: [B, T] 0/1, 1 on completion tokens.

    Returns:
      (loss, metrics) with the same metrics as `clm_loss`.
    """
    loss, metrics = nll_loss(token_stats(logits, targets), loss_mask, 0.0)
    del metrics["z_loss"]
    return loss, metrics
