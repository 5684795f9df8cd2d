"""Rollouts through the synthetic env: scripted and tiny-HF policies, masks, log-probs, batches."""

from __future__ import annotations

import re
from contextlib import contextmanager

import gymnasium as gym
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

import search_env  # noqa: F401  (registers the env ids)
from agents.policy import Generation, HFPolicy, Policy, ScriptedPolicy, StopChecker
from agents.policy.scripted import default_logprobs
from agents.rollout import Batch, RolloutError, Trajectory, collect, to_batch
from agents.tiny_model import make_tiny_qwen2, save_tiny_model
from search_env.protocol import clean_question
from search_env.rewards import exact_match
from search_env.synth.oracle import OracleAgent

PROMPT = "Question: who founded Velmora?\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one torch thread


@pytest.fixture(scope="module")
def vec():
    env = gym.make_vec(
        "SearchQA-Synth-v0", num_envs=4, size="tiny", action_mode="chunk", autoreset_mode="disabled"
    )
    yield env
    env.close()


@pytest.fixture(scope="module")
def tiny_model(tok):
    return make_tiny_qwen2(tok, seed=0)


def oracle_script(dataset, trailing: str = ""):
    """``context text -> next turn`` of the oracle, replaying its turns from the context.

    ``OracleAgent`` is stateful; a Policy only sees contexts, so each call replays the
    episode so far: the prompt is the first observation, then each env insertion.
    """
    by_question = {clean_question(e.question): e for e in dataset}

    def respond(context: str) -> str:
        question = re.search(r"Question: (.*?)\n", context).group(1)
        agent = OracleAgent(max_searches=4)
        agent.reset(by_question[question])
        cut = context.index(question) + len(question) + 1
        observation, rest = context[:cut], context[cut:]
        while True:
            turn = agent.act(observation)
            if not rest:
                return turn + trailing
            # The env dropped whatever followed the closing tag, so only the turn is there.
            assert rest.startswith(turn), (rest[:80], turn)
            rest = rest[len(turn) :]
            nxt = rest.find("<think>")
            observation, rest = (rest, "") if nxt < 0 else (rest[:nxt], rest[nxt:])

    return respond


def check_trajectory(tr: Trajectory, vec) -> None:
    """The invariants every trajectory must satisfy."""
    n = len(tr.tokens)
    assert tr.tokens.dtype == np.int64 and tr.logprobs.dtype == np.float32
    assert len(tr.loss_mask) == len(tr.logprobs) == n <= vec.envs[0].protocol.max_prompt_length
    assert not tr.loss_mask[: tr.prompt_length].any() and tr.loss_mask[tr.prompt_length] == 1
    assert (tr.logprobs[tr.loss_mask == 0] == 0).all()
    example = vec.dataset[tr.index]
    assert tr.reward == exact_match(tr.answer, example.golden_answers) == tr.scores["em"]


def test_scripted_oracle_through_collect(vec, tok):
    policy = ScriptedPolicy(tok, oracle_script(vec.dataset))
    assert isinstance(policy, Policy)
    trajectories = collect(vec, policy, indices=[0, 1, 2, 3])
    assert [tr.index for tr in trajectories] == [0, 1, 2, 3]
    assert [tr.group for tr in trajectories] == [0, 1, 2, 3]
    for tr in trajectories:
        check_trajectory(tr, vec)
        agent = tr.tokens[tr.loss_mask == 1]
        # Log-probs stay aligned with their tokens across information blocks.
        assert np.array_equal(tr.logprobs[tr.loss_mask == 1], default_logprobs(agent))
        # Decoding the agent tokens gives back exactly the oracle's turns.
        text = tok.decode(agent.tolist())
        turns = re.findall(r"<think>.*?</(?:search|answer)>", text, flags=re.S)
        assert "".join(turns) == text and len(turns) == tr.turns == tr.searches + 1
        assert len(tr.agent_spans()) == tr.turns
        assert tr.terminated and tr.answer is not None
    assert sum(tr.reward for tr in trajectories) >= 2  # the oracle mostly succeeds
    # Call k generated turn k of every sub-env still running: the agent tokens of each
    # trajectory are exactly the concatenation of its generations.
    produced: list[list[int]] = [[] for _ in trajectories]
    for k, call in enumerate(policy.calls):
        running = [j for j, tr in enumerate(trajectories) if tr.turns > k]
        assert len(call) == len(running)
        for j, gen in zip(running, call):
            produced[j] += gen.token_ids.tolist()
    for tr, ids in zip(trajectories, produced):
        assert tr.tokens[tr.loss_mask == 1].tolist() == ids


