"""The MAT-style transformer guider (arXiv 2205.14953), the paper's network, with optional memory
over the episode.

An encoder runs over the agents' observation embeddings (plus a state token) and a decoder's
causal self-attention over the previously chosen actions, in execution order, with
cross-attention to the encoding. Memory over the episode (``memory_key``), reset at episode starts
(``"is_init"``, TorchRL's ``InitTracker``), read out and added to the encoder's agent tokens:

* ``memory="retention"`` (the authors' Sable guider's memory): multi-scale retention over the
  agents of every step and over time (:mod:`magpo.guiders.retention`), one state per environment
  ``[heads, E / heads, E / heads]``; collection steps its recurrent form, training runs its
  chunkwise form over whole rollouts, with no loop over the steps of a chunk;
* ``memory="gru"``: a GRU cell carries each agent's state ``[E]`` from step to step.

Collection reads the state entering each step from the batch (``memory_key``, zero after a reset,
e.g. from a ``TensorDictPrimer``) and writes the next one to ``("next", *memory_key)``. Training
gets whole rollouts, ``[*B, T]`` with time last: the state stored at ``t = 0`` restarts the
memory, which is rerun over the sequence with the same resets, so the log-probs are those of
collection and the gradient flows through the whole rollout.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import nn

from magpo.guiders.common import EPISODE_START_KEY, ActionEmbedding, GuiderCore, GuiderSpec, flat_observations, positions_of
from magpo.guiders.retention import MultiScaleRetention


class TransformerGuider(GuiderCore):
    """Encoder over agents (+ state token), causal decoder over previous actions in order.

    Args:
        spec: the group's :class:`GuiderSpec` (parameters are shared by the agents; a learned
            agent-id embedding tells them apart).
        embed_dim, num_heads, num_layers: transformer size (encoder and decoder each get
            ``num_layers`` layers).
        memory_key: where the state entering each step is stored, or None for a memoryless
            guider (module docstring).
        memory: ``"gru"`` (state ``[*B, n_agents, embed_dim]``) or ``"retention"`` (state
            ``[*B, num_heads, embed_dim / num_heads, embed_dim / num_heads]``), with a memory_key.
        decay_scaling, chunk: the retention's (:class:`magpo.guiders.retention.MultiScaleRetention`).
    """

    def __init__(
        self,
        spec: GuiderSpec,
        embed_dim: int = 64,
        num_heads: int = 4,
        num_layers: int = 1,
        memory_key: NestedKey | None = None,
        memory: str = "gru",
        decay_scaling: float = 0.8,
        chunk: int | None = None,
    ):
        super().__init__(spec, memory_key)
        observation_dim, state_dim, n_agents = spec.observation_dim, spec.state_dim, spec.n_agents
        action_size, discrete, param_dim = spec.action_size, spec.discrete, spec.param_dim
        self.observation_embed = nn.Sequential(nn.LayerNorm(observation_dim), nn.Linear(observation_dim, embed_dim), nn.GELU())
        self.agent_embed = nn.Parameter(0.02 * torch.randn(n_agents, embed_dim))
        self.state_embed = (
            nn.Sequential(nn.LayerNorm(state_dim), nn.Linear(state_dim, embed_dim), nn.GELU()) if state_dim else None
        )
        layer = dict(d_model=embed_dim, nhead=num_heads, dim_feedforward=2 * embed_dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), num_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), num_layers)
        self.action_embed = ActionEmbedding(action_size, discrete, embed_dim)
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, param_dim))
        self.recurrence = None if memory_key is None else (
            MultiScaleRetention(embed_dim, num_heads, decay_scaling, chunk) if memory == "retention"
            else nn.GRUCell(embed_dim, embed_dim))
        self.register_buffer("causal_mask", nn.Transformer.generate_square_subsequent_mask(n_agents), persistent=False)

    def _recall(self, tokens: torch.Tensor, tensordict: TensorDictBase, batch_shape: torch.Size, over_time: bool):
        """``(readout [*B, n, E], state after the step)`` from the agents' tokens ``[*B, n, E]``.
        One step: from the stored state (dropped at an episode start). ``over_time``: rerun over
        the time dim (the last of ``batch_shape``) from the state stored at its first step."""
        stored = tensordict.get(self.memory_key)
        start = tensordict.get(EPISODE_START_KEY).reshape(batch_shape)
        if over_time and not batch_shape:
            raise ValueError("a guider with memory trains on rollouts: the batch needs a time dim, [*B, T]")
        if isinstance(self.recurrence, MultiScaleRetention):
            state_shape = stored.shape[len(batch_shape):]
            if not over_time:
                out, state = self.recurrence.step(tokens.reshape(-1, *tokens.shape[-2:]), stored.reshape(-1, *state_shape),
                                                  start.reshape(-1))
                return out.view_as(tokens), state.view_as(stored)
            rows = batch_shape[:-1]
            out, _ = self.recurrence.sequence(tokens.reshape(-1, *tokens.shape[-3:]),
                                              stored.select(len(rows), 0).reshape(-1, *state_shape),
                                              start.reshape(-1, batch_shape[-1]))
            return out.view_as(tokens), None

        def step(x, state, fresh):
            state = torch.where(fresh[..., None, None], 0.0, state)
            return self.recurrence(x.reshape(-1, x.shape[-1]), state.reshape(-1, state.shape[-1])).view_as(x)

        if not over_time:
            state = step(tokens, stored, start)
            return state, state
        time = len(batch_shape) - 1
        state, states = stored.select(time, 0), []
        for x, fresh in zip(tokens.unbind(time), start.unbind(time)):
            state = step(x, state, fresh)
            states.append(state)
        return torch.stack(states, time), None

    def context(self, tensordict, order, over_time=False):
        batch_shape, n = order.shape[:-1], self.n_agents
        obs = flat_observations(tensordict, self.observation_keys, len(batch_shape) + 1)
        tokens = self.observation_embed(obs) + self.agent_embed  # [*B, n, E]
        next_state = None
        if self.recurrence is not None:
            recalled, next_state = self._recall(tokens, tensordict, batch_shape, over_time)
            tokens = tokens + recalled
        encoded = tokens.reshape(-1, n, tokens.shape[-1])
        if self.state_embed is not None:
            state = tensordict.get(self.state_key).flatten(len(batch_shape)).float().reshape(len(encoded), -1)
            encoded = torch.cat([self.state_embed(state)[:, None], encoded], dim=1)
        encoded = self.encoder(encoded)
        flat_order = order.reshape(-1, n)
        agents = encoded[:, -n:]
        step_agents = agents.gather(1, flat_order[..., None].expand(-1, -1, agents.shape[-1]))  # [B, n, E], in order
        return encoded, step_agents, flat_order, positions_of(flat_order), batch_shape, next_state

    def next_memory(self, context):
        if context[-1] is None:  # memoryless, or a training context (over time)
            return super().next_memory(context)
        return context[-1]

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, E]`` -> ``[B, heads, L, E / heads]``, the layout of the attention below."""
        heads = self.decoder.layers[0].self_attn.num_heads
        return x.unflatten(-1, (heads, -1)).transpose(1, 2)

    def start_decoding(self, context):
        # The cross-attention keys and values of the encoding, per decoder layer: once per env step.
        encoded, dim = context[0], context[0].shape[-1]
        memory = []
        for layer in self.decoder.layers:
            weight, bias = layer.multihead_attn.in_proj_weight, layer.multihead_attn.in_proj_bias
            memory.append(tuple(self._heads(nn.functional.linear(encoded, weight[i * dim:(i + 1) * dim], bias[i * dim:(i + 1) * dim]))
                                for i in (1, 2)))
        return memory, [None] * len(self.decoder.layers)

    def decode_next(self, context, state, order, step, action):
        # Incremental decoding: only the token of the agent acting at `step` runs through the
        # decoder; its self-attention reads the keys and values cached at the earlier steps. Each
        # norm-first layer as nn.TransformerDecoderLayer computes it (dropout is 0): the same
        # values as decode()'s row for this agent up to float rounding, at a cost that does not
        # grow with the agents still to act.
        encoded, step_agents, flat_order, _, batch_shape, _ = context
        memory, past = state
        rows, dim = len(flat_order), encoded.shape[-1]
        if step == 0:
            previous = self.action_embed.start.expand(rows, -1)
        else:
            agent_actions = action.reshape(rows, self.n_agents, *action.shape[len(batch_shape) + 1:])
            previous = self.action_embed(agent_actions[torch.arange(rows, device=action.device), flat_order[:, step - 1]])
        x = (previous + step_agents[:, step])[:, None]  # [B, 1, E]
        attend = nn.functional.scaled_dot_product_attention
        cached = []
        for layer, (memory_keys, memory_values), earlier in zip(self.decoder.layers, memory, past):
            query, key, value = (self._heads(t) for t in nn.functional.linear(
                layer.norm1(x), layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias).chunk(3, -1))
            if earlier is not None:
                key, value = torch.cat([earlier[0], key], 2), torch.cat([earlier[1], value], 2)
            cached.append((key, value))
            x = x + layer.self_attn.out_proj(attend(query, key, value).transpose(1, 2).flatten(2))
            cross = layer.multihead_attn
            query = self._heads(nn.functional.linear(layer.norm2(x), cross.in_proj_weight[:dim], cross.in_proj_bias[:dim]))
            x = x + cross.out_proj(attend(query, memory_keys, memory_values).transpose(1, 2).flatten(2))
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        return self.head(x[:, 0]).reshape(*batch_shape, -1), (memory, cached)

    def decode(self, context, action):
        encoded, step_agents, flat_order, positions, batch_shape, _ = context
        n = self.n_agents
        action_rows = action.reshape(len(flat_order), n, *action.shape[len(batch_shape) + 1 :])
        taken = self.action_embed(action_rows)  # [B, n, E], agent-indexed
        taken_in_order = taken.gather(1, flat_order[..., None].expand(-1, -1, taken.shape[-1]))
        # step k sees the actions of steps < k: shift right, a start token at step 0
        previous = torch.cat([self.action_embed.start.expand(len(taken), 1, -1), taken_in_order[:, :-1]], dim=1)
        decoded = self.decoder(previous + step_agents, encoded, tgt_mask=self.causal_mask, tgt_is_causal=True)
        out_in_order = self.head(decoded)
        out = out_in_order.gather(1, positions[..., None].expand(-1, -1, out_in_order.shape[-1]))
        return out.reshape(*batch_shape, n, -1)

