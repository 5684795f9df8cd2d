"""The token-level pieces RLlib and SB3 share: the env builder (tag tokens, truncation as
termination), the synthetic task's vocabulary and the token encoder."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from agents.tokenlevel.encoder import EncoderConfig, TokenEncoder, last_window  # noqa: E402
from agents.tokenlevel.env import TAG_TOKENS, make_search_env, tagged_tokenizer  # noqa: E402
from agents.tokenlevel.task import TASK_ENV_CONFIG, TASK_ENV_ID, task_token_ids  # noqa: E402

TINY = {**TASK_ENV_CONFIG}


# ------------------------------------------------------------------ task and tokenizer
def test_tag_tokens_are_single_tokens_and_the_shared_tokenizer_is_untouched():
    from search_env.synth.tokenizer import load_synth_tokenizer

    tok = tagged_tokenizer("synth")
    assert len(load_synth_tokenizer()) == 4096  # the cached shared tokenizer: no tags added
    assert len(tok) == 4096 + len(TAG_TOKENS)
    for tag in TAG_TOKENS:
        assert len(tok.encode(tag, add_special_tokens=False)) == 1
    assert len(set(task_token_ids())) == 8


def test_env_parses_tag_tokens_as_the_protocol_tags():
    env = make_search_env(TASK_ENV_ID, TINY)
    tok = env.unwrapped.tokenizer
    answer, close, the = (tok.convert_tokens_to_ids(t) for t in ("<answer>", "</answer>", "Ġthe"))
    env.reset(seed=0)
    results = [env.step(t) for t in (answer, the, close)]
    _, reward, terminated, truncated, info = results[-1]
    assert terminated and not truncated
    assert info["action"] == "answer" and info["answer"] == "the"
    assert reward == TINY["format_score"]  # well formed, wrong: the format score


@pytest.mark.parametrize("as_termination", [True, False])
def test_truncation_as_termination(as_termination):
    env = make_search_env(TASK_ENV_ID, {**TINY, "truncation_as_termination": as_termination})
    eos = env.unwrapped.tokenizer.eos_token_id
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(eos)  # turn 1: EOS, an invalid turn
    assert not (terminated or truncated)
    _, reward, terminated, truncated, info = env.step(eos)  # the final turn: no answer
    assert reward == 0.0 and info["action"] == "invalid"
    assert (terminated, truncated) == ((True, False) if as_termination else (False, True))
    assert info.get("protocol_truncated", False) is as_termination


def test_make_search_env_rejects_tag_tokens_with_a_tokenizer_object():
    with pytest.raises(TypeError, match="tokenizer= as a string"):
        make_search_env(TASK_ENV_ID, {**TINY, "tokenizer": tagged_tokenizer("synth")})


# ------------------------------------------------------------------------- encoder
def test_last_window_right_aligns_the_newest_tokens():
    tokens = torch.tensor([[5, 6, 7, 0, 0], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 0, 0], [0, 1, 1, 0, 1]])
    ids, kinds, valid = last_window(tokens, mask, torch.tensor([[3], [5]]), window=4)
    assert ids.tolist() == [[0, 5, 6, 7], [2, 3, 4, 5]]
    assert kinds.tolist() == [[0, 0, 0, 1], [1, 1, 0, 1]]
    assert valid.tolist() == [[False, True, True, True], [True, True, True, True]]


def test_encoder_reads_only_the_window_of_the_context():
    torch.manual_seed(0)
    enc = TokenEncoder(50, EncoderConfig(d_model=16, layers=1, heads=2, ff=32, window=4)).eval()
    tokens = torch.randint(0, 50, (1, 12))
    mask = torch.randint(0, 2, (1, 12))
    length = torch.tensor([[9]])
    base = enc(tokens, mask, length)
    changed = tokens.clone()
    changed[0, 9:] = 3  # past the context end
    changed[0, :5] = 3  # older than the window (positions 5..8 are read)
    assert torch.allclose(enc(changed, mask, length), base)
    newest = tokens.clone()
    newest[0, 8] = (tokens[0, 8] + 1) % 50
    assert not torch.allclose(enc(newest, mask, length), base)
    flipped = mask.clone()
    flipped[0, 8] = 1 - mask[0, 8]  # agent vs environment token matters
    assert not torch.allclose(enc(tokens, flipped, length), base)


def test_encoder_rejects_out_of_range_ids():
    enc = TokenEncoder(10, EncoderConfig(d_model=8, layers=1, heads=2, ff=8, window=4))
    with pytest.raises(ValueError, match="out of range"):
        enc(torch.tensor([[3, 12]]), torch.zeros(1, 2), torch.tensor([[2]]))


# ------------------------------------------------------------------------ layering
def test_trainers_import_only_what_they_use():
    """SB3 reaches the shared pieces without RLlib, and PPO without GRPO (a fresh process,
    so no other test's imports count)."""
    import subprocess
    import sys

    code = (
        "import sys, agents.sb3.train, agents.ppo; "
        "print(sorted(m for m in sys.modules if m.startswith(('agents.rllib', 'agents.grpo'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