def test_tokens_after_the_closing_tag_are_dropped(vec, tok):
    trailing = " and then some more text"
    loose = ScriptedPolicy(tok, oracle_script(vec.dataset, trailing))
    tight = ScriptedPolicy(tok, oracle_script(vec.dataset), trim=True)
    a = collect(vec, loose, indices=[5, 6])
    b = collect(vec, tight, indices=[5, 6])
    generated = sum(len(g) for call in loose.calls for g in call)
    assert generated > sum(tr.agent_tokens for tr in a)  # some tokens were ignored
    for x, y in zip(a, b):
        assert np.array_equal(x.tokens, y.tokens) and np.array_equal(x.loss_mask, y.loss_mask)
        assert np.array_equal(x.logprobs, y.logprobs) and x.reward == y.reward
        assert trailing.strip() not in tok.decode(x.tokens[x.loss_mask == 1].tolist())


def test_groups_and_sitting_out(vec, tok):
    policy = ScriptedPolicy(tok, lambda ctx: "<answer> nobody </answer>")
    trajectories = collect(vec, policy, indices=[3], group_size=2)
    assert len(trajectories) == 2 and [tr.group for tr in trajectories] == [0, 0]
    assert [len(c) for c in policy.calls] == [2]  # sub-envs 2 and 3 sat out
    trajectories = collect(vec, policy, group_size=2, seed=1)
    assert [tr.group for tr in trajectories] == [0, 0, 1, 1]
    assert trajectories[0].index == trajectories[1].index
    assert trajectories[2].index == trajectories[3].index
    assert all(tr.turns == 1 and tr.reward == 0.0 and tr.terminated for tr in trajectories)
    with pytest.raises(ValueError, match="requested"):
        collect(vec, policy, indices=[0, 1, 2], group_size=2)


class _LyingPolicy(ScriptedPolicy):
    def generate(self, prompts, max_new_tokens, **kwargs):
        empty = Generation(np.array([], np.int64), np.array([], np.float32), "length")
        return [empty for _ in prompts]


def test_empty_turn_is_an_error(vec, tok):
    with pytest.raises(RolloutError, match="empty"):
        collect(vec, _LyingPolicy(tok, str), indices=[0])


def test_stop_checker_matches_split_tags(tok):
    checker = StopChecker(tok, ["</search>", "</answer>"])
    ids = tok.encode("<think> x </think>\n<search> a b </search>\n\nmore <answer> y </answer>")
    index, reason = checker.first_stop(ids)
    assert reason == "stop" and tok.decode(ids[: index + 1]).endswith("</search>")
    assert checker.first_stop(ids[:index]) is None
    assert checker.first_stop([5, tok.eos_token_id, 6]) == (1, "eos")


