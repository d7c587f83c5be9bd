"""Evaluation semantics: restarts never raise robust accuracy, a model that ignores its input
has robust = clean, PGD breaks exactly the linear model's points within eps, and the model's
mode is restored."""
import torch

from zerograd.accuracy import evaluate
from zerograd.attacks import pgd_robust
from zerograd.data import Split

from .conftest import Linear2


class Constant(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor([0.0, 1.0, 0.0]))

    def forward(self, x):
        return self.bias.expand(len(x), 3) + 0 * x.flatten(1).sum(1, keepdim=True)


def split_of(x, y):
    return Split(x=(x * 255).round().to(torch.uint8), y=y)


def test_model_ignoring_input_has_robust_equal_clean():
    x = torch.rand(20, 1, 4, 4)
    y = torch.randint(0, 3, (20,))
    r = evaluate(Constant(), split_of(x, y), eps=0.3, steps=5, restarts=2)
    assert r["robust_acc"] == r["clean_acc"] == (y == 1).float().mean().item()


def test_restarts_never_raise_accuracy_and_mode_is_restored(tiny_cnn):
    torch.manual_seed(0)
    x = torch.rand(64, 3, 12, 12)
    y = torch.randint(0, 10, (64,))
    tiny_cnn.train()
    accs = []
    for restarts in (1, 3, 6):
        torch.manual_seed(1)
        accs.append(evaluate(tiny_cnn, split_of(x, y), eps=8 / 255, steps=3, restarts=restarts)["robust_acc"])
    assert accs[0] >= accs[1] >= accs[2]
    assert tiny_cnn.training


def test_pgd_breaks_exactly_the_points_within_eps_of_a_linear_boundary():
    torch.manual_seed(0)
    model = Linear2(d=16).eval()
    x = 0.3 + 0.4 * torch.rand(200, 16)
    w = model.fc.weight.detach()
    logits = model(x)
    y = logits.argmax(1)
    margin = (logits[:, 0] - logits[:, 1]).abs()
    distance = margin / (w[0] - w[1]).abs().sum()  # minimal l_inf perturbation that flips
    eps = distance.median().item()
    robust = pgd_robust(model, x, y, eps=eps, alpha=0.25, steps=20, restarts=1)
    clear = (distance - eps).abs() > 1e-4  # a point exactly on the boundary is a tie
    assert clear.sum() >= 190
    assert torch.equal(robust[clear], (distance > eps)[clear])
