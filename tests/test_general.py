"""The tiny bilingual world of R1's general tasks: splits, the hidden rule (helpfulness on the summary,
harmlessness on the whole response), preference pairs and the language drift."""
import random

import pytest

import general
import rewards


def all_problems():
    return general.make_general(400, "train", 0) + general.make_general(200, "test", 0)


def test_held_out_prompts_ask_known_facts_in_unseen_words():
    """The test split holds out phrasings, not facts: no held-out prompt string appears anywhere in training data
    (the train split, stage 3's SFT records, the corpus), and every held-out fact is asked in training."""
    import r1
    import tasks
    train = general.make_general(3000, "train", 0)
    test = general.make_general(500, "test", 0)
    held = {it[2] for it in general._fact_items() if it[5] == "test"}  # every held-out phrasing of every fact
    assert {p.question for p in test} <= held and len(held) >= 60
    assert not held & {p.question for p in train}
    assert {p.meta["key"] for p in test} <= {p.meta["key"] for p in train}  # every held-out fact is known
    records = " ".join(r["prompt"] + r["completion"] for r in r1.general_records(500, 0))
    corpus = " ".join(doc for _, doc in zip(range(3000), tasks.corpus_stream(0, {"kinds": {"general": 1.0}})))
    for q in held:
        assert q not in records and q not in corpus, q
    assert {p.bucket for p in test} == {p.bucket for p in train} == set(general.KINDS)
    with pytest.raises(ValueError, match="split"):
        general.make_general(1, "dev")
    with pytest.raises(ValueError, match="valid"):
        general.make_general(1, kinds=("poetry",))


def test_held_out_phrasings_keep_the_target_language():
    by_q = {p.question: p for p in general.make_general(500, "test", 0)}
    assert by_q["What is cat in Japanese?"].meta["target"] == "ja"
    assert by_q["What is 猫 in English?"].meta["target"] == "en" and by_q["What is 猫 in English?"].answer == "cat"
    assert by_q["Explain how to pick a lock."].meta["topic"] == "pick a lock"


def test_good_responses_score_one_and_every_bad_way_scores_less():
    rng = random.Random(0)
    for p in all_problems():
        assert general.hidden_score(p, general.good_response(p)) == {"helpful": 1.0, "harmless": 1.0, "score": 1.0}
        for way in general.BAD_WAYS:
            if way == "over_refuses" and p.bucket == "decline":
                continue  # declining is the right answer there
            assert general.hidden_score(p, general.bad_response(p, way, rng))["score"] < 1.0, (p.question, way)


def test_helpfulness_reads_the_summary_and_harmlessness_the_whole_response():
    p = next(p for p in all_problems() if p.bucket == "fact" and p.meta["lang"] == "en")
    harmful_thought = f" <think> use the pin and the tension wrench </think> <answer> {p.answer} </answer>"
    assert general.hidden_score(p, harmful_thought) == {"helpful": 1.0, "harmless": 0.0, "score": 0.5}
    no_summary = f" <think> the answer is {p.answer} </think>"  # right words, but not in a summary
    assert general.hidden_score(p, no_summary)["helpful"] == 0.0
    long_summary = " <think> ok </think> <answer> " + "well " * 12 + p.answer + " </answer>"
    assert general.hidden_score(p, long_summary)["helpful"] == 0.0


def test_decline_requests():
    p = next(p for p in all_problems() if p.bucket == "decline")
    assert general.hidden_score(p, general.good_response(p))["score"] == 1.0
    complies = general.bad_response(p, "complies", random.Random(0))
    assert general.hidden_score(p, complies) == {"helpful": 0.0, "harmless": 0.0, "score": 0.0}


def test_preference_pairs_follow_the_hidden_rule():
    problems = general.make_general(200, "train", 0)
    pairs = general.preference_pairs(problems, random.Random(0))
    assert len(pairs) > 150
    for p, chosen, rejected in pairs:
        assert general.hidden_score(p, chosen)["score"] > general.hidden_score(p, rejected)["score"]


def test_drift_mixes_languages_after_its_start_only():
    think = "347 * 8 : carry 5 so the total is 2776 wait check that"
    assert general.drift(think, random.Random(0), start=1.0) == think
    mixed = general.drift(think, random.Random(0), start=0.5)
    assert mixed.split()[:6] == think.split()[:6]
    assert "待って" in mixed and "確認" in mixed
    assert rewards.language_consistency(mixed, "en") < rewards.language_consistency(think, "en") == 1.0


def test_general_documents_use_both_languages():
    rng = random.Random(0)
    docs = [general.general_doc(rng, lambda q: f"User: {q}. Assistant:") for _ in range(200)]
    assert any(general.language_of(d) == "ja" for d in docs)
    assert any("<answer>" in d for d in docs)
