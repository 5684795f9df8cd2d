"""Answer normalisation and metrics, checked by hand."""

import pytest

from search_env.rewards import cover_exact_match, exact_match, f1, make_reward, normalize


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("The Beatles", "beatles"),
        ("  an   Apple, a day!  ", "apple day"),
        ("U.S.A.", "usa"),
        ("Theatre of the Absurd", "theatre of absurd"),
        ("A", ""),
        ("Zürich", "zürich"),
        ("anthem", "anthem"),
    ],
)
def test_normalize(raw, norm):
    assert normalize(raw) == norm


def test_exact_match_any_gold():
    assert exact_match("the Beatles", ["Rolling Stones", "Beatles"]) == 1.0
    assert exact_match("Beatles band", ["Beatles"]) == 0.0
    assert exact_match(None, ["x"]) == 0.0
    assert exact_match("", [""]) == 1.0


def test_cover_em():
    assert cover_exact_match("It was the Beatles, surely", ["beatles"]) == 1.0
    assert cover_exact_match("Stones", ["beatles"]) == 0.0
    assert cover_exact_match("anything", [""]) == 0.0


def test_f1_by_hand():
    # pred tokens: [new, york, city]; gold: [new, york]; overlap 2 -> p=2/3, r=1 -> 0.8
    assert f1("New York City", ["New York"]) == pytest.approx(0.8)
    assert f1("Paris", ["London", "paris"]) == 1.0
    assert f1("x", ["y"]) == 0.0
    assert f1(None, ["y"]) == 0.0


def test_make_reward():
    em = make_reward()
    assert em("Paris", ["paris"]) == 1.0 and em(None, ["paris"]) == 0.0
    shaped = make_reward("em", format_score=0.2)
    assert shaped("Lyon", ["paris"]) == 0.2 and shaped(None, ["paris"]) == 0.0
    with pytest.raises(ValueError, match="unknown reward metric"):
        make_reward("bleu")
    with pytest.raises(ValueError):
        make_reward("em", format_score=2)


def test_f1_format_score_never_ranks_a_wrong_answer_above_a_partly_right_one():
    shaped = make_reward("f1", format_score=0.5)
    # pred [new, york, city] vs gold [new, york]: f1 0.8, above the format score
    assert shaped("New York City", ["New York"]) == pytest.approx(0.8)
    # pred [york, city, state, usa] vs [new, york]: overlap 1, p=1/4, r=1/2 -> f1 1/3 < 0.5
    partly = shaped("York City State USA", ["New York"])
    wrong = shaped("Boston", ["New York"])
    assert partly == pytest.approx(0.5) and wrong == pytest.approx(0.5)
    assert partly >= wrong and shaped(None, ["New York"]) == 0.0
    assert shaped("New York", ["new york"]) == 1.0


def test_cover_em_format_score_by_hand():
    shaped = make_reward("cover_em", format_score=0.3)
    assert shaped("it was the Beatles", ["beatles"]) == 1.0
    assert shaped("Stones", ["beatles"]) == pytest.approx(0.3)
    assert shaped("", ["beatles"]) == pytest.approx(0.3)  # answered, but empty: well formed, wrong
    assert shaped(None, ["beatles"]) == 0.0
