"""Protocol presets: one scripted episode per paper's tags, prompt and documents block."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from search_env.protocol import PRESETS, ProtocolConfig, parse_turn, protocol_preset

# preset -> (search turn, what the information block starts with, answer turn, answer read)
SCRIPTS = {
    "search-r1": (
        "<think> look </think><search> capital of Norway </search>",
        '\n\n<information>Doc 1(Title: "Oslo") Oslo is the capital of Norway.\n',
        "<think> ok </think><answer> Oslo </answer>",
        "Oslo",
    ),
    "r1-searcher": (
        "<think> look <|begin_of_query|> capital of Norway<|end_of_query|>",
        '\n\n<|begin_of_documents|>\n(1)"Oslo" Oslo is the capital of Norway.\n',
        "seen it </think>\n\n<answer> Oslo </answer>",
        "Oslo",
    ),
    "research": (
        "<think> look </think> <search> capital of Norway </search>",
        ' <result>\n"Oslo"\nOslo is the capital of Norway.\n\n',
        "<think> ok </think> <answer> The final answer is \\[ \\boxed{Oslo} \\] </answer>",
        "Oslo",
    ),
    "autorefine": (
        "<think> look </think><search> capital of Norway </search>",
        '\n\n<documents>Doc 1(Title: "Oslo") Oslo is the capital of Norway.\n',
        "<refine> Oslo is the capital </refine><think> ok </think><answer> Oslo </answer>",
        "Oslo",
    ),
}


def test_every_preset_has_a_script():
    assert set(SCRIPTS) == set(PRESETS)
    assert PRESETS["search-r1"] == ProtocolConfig()  # Search-R1 stays the default


@pytest.mark.parametrize("mode", ["chunk", "token"])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_scripted_episode_per_preset(make_env, tokenizer, retriever, name, mode):
    search, block, answer, parsed = SCRIPTS[name]
    preset = PRESETS[name]
    env = make_env(protocol=name, action_mode=mode)
    assert env.protocol == preset
    obs, info = env.reset(options={"index": 0})
    prompt = tokenizer.decode(obs["tokens"][: int(obs["length"][0])].tolist())
    assert preset.template.split("{question}")[0][:60] in prompt
    steps = []
    for text in (search, answer):
        ids = tokenizer.encode(text)
        if mode == "chunk":
            steps.append(env.step(ids))
            continue
        for n, tid in enumerate(ids, start=1):
            out = env.step(tid)
            if out[4]["turn_ended"]:
                break
        assert n == len(ids)  # the turn ends on the preset's closing tag, not before
        steps.append(out)
    (obs1, _, term1, _, info1), (obs, reward, term, trunc, info) = steps
    assert info1["action"] == "search" and info1["query"] == "capital of Norway"
    assert retriever.calls == [["capital of Norway"]] and len(retriever.calls[0]) == 1
    context = tokenizer.decode(obs1["tokens"][: int(obs1["length"][0])].tolist())
    assert block in context
    assert context.endswith(preset.information_format.split("{docs}")[1])
    assert term and not trunc and reward == 1.0
    assert info["answer"] == parsed
    length = int(obs["length"][0])
    agent = obs["tokens"][:length][obs["mask"][:length] == 1].tolist()
    assert agent == tokenizer.encode(search) + tokenizer.encode(answer)


def test_token_and_chunk_mode_agree_per_preset(make_env, tokenizer):
    for name, (search, _, answer, _) in SCRIPTS.items():
        outs = []
        for mode in ("token", "chunk"):
            env = make_env(protocol=name, action_mode=mode)
            env.reset(options={"index": 0})
            for text in ("no tags at all<|endoftext|>", search, answer):
                ids = tokenizer.encode(text)
                if mode == "chunk":
                    env.step(ids)
                else:
                    for tid in ids:
                        if env.step(tid)[4]["turn_ended"]:
                            break
            outs.append((env.context_ids.tolist(), env.loss_mask.tolist()))
        assert outs[0] == outs[1], name


def test_scanner_follows_the_preset_tags(make_env, tokenizer, retriever):
    """Under r1-searcher a Search-R1 ``</search>`` ends nothing and searches nothing."""
    env = make_env(protocol="r1-searcher", action_mode="token")
    env.reset(options={"index": 0})
    ids = tokenizer.encode("<search> capital of Norway </search> still thinking")
    for tid in ids:
        obs, reward, term, trunc, info = env.step(tid)
        assert not info["turn_ended"]
    assert retriever.calls == []
    ids = tokenizer.encode("<|begin_of_query|> Oslo<|end_of_query|>")
    for tid in ids:
        info = env.step(tid)[4]
    assert info["turn_ended"] and info["query"] == "Oslo"


def test_parse_turn_with_preset_tags_and_boxed_answers():
    r1 = PRESETS["r1-searcher"]
    assert parse_turn("<|begin_of_query|> a b <|end_of_query|>", r1).content == "a b"
    assert parse_turn("<search> a </search>", r1).kind == "invalid"
    research = PRESETS["research"]
    assert parse_turn("<answer> \\boxed{x {y}} </answer>", research).content == "x {y}"
    assert parse_turn("<answer> plain </answer>", research).content == "plain"
    assert parse_turn("<answer> \\boxed{x} </answer>").content == "\\boxed{x}"  # default


def test_gym_make_takes_a_preset_name(tokenizer):
    env = gym.make("SearchQA-Synth-v0", size="tiny", protocol="autorefine", action_mode="chunk")
    assert env.unwrapped.protocol.refine_tags == ("<refine>", "</refine>")
    obs, _ = env.reset(seed=0)
    assert "<refine>" in env.unwrapped.tokenizer.decode(obs["tokens"][: obs["length"][0]])
    env.close()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"protocol": "nope"}, ValueError, "unknown protocol preset 'nope'"),
        ({"protocol": 3}, TypeError, "preset name"),
    ],
)
def test_bad_preset_arguments(make_env, kwargs, error, match):
    with pytest.raises(error, match=match):
        make_env(**kwargs)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"search_tags": ("<q>",)}, "search_tags"),
        ({"answer_tags": ("<search>", "</search>")}, "must differ"),
        ({"information_tags": ("<docs>", "</docs>")}, "information_tags"),
        ({"refine_tags": ("", "</r>")}, "refine_tags"),
    ],
)
def test_bad_tag_fields(fields, match):
    with pytest.raises(ValueError, match=match):
        ProtocolConfig(**fields)


def test_protocol_preset_overrides():
    p = protocol_preset("research", topk=2)
    assert p.topk == 2 and p.information_tags == ("<result>", "</result>")
    assert np.all([PRESETS[n].stop_strings[1] == "</answer>" for n in PRESETS])
