"""The learned reward model (R1 stage 4): padding, the Bradley-Terry loss with literal numbers, and a fit that
separates chosen from rejected on held-out pairs."""
import math
import random

import pytest
import torch

from model import PRESETS, ModelConfig, Transformer
from reward_model import RewardModel, bradley_terry_loss, pair_accuracy, right_pad, train_reward_model


def tiny_rm(seed=0):
    torch.manual_seed(seed)
    return RewardModel(Transformer(ModelConfig(**PRESETS["tiny-gqa"], vocab_size=32)))


def test_right_pad_literal():
    tokens, lengths = right_pad([[5, 6, 7], [8]], pad_id=0)
    assert tokens.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert lengths.tolist() == [3, 1]
    with pytest.raises(ValueError):
        right_pad([[1], []], pad_id=0)


def test_bradley_terry_literal():
    # -log sigmoid(1) = log(1 + e^-1) = 0.313262; -log sigmoid(-2) = log(1 + e^2) = 2.126928
    loss = bradley_terry_loss(torch.tensor([3.0, 0.0]), torch.tensor([2.0, 2.0]))
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.exp(2))) / 2, abs=1e-6)
    assert loss.item() == pytest.approx((0.313262 + 2.126928) / 2, abs=1e-5)


def test_score_reads_the_last_real_token_not_padding():
    rm = tiny_rm()
    torch.nn.init.normal_(rm.head.weight)
    alone = rm.score([[3, 4, 5]])
    padded = rm.score([[3, 4, 5], [1, 2, 3, 4, 5, 6, 7, 8]], pad_id=0)
    assert padded[0].item() == pytest.approx(alone[0].item(), abs=1e-5)


def test_untrained_head_prefers_nothing():
    rm = tiny_rm()
    assert pair_accuracy(rm, [([1, 2, 3], [1, 2, 4])]) == 0.0  # zero head: every reward is 0, no strict win


def test_fit_generalises_to_held_out_pairs():
    """Hidden rule: a response is better when it ends in token 7 than in token 9, whatever comes before."""
    rng = random.Random(0)

    def pair():
        body = [rng.randrange(1, 30) for _ in range(rng.randrange(2, 8))]
        return body + [7], body + [9]
    train = [pair() for _ in range(64)]
    held_out = [pair() for _ in range(32)]
    rm = tiny_rm()
    assert pair_accuracy(rm, held_out) == 0.0
    losses = train_reward_model(rm, train, steps=40, batch_size=16, lr=3e-3, log=lambda *_: None)
    assert losses[-1] < 0.5 * losses[0]
    assert pair_accuracy(rm, held_out) >= 0.95
