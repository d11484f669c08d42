"""GRPO math against hand-computed values (fast; no model)."""
import math

import pytest
import torch

from grpo import compact_filter, group_advantages, low_var_kl, policy_loss, ppo_token_losses
from trainer import token_budget_batches  # shared by grpo.py and sft.py (max_tokens_per_micro)


def test_group_advantages_hand_values():
    # group 1: [1,0,0,0]: mean .25, unbiased std sqrt((.75² + 3·.25²)/3) = .5
    # group 2: zero variance -> all 0 (no signal), not NaN
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.3, 0.3, 0.3, 0.3])
    a = group_advantages(r, 4)
    s = 0.5 + 1e-6
    want = torch.tensor([0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s, 0, 0, 0, 0])
    assert a.shape == r.shape
    assert torch.allclose(a, want, atol=1e-6)
    # groups are independent: shifting group 2 doesn't touch group 1
    r2 = r.clone()
    r2[4:] = torch.tensor([0.0, 0.5, 0.5, 1.0])
    a2 = group_advantages(r2, 4)
    assert torch.allclose(a2[:4], want[:4], atol=1e-6)
    # group [0, .5, .5, 1]: mean .5, deviations [-.5, 0, 0, .5], unbiased std sqrt(.5 / 3)
    sd = math.sqrt((0.25 + 0 + 0 + 0.25) / 3)
    assert torch.allclose(a2[4:], torch.tensor([-0.5, 0, 0, 0.5]) / (sd + 1e-6), atol=1e-6)
    # the mean is subtracted: advantages sum to 0 per group, and a constant shift of a group changes nothing
    assert abs(float(a2[4:].sum())) < 1e-6
    assert torch.allclose(group_advantages(r2 + torch.tensor([0.0] * 4 + [0.25] * 4), 4), a2, atol=1e-5)


def test_group_advantages_unbiased_std_not_population():
    r = torch.tensor([0.0, 1.0])  # unbiased std = sqrt(.5) = .7071; population std would be .5
    a = group_advantages(r, 2)
    assert torch.allclose(a, torch.tensor([-0.5, 0.5]) / (math.sqrt(0.5) + 1e-6), atol=1e-6)
    assert torch.allclose(group_advantages(torch.tensor([0.7, 0.2]), 1), torch.tensor([0.7, 0.2]))


def test_ppo_token_losses_each_regime():
    old = torch.zeros(1, 5)
    # ratios: 1.5 (A>0, above 1+0.28 -> clipped), 1.1 (A>0, inside), 0.5 (A<0, below 1-0.2 -> clipped at .8),
    #         5.0 (A<0 -> dual clip at c=3), 1.0
    ratios = torch.tensor([[1.5, 1.1, 0.5, 5.0, 1.0]])
    logp = ratios.log()
    for adv, want in [
        (1.0, [-1.28, -1.1, -0.5, -1.28, -1.0]),   # A>0: max(-A·r, -A·clip(r)) = -A·min(r, 1.28) above
        (-1.0, [1.5, 1.1, 0.8, 3.0, 1.0]),         # A<0: max(r, clip(r)) then min(., 3)
        (-2.0, [3.0, 2.2, 1.6, 6.0, 2.0]),         # c·|A| = 6 caps 5·2 = 10
    ]:
        tok, clipped, dual = ppo_token_losses(logp, old, torch.tensor([adv]))
        assert torch.allclose(tok, torch.tensor([want]), atol=1e-5), (adv, tok)
    tok, clipped, dual = ppo_token_losses(logp, old, torch.tensor([-1.0]))
    assert dual.tolist() == [[False, False, False, True, False]]
    # A<0: the ε clip binds only below 1-0.2 (above 1+0.28 the unclipped term is the larger, pessimistic one)
    assert clipped.tolist() == [[False, False, True, False, False]]