def test_to_batch_pads_right(tok):
    def traj(n, prompt, group, reward):
        mask = np.zeros(n, np.int8)
        mask[prompt:] = 1
        lp = np.where(mask == 1, -0.5, 0.0).astype(np.float32)
        return Trajectory(np.arange(10, 10 + n), mask, lp, prompt, reward, group=group)

    batch = to_batch([traj(5, 2, 0, 1.0), traj(8, 3, 0, 0.0), traj(3, 1, 1, 0.5)], pad_id=1)
    assert isinstance(batch, Batch) and len(batch) == 3
    assert batch.input_ids.shape == batch.attention_mask.shape == (3, 8)
    assert batch.loss_mask.shape == batch.old_logprobs.shape == (3, 8)
    assert batch.input_ids.dtype == torch.long and batch.loss_mask.dtype == torch.float32
    assert batch.input_ids[0].tolist() == [10, 11, 12, 13, 14, 1, 1, 1]
    assert batch.attention_mask.sum(1).tolist() == [5, 8, 3]
    assert batch.loss_mask.sum(1).tolist() == [3, 5, 2]
    assert (batch.old_logprobs[batch.loss_mask == 0] == 0).all()
    assert batch.rewards.tolist() == [1.0, 0.0, 0.5] and batch.group_ids.tolist() == [0, 0, 1]
    assert batch.prompt_lengths.tolist() == [2, 3, 1]
    sub = batch.select(torch.tensor([2, 0]))
    assert sub.rewards.tolist() == [0.5, 1.0] and sub.input_ids.shape == (2, 8)


