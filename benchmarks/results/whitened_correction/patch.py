"""Start-up patch: the corrected guiders' loc correction in units of the base's own scale
(loc_g = loc_base + scale_base * c_loc); the scale half stays as in the code (additive in the
softplus's input, close to multiplicative at small scales). Categorical heads untouched."""
import torch
import magpo.guiders as G
from tensordict.nn import NormalParamExtractor

_extract = NormalParamExtractor(scale_mapping="biased_softplus_1.0")
orig_decode, orig_next = G._CorrectedGuider.decode, G._CorrectedGuider.decode_next

def _whiten(self, out, base):
    if self.action_embed.discrete:
        return out
    d = out.shape[-1] // 2
    unit = _extract(base)[1].detach()
    delta = out - base
    return base + torch.cat([delta[..., :d] * unit, delta[..., d:]], -1)

def decode(self, context, action):
    return _whiten(self, orig_decode(self, context, action), context[0])

def decode_next(self, context, state, order, step, action):
    row, new_state = orig_next(self, context, state, order, step, action)
    base = context[0]
    agent = order[..., step, None, None]
    base_row = base.gather(-2, agent.expand(*agent.shape[:-1], base.shape[-1])).squeeze(-2)
    return _whiten(self, row, base_row), new_state

G._CorrectedGuider.decode, G._CorrectedGuider.decode_next = decode, decode_next
