"""Training perturbations: the contract every entry of METHODS obeys (ball, [0, 1], detached,
no weight gradients, mode unchanged, seeded repeatability) and equivalences with references
(fast quantile vs torch.quantile, ZeroGrad q=0 vs FGSM-RS, PGD-1 vs FGSM, MultiGrad N=1,
PGD's known optimum on a linear model); GradAlign against its reference (clean gradient
detached)."""
import pytest
import torch
import torch.nn.functional as F

from zerograd.errors import ConfigError
from zerograd.methods import (
    METHODS,
    delta_bound,
    grad_align,
    input_grad,
    project,
    quantile_threshold,
    random_start,
    zero_small,
)
from zerograd.methods.perturbations import multigrad, pgd

from .conftest import Linear2

EPS = 8 / 255


def batch(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 12, 12, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("training", [True, False])
def test_contract_of_every_method(name, training, tiny_cnn):
    x, y = batch()
    x[0] = 0.0  # pixels at the box's edges must stay inside [0, 1]
    x[1] = 1.0
    tiny_cnn.train(training)
    torch.manual_seed(1)
    delta = METHODS[name](tiny_cnn, x, y, eps=EPS)
    assert delta.shape == x.shape and not delta.requires_grad and delta.grad_fn is None
    assert delta.abs().max() <= delta_bound(name, EPS) + 1e-6
    assert (x + delta).min() >= 0 and (x + delta).max() <= 1
    assert delta.abs().sum() > 0, "a method must actually perturb"
    assert all(p.grad is None for p in tiny_cnn.parameters())
    assert tiny_cnn.training is training
    torch.manual_seed(1)
    again = METHODS[name](tiny_cnn, x, y, eps=EPS)
    assert torch.equal(delta, again)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_zero_eps_gives_zero_delta(name, tiny_cnn):
    x, y = batch()
    assert torch.equal(METHODS[name](tiny_cnn, x, y, eps=0.0), torch.zeros_like(x))


@pytest.mark.parametrize("q", [0.0, 0.1, 0.35, 0.5, 0.7, 0.99])
def test_fast_threshold_equals_torch_quantile(q):
    g = torch.Generator().manual_seed(0)
    continuous = torch.randn(5, 301, generator=g).abs()
    ties = torch.randint(0, 4, (5, 300), generator=g).float()  # many exact ties
    for a in (continuous, ties):
        assert torch.equal(quantile_threshold(a, q), torch.quantile(a, q, dim=1))


def test_zero_small_zeroes_strictly_below_threshold():
    g = torch.tensor([[[0.1, -0.2, 0.3, -0.4, 0.5]]])
    out = zero_small(g, 0.5)  # threshold 0.3: 0.1 and -0.2 go, 0.3 stays
    assert torch.equal(out, torch.tensor([[[0.0, 0.0, 0.3, -0.4, 0.5]]]))
    assert torch.equal(zero_small(g, 0.0), g)


def test_zerograd_keeps_start_value_where_gradient_is_zeroed(tiny_cnn):
    x, y = batch()
    torch.manual_seed(3)
    start = random_start(x, EPS)
    grad = zero_small(input_grad(tiny_cnn, x, y, start), 0.5)
    torch.manual_seed(3)
    delta = METHODS["zerograd"](tiny_cnn, x, y, eps=EPS, q=0.5)
    zeroed = grad == 0
    assert zeroed.float().mean() > 0.4
    assert torch.equal(delta[zeroed], start[zeroed])


def test_zerograd_with_q0_equals_fgsm_rs(tiny_cnn):
    x, y = batch()
    for alpha in (1.25, 2.0):
        torch.manual_seed(5)
        a = METHODS["zerograd"](tiny_cnn, x, y, eps=EPS, alpha=alpha, q=0.0)
        torch.manual_seed(5)
        b = METHODS["fgsm_rs"](tiny_cnn, x, y, eps=EPS, alpha=alpha)
        assert torch.equal(a, b)


def test_pgd1_without_random_start_equals_fgsm(tiny_cnn):
    x, y = batch()
    a = pgd(tiny_cnn, x, y, eps=EPS, alpha=1.0, steps=1, random_init=False)
    b = METHODS["fgsm"](tiny_cnn, x, y, eps=EPS, alpha=1.0)
    assert torch.equal(a, b)


def test_multigrad_n1_is_the_sign_at_its_start_applied_at_the_clean_point(tiny_cnn):
    """N = 1 keeps every sign of its one start: an FGSM step from the clean point with the
    gradient taken at the random start (Alg. 2 with N = 1)."""
    tiny_cnn.eval()
    x, y = batch()
    torch.manual_seed(7)
    start = random_start(x, EPS)
    expected = project(x, EPS * input_grad(tiny_cnn, x, y, start).sign(), EPS)
    torch.manual_seed(7)
    assert torch.equal(multigrad(tiny_cnn, x, y, eps=EPS, n=1), expected)


def test_multigrad_keeps_only_agreeing_signs_and_chunking_changes_nothing(tiny_cnn):
    tiny_cnn.eval()
    x, y = batch()
    torch.manual_seed(9)
    starts = [random_start(x, EPS) for _ in range(3)]
    signs = torch.stack([input_grad(tiny_cnn, x, y, s).sign() for s in starts])
    agree = (signs == signs[0]).all(0) & (signs[0] != 0)
    torch.manual_seed(9)
    delta = multigrad(tiny_cnn, x, y, eps=EPS, n=3, chunk=3)  # one batched pass
    torch.manual_seed(9)
    chunked = multigrad(tiny_cnn, x, y, eps=EPS, n=3, chunk=1)
    assert torch.equal((delta != 0), agree & ((x + EPS * signs[0]).clamp(0, 1) != x))
    assert (chunked != delta).float().mean() < 1e-3  # batched vs chunked: float ties only
    torch.manual_seed(9)
    majority = multigrad(tiny_cnn, x, y, eps=EPS, n=3, agree=2)
    assert (majority != 0).sum() > (delta != 0).sum()


def test_pgd_finds_the_optimal_attack_of_a_linear_model():
    model = Linear2(d=3 * 4 * 4)
    x = 0.25 + 0.5 * torch.rand(8, 3, 4, 4)  # interior, so [0, 1] clipping is inactive
    y = torch.randint(0, 2, (8,))
    delta = pgd(model, x, y, eps=EPS, alpha=0.25, steps=10)
    w = model.fc.weight.detach()
    optimal = -EPS * (w[y] - w[1 - y]).sign().view_as(x)
    assert torch.allclose(delta, optimal, atol=1e-6)


def test_n_fgsm_is_not_projected_to_the_eps_ball(tiny_cnn):
    x = 0.5 * torch.ones(4, 3, 12, 12)
    y = torch.zeros(4, dtype=torch.long)
    torch.manual_seed(0)
    delta = METHODS["n_fgsm"](tiny_cnn, x, y, eps=EPS)
    assert delta.abs().max() > 1.5 * EPS
    assert delta.abs().max() <= 3 * EPS + 1e-6


def test_hyperparameter_schema_and_errors():
    assert METHODS.defaults("zerograd") == {"alpha": 2.0, "q": 0.35, "iters": 1, "random_init": True}
    assert METHODS.defaults("multigrad")["n"] == 3 and METHODS.defaults("fgsm_rs")["alpha"] == 1.25
    with pytest.raises(ConfigError, match="did you mean 'q'"):
        METHODS.check("zerograd", {"qq": 0.3})
    with pytest.raises(ConfigError, match=r"q=1\.0 .*\[0, 1\)"):
        METHODS.check("zerograd", {"q": 1.0})
    with pytest.raises(ConfigError, match="n=0"):
        METHODS.check("multigrad", {"n": 0})
    with pytest.raises(ConfigError, match="agree=1"):
        METHODS.check("multigrad", {"n": 3, "agree": 1})


def _weight_grads(model, loss):
    return torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)