def test_dual_clip_has_zero_gradient_and_positive_adv_has_no_lower_bound():
    old = torch.zeros(1, 2)
    logp = torch.tensor([[math.log(5.0), math.log(1.1)]], requires_grad=True)
    tok, _, _ = ppo_token_losses(logp, old, torch.tensor([-1.0]))
    tok.sum().backward()
    # dual-clipped token: constant -A·c, no gradient; the inside token: d(-A·r)/dlogp = -A·r = 1.1
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 1.1]]), atol=1e-5)


def test_policy_loss_seq_mean_token_sum_and_masked_rows():
    # seq 0: A=+1, ratios [1.5, 1.1]           -> token sum -1.28 - 1.1 = -2.38
    # seq 1: A=-1, ratios [5.0, 0.5, (pad)]    -> 3.0 + 0.8 = 3.8 (pad masked)
    # seq 2: fully masked (e.g. a filtered trajectory) -> does not count in the mean
    ratios = torch.tensor([[1.5, 1.1, 1.0], [5.0, 0.5, 9.0], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float)
    adv = torch.tensor([1.0, -1.0, 5.0])
    loss, st = policy_loss(ratios.log(), torch.zeros(3, 3), adv, mask)
    # stats over the 4 unmasked tokens: ε clip on 1.5 (A>0) and 0.5 (A<0), dual clip on 5.0 (A<0)
    assert loss.dim() == 0 and st["tokens"] == 4.0 and st["clip"] == 2.0 and st["dual_clip"] == 1.0
    assert abs(float(loss) - (-2.38 + 3.8) / 2) < 1e-5
    # token SUM not token mean: doubling a sequence's tokens doubles its term
    l1, _ = policy_loss(torch.zeros(1, 4), torch.zeros(1, 4), torch.tensor([1.0]), torch.tensor([[1.0, 1, 0, 0]]))
    l2, _ = policy_loss(torch.zeros(1, 4), torch.zeros(1, 4), torch.tensor([1.0]), torch.tensor([[1.0, 1, 1, 1]]))
    assert abs(float(l1) + 2.0) < 1e-6 and abs(float(l2) + 4.0) < 1e-6
    # everything masked -> 0, still differentiable
    lp = torch.zeros(2, 3, requires_grad=True)
    l0, _ = policy_loss(lp, torch.zeros(2, 3), torch.tensor([1.0, -1.0]), torch.zeros(2, 3))
    l0.backward()
    assert float(l0) == 0.0 and float(lp.grad.abs().sum()) == 0.0


def test_on_policy_gradient_is_minus_advantage():
    # ratio = 1 (old = logp detached): d loss / d logp_t = -A_i / n_seqs on every unmasked token
    logp = torch.randn(2, 3, requires_grad=True)
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0]])
    loss, _ = policy_loss(logp, logp.detach(), torch.tensor([0.5, -2.0]), mask)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, -0.25, -0.25], [1.0, 0, 0]]), atol=1e-6)


def test_policy_loss_divisor_nominal_vs_kept():
    # the same two kept sequences as above (token sums -2.38 and 3.8) inside a mini-batch of 6 rows, 4 of them
    # masked out (filtered): 'kept' divides by the 2 that count, 'nominal' (release) by all 6 rows
    ratios = torch.tensor([[1.5, 1.1], [5.0, 0.5]] + [[1.0, 1.0]] * 4)
    mask = torch.tensor([[1.0, 1], [1, 1]] + [[0.0, 0]] * 4)
    adv = torch.tensor([1.0, -1.0, 0.3, 0.3, -0.3, -0.3])
    kept, _ = policy_loss(ratios.log(), torch.zeros(6, 2), adv, mask, divisor=2)
    nominal, st = policy_loss(ratios.log(), torch.zeros(6, 2), adv, mask, divisor=6)
    assert abs(float(kept) - 1.42 / 2) < 1e-5 and abs(float(nominal) - 1.42 / 6) < 1e-5
    assert st["loss"] == pytest.approx(1.42 / 6, abs=1e-5)


