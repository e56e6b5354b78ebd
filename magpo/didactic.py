"""The paper's didactic game (Section 3), trained with ``MAGPOLoss``: MAGPO vs CTDS.

Three agents each pick an integer in 0..4; the team succeeds (reward 1) only when the sum is
10. The guider is a tabular auto-regressive policy (agent i sees the actions of agents < i),
the learners are independent per-agent tables. Success probabilities are exact (enumerated
over the 125 joint actions), so the printed numbers carry no sampling noise.

``train(options, iterations, seed)`` runs one training and returns the exact success
of the guider and of the learner after every iteration; ``python -m benchmarl_ext.demo`` is
the command around it.
"""

from __future__ import annotations

import itertools

import torch
from tensordict import TensorDict
from tensordict.nn import ProbabilisticTensorDictModule, ProbabilisticTensorDictSequential, TensorDictModule
from torch import nn

from magpo.losses import LossOptions, MAGPOLoss

AGENTS, ACTIONS, TARGET = 3, 5, 10
JOINT = torch.tensor(list(itertools.product(range(ACTIONS), repeat=AGENTS)))  # [125, 3]
SUCCESS = JOINT.sum(-1) == TARGET


class AutoRegressiveTable(nn.Module):
    """Tabular guider: logits of agent i indexed by the actions of agents 0..i-1.

    ``forward(action [B, 3]) -> logits [B, 3, 5]`` is the teacher-forced pass used by the loss.
    """

    def __init__(self):
        super().__init__()
        self.tables = nn.ParameterList(
            nn.Parameter(torch.zeros(*(ACTIONS,) * i, ACTIONS)) for i in range(AGENTS)
        )

    def forward(self, action: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._logits(i, action) for i in range(AGENTS)], 1)

    def _logits(self, agent: int, action: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 5]`` of ``agent`` given the actions of the agents before it."""
        return self.tables[agent][tuple(action[:, :agent].T)].expand(len(action), ACTIONS)

    @torch.no_grad()
    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Joint actions ``[batch, 3]``, agent after agent."""
        action = torch.zeros(batch, AGENTS, dtype=torch.long)
        for i in range(AGENTS):
            probs = self._logits(i, action).softmax(-1)
            action[:, i] = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        return action


def _policy(module: TensorDictModule) -> ProbabilisticTensorDictSequential:
    head = ProbabilisticTensorDictModule(
        in_keys={"logits": ("agents", "logits")},
        out_keys=[("agents", "action")],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
        log_prob_key=("agents", "log_prob"),
    )
    return ProbabilisticTensorDictSequential(module, head)


def success_probability(logits: torch.Tensor) -> float:
    """Exact P(sum == 10) for per-agent logits ``[125, 3, 5]`` evaluated at every joint action."""
    log_probs = logits.log_softmax(-1).gather(-1, JOINT[..., None]).squeeze(-1).sum(-1)
    return log_probs[SUCCESS].exp().sum().item()


