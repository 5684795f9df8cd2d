"""The training forward pass: logits a chunk at a time (never ``(B, T, V)``), through
the model's own output path (final logit transforms, PEFT wrappers), equal to the
log-softmax of the model's own logits, which is what the sampler uses."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

from agents.model import check_logit_head, forward_tokens

VOCAB = 97


class _Vocab:
    eos_token_id, pad_token_id, bos_token_id = 1, 0, None

    def __len__(self) -> int:
        return VOCAB


def tiny_qwen2(dtype=torch.float64):
    from agents.tiny_model import make_tiny_qwen2

    model = make_tiny_qwen2(_Vocab(), hidden_size=32, intermediate=64, layers=2, heads=4)
    return model.to(dtype)


def tiny_gemma2(cap: float = 0.2):
    """A random Gemma 2 whose final soft-capping is strong enough to matter."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        final_logit_softcapping=cap,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Gemma2ForCausalLM(config)
    return model.double().eval()


def padded_batch(lengths=(11, 7, 16), width=18, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (len(lengths), width), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        ids[row, n:] = 0
    return ids, mask


def reference_logprobs(model, ids, mask, temperature=1.0):
    """log_softmax of ``model(...).logits`` (the sampler's distribution), aligned."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    logp = torch.log_softmax(logits[:, :-1].double() / temperature, -1)
    picked = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    out = torch.cat([picked.new_zeros(len(ids), 1), picked], 1)
    return torch.where(mask.bool() & (torch.arange(ids.shape[1]) > 0), out, 0.0)


def old_path_logprobs(model, ids, mask):
    """What the trainer used to compute: base model + output embeddings, no transform."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions)[0]
    logits = model.get_output_embeddings()(hidden[:, :-1]).double()
    picked = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    out = torch.cat([picked.new_zeros(len(ids), 1), picked], 1)
    return torch.where(mask.bool() & (torch.arange(ids.shape[1]) > 0), out, 0.0)


# ------------------------------------------------------------------ chunking
def test_chunked_logprobs_entropy_and_grads_equal_one_chunk():
    model = tiny_qwen2()
    ids, mask = padded_batch()
    only = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.6).long()
    weights = torch.randn(
        ids.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    results = []
    for chunk in (10_000, 7, 1):
        model.zero_grad(set_to_none=True)
        out = forward_tokens(
            model, ids, mask, entropy=True, only=only, chunk_tokens=chunk, temperature=0.7
        )
        ((out.logprobs + 0.3 * out.entropy) * weights).sum().backward()
        results.append((out, [p.grad.clone() for p in model.parameters()]))
    (want, want_grads), rest = results[0], results[1:]
    for out, grads in rest:
        torch.testing.assert_close(out.logprobs, want.logprobs, atol=1e-12, rtol=0)
        torch.testing.assert_close(out.entropy, want.entropy, atol=1e-12, rtol=0)
        for g, w in zip(grads, want_grads):
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-9)


class _Recorder(torch.nn.Module):
    """Wraps the LM head and records how many positions each call scores."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head, self.sizes = head, []

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[:-1].numel())
        return self.head(x)


def test_no_more_than_a_chunk_of_logits_exists_at_once():
    model = tiny_qwen2()
    recorder = _Recorder(model.lm_head)
    model.lm_head = recorder
    ids, mask = padded_batch()
    out = forward_tokens(model, ids, mask, entropy=True, chunk_tokens=5)
    out.logprobs.sum().backward()  # the backward recomputes chunk by chunk
    kept = int(mask[:, 1:].sum())
    assert max(recorder.sizes) == 5
    assert sum(recorder.sizes) == 2 * kept  # forward + recomputation, nothing else
    torch.testing.assert_close(
        out.logprobs, reference_logprobs(model, ids, mask), atol=1e-12, rtol=0
    )


def test_bad_chunk_size_is_refused():
    model = tiny_qwen2()
    ids, mask = padded_batch()
    with pytest.raises(ValueError, match="chunk_tokens"):
        forward_tokens(model, ids, mask, chunk_tokens=0)


# ------------------------------------------------------------------ output path
def test_softcapped_model_scores_with_its_own_distribution():
    model = tiny_gemma2()
    ids, mask = padded_batch()
    want = reference_logprobs(model, ids, mask, temperature=0.8)
    got = forward_tokens(model, ids, mask, temperature=0.8, chunk_tokens=4).logprobs
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    # the old path (no soft-capping) scores under another distribution
    assert (
        old_path_logprobs(model, ids, mask) - reference_logprobs(model, ids, mask)
    ).abs().max() > 1e-2
    check_logit_head(model)


def test_an_unknown_logit_transform_is_refused():
    from transformers import Qwen2ForCausalLM

    class ScaledQwen2(Qwen2ForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3.0
            return out

    base = tiny_qwen2()
    model = ScaledQwen2(base.config).double()
    model.load_state_dict(base.state_dict())
    check_logit_head(base)
    with pytest.raises(ValueError, match="logit_head"):
        check_logit_head(model)


def test_peft_lora_model_scores_through_its_adapters():
    peft = pytest.importorskip("peft", reason="needs the [lora] extra")
    base = tiny_qwen2()
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    model = peft.get_peft_model(base, config)
    ids, mask = padded_batch()
    want = reference_logprobs(model, ids, mask)
    out = forward_tokens(model, ids, mask, entropy=True)
    torch.testing.assert_close(out.logprobs, want, atol=1e-10, rtol=0)
    with model.disable_adapter():  # the adapters change the distribution
        plain = reference_logprobs(model, ids, mask)
    assert (plain - want).abs().max() > 1e-3
    check_logit_head(model)
    out.logprobs.sum().backward()
    trained = [n for n, p in model.named_parameters() if p.grad is not None]
    assert trained and all("lora_" in n for n in trained)
