"""Padding-free packing: packed rows (positions reset per trajectory) give the padded
batch's log-probs, entropy, values and gradients (tiny model, fp64, CPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

from agents.model import ValueHead, forward_tokens
from agents.packing import forward_tokens_packed, pack_rows

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class _Vocab:
    eos_token_id, pad_token_id, bos_token_id = 1, 0, None

    def __len__(self) -> int:
        return 97


def test_pack_rows_first_fit_decreasing():
    rows = pack_rows([5, 9, 3, 4, 12], 12)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]
    assert rows == [[4], [1, 2], [0, 3]]
    assert pack_rows([20], 12) == [[0]]  # too long: a row alone
    with pytest.raises(ValueError, match="row_tokens"):
        pack_rows([3], 0)


@pytest.mark.parametrize("row_tokens", [1, 24, 40, 200])
def test_packed_equals_padded(row_tokens):
    from agents.tiny_model import make_tiny_qwen2

    model = make_tiny_qwen2(_Vocab(), hidden_size=32, intermediate=64, layers=2, heads=4)
    model = model.double()
    head = ValueHead(32).double()
    torch.nn.init.normal_(head.linear.weight, std=0.1)
    lengths = [11, 7, 16, 5, 13]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 97, (5, 18), generator=g)
    mask = (torch.arange(18)[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask
    only = (torch.rand(ids.shape, generator=g) < 0.7).long() * mask
    weights = torch.randn(ids.shape, generator=g, dtype=torch.float64)
    results = []
    for packed in (False, True):
        model.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        kwargs = dict(entropy=True, value_head=head, only=only, temperature=0.9)
        if packed:
            out = forward_tokens_packed(model, ids, mask, row_tokens=row_tokens, **kwargs)
        else:
            out = forward_tokens(model, ids, mask, **kwargs)
        ((out.logprobs + 0.1 * out.entropy + out.values) * weights).sum().backward()
        grads = [p.grad.clone() for p in [*model.parameters(), *head.parameters()]]
        results.append((out, grads))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got.logprobs, want.logprobs, atol=1e-10, rtol=0)
    torch.testing.assert_close(got.entropy, want.entropy, atol=1e-10, rtol=0)
    torch.testing.assert_close(got.values, want.values, atol=1e-10, rtol=0)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8)


def test_packing_without_reset_positions_would_leak_across_trajectories():
    """The check above can fail: one row of two trajectories with positions running on
    (no restart) scores the second trajectory differently."""
    from agents.model import final_hidden
    from agents.tiny_model import make_tiny_qwen2

    model = make_tiny_qwen2(_Vocab(), hidden_size=32, intermediate=64, layers=2, heads=4)
    a, b = torch.arange(2, 9), torch.arange(20, 26)
    row = torch.cat([a, b])[None]
    reset = torch.cat([torch.arange(7), torch.arange(6)])[None]
    with torch.no_grad():
        alone = final_hidden(
            model, b[None], torch.ones(1, 6, dtype=torch.long), torch.arange(6)[None]
        )
        packed = final_hidden(model, row, None, reset)[:, 7:]
        running = final_hidden(model, row, None, torch.arange(13)[None])[:, 7:]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
    assert (running - alone).abs().max() > 1e-3