def train(
    options: LossOptions,
    iterations: int,
    seed: int,
    *,
    batch: int = 256,
    epochs: int = 4,
    lr: float = 0.05,
    entropy_coeff: float = 0.01,
) -> list[tuple[float, float]]:
    """Train one run; returns the exact success probability of (guider, learner) per iteration."""
    for name, value in (("iterations", iterations), ("batch", batch), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    table = AutoRegressiveTable()
    guider = _policy(TensorDictModule(table, [("agents", "action")], [("agents", "logits")]))
    learner = _policy(TensorDictModule(nn.Linear(AGENTS, ACTIONS, bias=False), [("agents", "observation")], [("agents", "logits")]))
    critic = TensorDictModule(nn.Linear(AGENTS, 1), [("agents", "observation")], [("agents", "state_value")])
    loss = MAGPOLoss(guider, learner, critic, options, entropy_coeff=entropy_coeff)
    loss.set_keys(
        action=("agents", "action"),
        sample_log_prob=("agents", "log_prob"),
        advantage=("agents", "advantage"),
        value_target=("agents", "value_target"),
        value=("agents", "state_value"),
    )
    optimizers = {
        key: torch.optim.Adam(module.parameters(), lr=lr)
        for key, module in (("guider", guider), ("learner", learner), ("critic", critic))
    }
    agent_ids = torch.eye(AGENTS).expand(batch, AGENTS, AGENTS)
    history = []
    for _ in range(iterations):
        action = table.sample(batch, generator)
        data = TensorDict(
            {"agents": TensorDict({"action": action, "observation": agent_ids}, [batch, AGENTS])}, [batch]
        )
        with torch.no_grad():
            data["agents", "log_prob"] = guider.get_dist(data).log_prob(action)
            reward = (action.sum(-1) == TARGET).float()[:, None, None].expand(batch, AGENTS, 1)
            # one-step game: the return is the reward, the advantage is r - V(s)
            data["agents", "value_target"] = reward
            data["agents", "advantage"] = reward - critic(data.clone())["agents", "state_value"]
        for _ in range(epochs):
            out = loss(data)
            for key, total in (
                ("guider", out["loss_guider"] + out["loss_entropy"]),
                ("learner", out["loss_learner"]),
                ("critic", out["loss_critic"]),
            ):
                optimizers[key].zero_grad()
                total.backward()
                optimizers[key].step()
        with torch.no_grad():
            every_joint = TensorDict(
                {"agents": TensorDict({"action": JOINT, "observation": agent_ids[:1].expand(len(JOINT), -1, -1)}, [len(JOINT), AGENTS])},
                [len(JOINT)],
            )
            logits = ("agents", "logits")
            history.append(
                (
                    success_probability(guider.get_dist_params(every_joint.clone())[logits]),
                    success_probability(learner.get_dist_params(every_joint.clone())[logits]),
                )
            )
    return history


def stochastic_teacher_logits(action: torch.Tensor) -> torch.Tensor:
    """The paper's non-factorizable teacher (Section 3), teacher-forced on joint actions ``[B, 3]``:
    agent 1 picks 3 or 4 at random, agent 2 picks 3, agent 3 picks 7 minus agent 1's action.
    Returns logits ``[B, 3, 5]`` (-inf outside each agent's support)."""
    logits = torch.full((len(action), AGENTS, ACTIONS), -torch.inf)
    logits[:, 0, 3:5] = 0.0
    logits[:, 1, 3] = 0.0
    # 7 - a1 for a1 in {3, 4}; other a1 have probability 0 under the teacher (clamped to stay valid)
    logits[torch.arange(len(action)), 2, (7 - action[:, 0]).clamp(0, ACTIONS - 1)] = 0.0
    return logits


def distill_stochastic_teacher(iterations: int = 300, seed: int = 0, batch: int = 256, lr: float = 0.1) -> float:
    """CTDS's distillation step alone: independent students imitate the stochastic teacher by
    KL(teacher || student) on the teacher's joint actions (the learner side of the loss contract
    with aux_coef = 0). Returns the students' exact success probability; the best any factorized
    imitation of this teacher can do is 0.5."""
    from magpo_kernels import magpo_loss_categorical

    generator = torch.Generator().manual_seed(seed)
    students = nn.Parameter(torch.zeros(AGENTS, ACTIONS))
    optimizer = torch.optim.Adam([students], lr=lr)
    for _ in range(iterations):
        first = 3 + torch.randint(2, (batch,), generator=generator)
        action = torch.stack([first, torch.full_like(first, 3), 7 - first], dim=-1)
        teacher = stochastic_teacher_logits(action)
        behavior = teacher.log_softmax(-1).gather(-1, action[..., None]).squeeze(-1)
        terms = magpo_loss_categorical(
            teacher, students.expand(batch, -1, -1), action, behavior, torch.zeros(batch, AGENTS),
            LossOptions(delta=float("inf"), aux_coef=0.0),
        )
        optimizer.zero_grad()
        terms.loss_learner.backward()
        optimizer.step()
    with torch.no_grad():
        return success_probability(students.expand(len(JOINT), -1, -1))
