"""The retention memory (magpo.guiders.retention): the chunkwise training form equals the recurrent
collection form, an episode start cuts the memory exactly, the gradient of an episode's last step
reaches its first, Sable's decays, and bad sizes refused."""

from __future__ import annotations

import pytest
import torch

from magpo.guiders.retention import MultiScaleRetention, retention_decays

ROWS, STEPS, AGENTS, WIDTH, HEADS = 5, 12, 3, 16, 2


def inputs(seed: int = 0, reset_rate: float = 0.2):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(ROWS, STEPS, AGENTS, WIDTH, generator=generator, dtype=torch.float64)
    fresh = torch.rand(ROWS, STEPS, generator=generator) < reset_rate
    fresh[0, 0] = True  # a rollout that starts an episode; the others start inside one
    fresh[1] = False  # one with no episode start at all: the stored state reaches every step
    state = torch.randn(ROWS, HEADS, WIDTH // HEADS, WIDTH // HEADS, generator=generator, dtype=torch.float64)
    return x, fresh, state


def recurrent(module, x, fresh, state):
    outputs = []
    for t in range(x.shape[1]):
        y, state = module.step(x[:, t], state, fresh[:, t])
        outputs.append(y)
    return torch.stack(outputs, 1), state


@pytest.mark.parametrize("chunk", [None, 6, 4, 3, 1])
def test_the_chunkwise_form_is_the_recurrent_form(chunk):
    torch.manual_seed(0)
    module = MultiScaleRetention(WIDTH, HEADS, decay_scaling=0.8, chunk=chunk).double()
    x, fresh, state = inputs()
    expected, expected_state = recurrent(module, x, fresh, state)
    out, final = module.sequence(x, state, fresh)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(final, expected_state, rtol=0, atol=1e-12)


def test_the_chunkwise_form_in_float32_within_1e_5():
    torch.manual_seed(0)
    module = MultiScaleRetention(WIDTH, HEADS, chunk=4)
    x, fresh, state = (t.float() if t.is_floating_point() else t for t in inputs())
    expected, _ = recurrent(module, x, fresh, state)
    torch.testing.assert_close(module.sequence(x, state, fresh)[0], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk", [None, 4])
def test_an_episode_start_cuts_the_memory_exactly(chunk):
    torch.manual_seed(0)
    module = MultiScaleRetention(WIDTH, HEADS, chunk=chunk).double()
    x, _, state = inputs()
    fresh = torch.zeros(ROWS, STEPS, dtype=torch.bool)
    fresh[:, 7] = True
    changed = x.clone()
    changed[:, :7] = torch.randn_like(changed[:, :7])  # another past, and another stored state
    before, _ = module.sequence(x, state, fresh)
    after, _ = module.sequence(changed, torch.randn_like(state), fresh)
    assert torch.equal(before[:, 7:], after[:, 7:])
    assert not torch.equal(before[:, :7], after[:, :7])


@pytest.mark.parametrize("chunk", [None, 3])
def test_the_gradient_of_the_last_step_reaches_the_first_step_of_its_episode_and_no_further(chunk):
    torch.manual_seed(0)
    module = MultiScaleRetention(WIDTH, HEADS, decay_scaling=1.0, chunk=chunk).double()
    x, _, state = inputs()
    x.requires_grad_(True)
    fresh = torch.zeros(ROWS, STEPS, dtype=torch.bool)
    fresh[:, 2] = True  # the last step's episode starts at step 2
    out, _ = module.sequence(x, state, fresh)
    (grad,) = torch.autograd.grad(out[:, -1].sum(), [x])
    assert (grad[:, 2].abs().sum(-1) > 0).all()  # every agent of the episode's first step
    assert torch.equal(grad[:, :2], torch.zeros_like(grad[:, :2]))


def test_sables_decays():
    decays = retention_decays(4, 0.8)
    assert decays[0].item() == pytest.approx(0.8 * (1 - 1 / 32)) and decays[-1].item() == pytest.approx(0.8 * (1 - 1 / 512))
    assert ((decays > 0) & (decays < 1)).all() and (decays.diff() > 0).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(embed_dim=10, heads=4), "divisible"), (dict(decay_scaling=0.0), "decay_scaling"),
    (dict(decay_scaling=1.5), "decay_scaling"), (dict(chunk=0), "chunk"),
])
def test_bad_sizes_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiScaleRetention(**{"embed_dim": WIDTH, "heads": HEADS, **kwargs})


def test_a_chunk_that_does_not_divide_the_rollout_is_refused():
    module = MultiScaleRetention(WIDTH, HEADS, chunk=5).double()
    x, fresh, state = inputs()
    with pytest.raises(ValueError, match=r"chunk \(5 steps\) must divide the rollout length \(12 steps\)"):
        module.sequence(x, state, fresh)