def test_policy_loss_kl_term():
    # kl_coef * low_var_kl(logp, ref) is added to every token's loss before the token sum: ratio 1, A = 0 so the
    # PPO part is 0 and the loss is kl_coef * sum_t k3 / divisor
    logp = torch.zeros(1, 3)
    ref = torch.full((1, 3), 0.5)
    loss, st = policy_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 3), divisor=2, ref_logp=ref, kl_coef=0.1)
    k3 = math.exp(0.5) - 0.5 - 1
    assert float(loss) == pytest.approx(0.1 * 3 * k3 / 2, rel=1e-5) and st["kl"] == pytest.approx(3 * k3, rel=1e-5)


def test_low_var_kl_zero_when_equal_and_positive():
    lp = torch.tensor([[-1.0, -2.0]])
    assert torch.allclose(low_var_kl(lp, lp), torch.zeros(1, 2))
    k = low_var_kl(lp, lp + 0.5)  # exp(.5) - .5 - 1
    assert torch.allclose(k, torch.full((1, 2), math.exp(0.5) - 1.5), atol=1e-6)


def test_compact_filter():
    reasons = ["answer", "overlong", "answer", "max_rounds",      # group 0: best reward .5
               "answer", "parse_failed", "answer", "answer",      # group 1: all rewards 0 -> dead
               "answer", "answer", "repeated", "timeout"]         # group 2
    rewards = [0.5, 0.0, 0.2, 0.0, 0, 0, 0, 0, 0.1, 0.3, 0, 0]
    errs = [False] * 12
    errs[9] = True  # generator fault
    filt = ("overlong", "repeated", "parse_failed", "no_answer", "error", "timeout")
    # 'group' (the release's comment): only the all-zero group 1 leaves as a whole
    keep, counts = compact_filter(reasons, rewards, 4, filt, reward_errors=errs, mask_failed="group")
    assert keep == [True, False, True, True, False, False, False, False, True, False, False, False]
    assert counts == {"reason:overlong": 1, "reason:parse_failed": 1, "reason:repeated": 1,
                      "reason:timeout": 1, "reward_error": 1, "dead_group": 1}
    # 'trajectory' (the release's code, default): every trajectory with reward <= 0 leaves -- index 3 of group 0
    # (max_rounds, reward 0) now leaves too, and group 1's three zero-reward answers are counted one by one
    keep, counts = compact_filter(reasons, rewards, 4, filt, reward_errors=errs)
    assert keep == [True, False, True, False, False, False, False, False, True, False, False, False]
    assert counts == {"reason:overlong": 1, "reason:parse_failed": 1, "reason:repeated": 1,
                      "reason:timeout": 1, "reward_error": 1, "failed": 4}
    # a group with one success keeps that one only under 'trajectory', the whole group under 'group'
    k_t, _ = compact_filter(["answer"] * 3, [0.0, 0.4, -0.1], 3, filt)
    k_g, _ = compact_filter(["answer"] * 3, [0.0, 0.4, -0.1], 3, filt, mask_failed="group")
    assert k_t == [False, True, False] and k_g == [True, True, True]
    with pytest.raises(ValueError, match="mask_failed"):
        compact_filter(["answer"], [1.0], 1, filt, mask_failed="episode")


@pytest.mark.parametrize("budget", [10, 25, 100])
def test_token_budget_batches(budget):
    lengths = [7, 3, 12, 5, 5, 9, 1]
    mbs = token_budget_batches(lengths, budget)
    assert sorted(i for mb in mbs for i in mb) == list(range(len(lengths)))
    for mb in mbs:
        assert len(mb) == 1 or max(lengths[i] for i in mb) * len(mb) <= budget
    if budget == 100:
        assert len(mbs) == 1


def test_reward_counts_include_the_generator_clients(tmp_path):
    """The step log's reward_stats: reward.py's counters and the generator clients' (image_server.STATS) in one."""
    import image_server
    import reward
    from grpo import reward_counts
    before = reward_counts()
    image_server.generate('the "flag"', [], str(tmp_path / "g.png"), reward.make_config())
    reward.score([{"id": "x", "end_reason": "overlong"}], [], out_dir=str(tmp_path / "gen"))
    after = reward_counts()
    assert after["gen_calls"] - before["gen_calls"] == 1
    assert after["invalid:overlong"] - before["invalid:overlong"] == 1