def test_grad_align_detaches_the_clean_gradient_like_the_reference(tiny_cnn):
    """GradAlign's train.py:162 detaches the clean gradient; only the random point's input
    gradient carries the weights' graph. The full double backward stays as an option."""
    x, y = batch()
    torch.manual_seed(1)
    default = grad_align(tiny_cnn, x, y, eps=EPS, lam=0.5)
    torch.manual_seed(1)
    both = grad_align(tiny_cnn, x, y, eps=EPS, lam=0.5, backprop_clean=True)
    torch.manual_seed(1)
    d = random_start(x, EPS)
    clean = input_grad(tiny_cnn, x, y, torch.zeros_like(x)).detach()
    d.requires_grad_(True)
    (rand,) = torch.autograd.grad(F.cross_entropy(tiny_cnn(x + d), y), d, create_graph=True)
    reference = 0.5 * (1 - F.cosine_similarity(clean.flatten(1), rand.flatten(1), dim=1).mean())
    assert torch.allclose(default, reference) and torch.allclose(both, reference)
    for a, b in zip(_weight_grads(tiny_cnn, default), _weight_grads(tiny_cnn, reference)):
        assert torch.allclose(a, b, atol=1e-6)
    differ = [not torch.allclose(a, b, atol=1e-6) for a, b in
              zip(_weight_grads(tiny_cnn, default), _weight_grads(tiny_cnn, both))]
    assert any(differ)