# ------------------------------------------------------------------ HF policy
def test_tiny_model_saves_and_loads_offline(tiny_model, tok, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = save_tiny_model(tiny_model, tok, tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok2 = AutoTokenizer.from_pretrained(path)
    assert len(tok2) == len(tok) == model.config.vocab_size
    assert tok2.eos_token_id == tok.eos_token_id == model.config.eos_token_id
    text = "<search> who founded Velmora </search>"
    assert tok2.encode(text) == tok.encode(text)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, tiny_model(ids).logits, atol=1e-6)


def test_hf_policy_seed_repeats_the_samples(tiny_model, tok):
    policy = HFPolicy(tiny_model, tok, seed=0)
    prompts = [np.array(tok.encode("Question: who?\n"))] * 3

    def sample() -> list[list[int]]:
        gens = policy.generate(prompts, 10, stop_strings=["\x00never"])
        return [g.token_ids.tolist() for g in gens]

    policy.seed(5)
    first = sample()
    assert sample() != first  # the generator moved on
    policy.seed(5)
    assert sample() == first


def test_hf_policy_logprobs_match_recomputation(tiny_model, tok):
    policy = HFPolicy(tiny_model, tok, seed=0)
    assert isinstance(policy, Policy)
    texts = ("Question: who?\n", "a much longer prompt with many more tokens in it")
    prompts = [np.array(tok.encode(s)) for s in texts]
    for temperature in (1.0, 0.7):
        gens = policy.generate(
            prompts, [12, 7], temperature=temperature, stop_strings=["\x00never"]
        )
        assert [len(g) for g in gens] == [12, 7] and all(g.finish_reason == "length" for g in gens)
        seqs = [np.concatenate([p, g.token_ids]) for p, g in zip(prompts, gens)]
        width = max(map(len, seqs))
        ids = torch.full((2, width), tok.pad_token_id)
        mask = torch.zeros((2, width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.from_numpy(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            lp = policy.logprobs(ids, mask, temperature=temperature)
        for i, (p, g) in enumerate(zip(prompts, gens)):
            assert np.allclose(lp[i, len(p) : len(p) + len(g)].numpy(), g.logprobs, atol=1e-4)
        assert (lp[mask == 0] == 0).all() and (lp[:, 0] == 0).all()
        with torch.no_grad():
            lp2, ent = policy.logprobs_and_entropy(ids, mask, temperature=temperature)
        assert torch.equal(lp, lp2) and (ent[mask == 0] == 0).all()
        assert (ent[:, 1:][mask[:, 1:] == 1] > 0).all() and (ent <= np.log(len(tok)) + 1e-4).all()
    # Left padding does not change a row: greedy alone == greedy in a batch.
    alone = policy.generate(prompts[:1], 6, greedy=True)[0]
    batched = policy.generate(prompts, 6, greedy=True)[0]
    assert np.array_equal(alone.token_ids, batched.token_ids)
    assert np.allclose(alone.logprobs, batched.logprobs, atol=1e-5)


def test_hf_policy_update_weights(tok):
    model = make_tiny_qwen2(tok, seed=0)
    policy = HFPolicy(model, tok)
    ids, mask = torch.tensor([tok.encode(PROMPT)]), torch.ones(1, len(tok.encode(PROMPT)))
    with torch.no_grad():
        before = policy.logprobs(ids, mask)
        policy.update_weights(model.state_dict())  # its own weights: nothing to do
        assert torch.equal(policy.logprobs(ids, mask), before)
        policy.update_weights(make_tiny_qwen2(tok, seed=1).state_dict())
        assert not torch.allclose(policy.logprobs(ids, mask), before)


@contextmanager
def forced(model, token_ids):
    """Make the model emit ``token_ids`` in order (one forward call per token)."""
    calls = {"n": 0}

    def force(module, args, output):
        k = calls["n"]
        calls["n"] += 1
        if k < len(token_ids):
            output.logits[:, -1, token_ids[k]] += 1e4
        return output

    handle = model.register_forward_hook(force)
    try:
        yield
    finally:
        handle.remove()


def test_hf_policy_stops_at_the_closing_tag(tiny_model, tok):
    script = tok.encode("<think> go </think>\n<search> Velmora founder </search>\n\nnot this")
    with forced(tiny_model, script):
        gen = HFPolicy(tiny_model, tok, seed=0).generate([np.array(tok.encode(PROMPT))], 50)[0]
    assert gen.finish_reason == "stop"
    text = tok.decode(gen.token_ids.tolist())
    assert text.endswith("</search>") and text.startswith("<think> go </think>")
    assert np.array_equal(gen.token_ids, script[: len(gen)])


def test_hf_policy_stop_string_ending_inside_a_token(tiny_model, tok):
    script = tok.encode("<think> Velmora founder </think> more words")
    k = next(i for i in range(2, len(script)) if len(tok.decode([script[i]]).strip()) >= 3)
    stop = tok.decode(script[k - 1 : k]) + tok.decode([script[k]])[:2]  # straddles, ends mid-token
    with forced(tiny_model, script):
        gen = HFPolicy(tiny_model, tok).generate(
            [np.array(tok.encode(PROMPT))], 30, stop_strings=[stop]
        )[0]
    assert gen.finish_reason == "stop" and np.array_equal(gen.token_ids, script[: k + 1])
    with forced(tiny_model, script):
        gen = HFPolicy(tiny_model, tok).generate(
            [np.array(tok.encode(PROMPT))], 30, stop_token_ids=[script[3]]
        )[0]
    assert gen.finish_reason == "eos" and np.array_equal(gen.token_ids, script[:4])
    with forced(tiny_model, script):
        gen = HFPolicy(tiny_model, tok).generate([np.array(tok.encode(PROMPT))], 2)[0]
    assert gen.finish_reason == "length" and len(gen) == 2


def test_hf_rollout_end_to_end(vec, tiny_model, tok):
    policy = HFPolicy(tiny_model, tok, seed=3)
    trajectories = collect(vec, policy, group_size=2, seed=0, max_new_tokens=6)
    assert len(trajectories) == 4
    for tr in trajectories:
        check_trajectory(tr, vec)
        # A random model rarely closes a tag: turns end at the budget, the env adds the
        # invalid-action message, and the episode is truncated after max_turns + 1 turns.
        assert tr.turns <= vec.envs[0].protocol.max_turns + 1
    batch = to_batch(trajectories, tok.pad_token_id)
    with torch.no_grad():
        lp = policy.logprobs(batch.input_ids, batch.attention_mask)
    agent = batch.loss_mask == 1
    assert torch.allclose(lp[agent], batch.old_logprobs[agent], atol=1e-4)
