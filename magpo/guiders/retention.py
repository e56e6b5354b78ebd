"""Multi-scale retention over an episode (RetNet, Sun et al. 2023; as Sable, Mahjoub et al. 2024,
runs it over the agents of each step and over time): the memory of the transformer guider with
``memory="retention"``.

Tokens are the agents of every step. Token ``(t, i)`` reads, per head ``h`` with decay
``gamma_h``, every token ``(s, j)`` of the same episode with ``s <= t`` (all agents of a step
see each other, as in Sable's encoder) weighted by ``gamma_h ** (t - s)``:

    o[t, i] = sum_{s <= t, same episode} gamma ** (t - s) * q[t, i] . k[s, j] v[s, j]

Both forms compute it:

* recurrent (collection, one step): a state per environment and head, ``S[t] = gamma * S[t - 1]
  + sum_j k[t, j]^T v[t, j]``, zeroed at an episode start, and ``o[t, i] = q[t, i] S[t]``;
* chunkwise (training, whole rollouts ``[*, T, n, E]``): within a chunk of ``chunk`` steps the
  tokens read each other through the decay matrix (zero across an episode start), and the state
  entering the chunk (the stored one for the first) reaches each step until the chunk's first
  episode start, decayed by ``gamma ** (t - t0 + 1)``. ``chunk=None``: the whole rollout at once.

The output is gated as in RetNet: ``W_o(silu(W_g x) * GroupNorm_heads(o))``. Decays are Sable's:
``gamma_h = decay_scaling * (1 - exp(linspace(log 1/32, log 1/512, heads)))``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def retention_decays(heads: int, decay_scaling: float) -> torch.Tensor:
    """Sable's per-head decays ``[heads]``, each in (0, 1): slower for later heads."""
    base = 1 - torch.exp(torch.linspace(math.log(1 / 32), math.log(1 / 512), heads, dtype=torch.float64))
    return (decay_scaling * base).float()


class MultiScaleRetention(nn.Module):
    """Retention over ``(step, agent)`` tokens with one decay per head (module docstring).

    Args:
        embed_dim: token size ``E``, divisible by ``heads``.
        heads: retention heads; the state per environment is ``[heads, E / heads, E / heads]``.
        decay_scaling: Sable's ``decay_scaling_factor`` in (0, 1].
        chunk: steps per chunk in training (dividing the rollout length), or None (the whole
            rollout in parallel).
    """

    def __init__(self, embed_dim: int, heads: int, decay_scaling: float = 0.8, chunk: int | None = None):
        super().__init__()
        if embed_dim % heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by heads ({heads})")
        if not 0 < decay_scaling <= 1:
            raise ValueError(f"decay_scaling must be in (0, 1], got {decay_scaling}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1 or None, got {chunk}")
        self.heads, self.head_dim, self.chunk = heads, embed_dim // heads, chunk
        self.register_buffer("log_decay", retention_decays(heads, decay_scaling).log(), persistent=False)
        self.query, self.key, self.value, self.gate, self.out = (nn.Linear(embed_dim, embed_dim, bias=False) for _ in range(5))
        self.norm = nn.GroupNorm(heads, embed_dim)

    @property
    def state_shape(self) -> tuple[int, int, int]:
        return self.heads, self.head_dim, self.head_dim

    def _qkv(self, x: torch.Tensor):
        """``[R, L, E]`` -> three ``[R, heads, L, d]`` (keys scaled by ``d ** -0.5``)."""
        split = lambda t: t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # noqa: E731
        return split(self.query(x)), split(self.key(x)) * self.head_dim ** -0.5, split(self.value(x))

    def _output(self, x: torch.Tensor, retained: torch.Tensor) -> torch.Tensor:
        """Gate and project ``retained`` ``[R, heads, L, d]`` read by the tokens ``x`` ``[R, L, E]``."""
        rows, length = x.shape[:2]
        normed = self.norm(retained.transpose(1, 2).reshape(rows * length, -1)).reshape(rows, length, -1)
        return self.out(nn.functional.silu(self.gate(x)) * normed)

    def step(self, x: torch.Tensor, state: torch.Tensor, fresh: torch.Tensor):
        """One step, recurrent form. ``x`` ``[R, n, E]`` (the step's agents), ``state`` ``[R, heads,
        d, d]`` entering it, ``fresh`` ``[R]`` (an episode starts here: the state is dropped).
        Returns ``(y [R, n, E], state after the step)``."""
        q, k, v = self._qkv(x)
        decay = self.log_decay.exp().view(1, -1, 1, 1)
        state = torch.where(fresh.view(-1, 1, 1, 1), 0.0, state) * decay + k.transpose(-1, -2) @ v
        return self._output(x, q @ state), state

    def sequence(self, x: torch.Tensor, state: torch.Tensor, fresh: torch.Tensor):
        """Whole rollouts, chunkwise form. ``x`` ``[R, T, n, E]``, ``state`` ``[R, heads, d, d]``
        entering step 0, ``fresh`` ``[R, T]``. Returns ``(y [R, T, n, E], state after step T - 1)``;
        equal to :meth:`step` applied T times, up to rounding."""
        rows, steps, n, dim = x.shape
        chunk = steps if self.chunk is None else self.chunk
        if steps % chunk:
            raise ValueError(f"the retention chunk ({chunk} steps) must divide the rollout length ({steps} steps)")
        log_decay = self.log_decay.view(1, -1, 1, 1)
        outputs = []
        for start in range(0, steps, chunk):
            xc, fc = x[:, start:start + chunk], fresh[:, start:start + chunk]
            tokens = xc.reshape(rows, chunk * n, dim)
            q, k, v = self._qkv(tokens)
            # episode index of each step within the chunk: two steps share an episode when no
            # episode starts after the earlier one, up to the later one
            episode = fc.long().cumsum(1)  # [R, C]
            time = torch.arange(chunk, device=x.device)
            lag = (time[:, None] - time[None, :]).clamp(min=0)  # [C, C]
            visible = (time[:, None] >= time[None, :]) & (episode[:, :, None] == episode[:, None, :])  # [R, C, C]
            decay = torch.where(visible[:, None], (lag * log_decay).exp(), 0.0)  # [R, heads, C, C]
            decay = decay.repeat_interleave(n, -1).repeat_interleave(n, -2)  # per token
            inner = ((q @ k.transpose(-1, -2)) * decay) @ v
            # the state entering the chunk reaches each step until the chunk's first episode start
            carried = ((time + 1) * log_decay.view(1, -1, 1)).exp() * (episode == 0)[:, None]  # [R, heads, C]
            cross = (q @ state) * carried.repeat_interleave(n, -1)[..., None]
            outputs.append(self._output(tokens, inner + cross).reshape(rows, chunk, n, dim))
            # the state after the chunk: the last episode's tokens, decayed to the chunk's end
            last = (episode == episode[:, -1:])  # [R, C]
            weight = torch.where(last[:, None], ((chunk - 1 - time) * log_decay.view(1, -1, 1)).exp(), 0.0)
            weight = weight.repeat_interleave(n, -1)[..., None]  # [R, heads, C n, 1]
            state = torch.where((episode[:, -1] == 0).view(-1, 1, 1, 1), state * (chunk * log_decay).exp(), 0.0) \
                + k.transpose(-1, -2) @ (v * weight)
        return torch.cat(outputs, 1), state
