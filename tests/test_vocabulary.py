"""The child vocabulary, its inflection helpers and the template story generator."""

from __future__ import annotations

import random
import re

import pytest

from tinystories import story_templates, vocabulary
from tinystories.vocabulary import (
    ADJECTIVES,
    FEATURES,
    NOUNS,
    VERBS,
    comparative,
    past_tense,
    plural,
    present_participle,
    third_person,
    with_article,
    word_forms,
)


@pytest.mark.parametrize("words", [VERBS, NOUNS, ADJECTIVES], ids=["verbs", "nouns", "adjectives"])
def test_word_lists_are_about_500_clean_unique_words(words):
    assert 450 <= len(words) <= 550
    assert len(set(words)) == len(words), sorted(w for w in set(words) if words.count(w) > 1)
    bad = [w for w in words if not re.fullmatch(r"[a-z]+", w)]
    assert not bad


def test_the_vocabulary_has_about_1500_words():
    assert 1400 <= len(VERBS) + len(NOUNS) + len(ADJECTIVES) <= 1600


def test_features_are_the_papers_six():
    assert set(FEATURES) == {"dialogue", "bad_ending", "moral_value", "plot_twist", "foreshadowing", "conflict"}
    assert set(vocabulary.FEATURE_LABELS) == set(FEATURES)
    assert all(phrase and phrase == phrase.strip() for phrase in FEATURES.values())


@pytest.mark.parametrize(
    "verb, forms",
    [
        ("stop", ("stops", "stopped", "stopping")),
        ("cry", ("cries", "cried", "crying")),
        ("tie", ("ties", "tied", "tying")),
        ("dance", ("dances", "danced", "dancing")),
        ("buzz", ("buzzes", "buzzed", "buzzing")),
        ("play", ("plays", "played", "playing")),
        ("visit", ("visits", "visited", "visiting")),
        ("begin", ("begins", "began", "beginning")),
        ("run", ("runs", "ran", "running")),
        ("go", ("goes", "went", "going")),
        ("agree", ("agrees", "agreed", "agreeing")),
    ],
)
def test_verb_inflection(verb, forms):
    assert (third_person(verb), past_tense(verb), present_participle(verb)) == forms


def test_noun_adjective_and_article_helpers():
    assert [plural(n) for n in ("box", "baby", "toy", "mouse", "knife", "fish")] == [
        "boxes",
        "babies",
        "toys",
        "mice",
        "knives",
        "fish",
    ]
    assert comparative("big") == ("bigger", "biggest")
    assert comparative("happy") == ("happier", "happiest")
    assert comparative("good") == ("better", "best")
    assert comparative("curious") == ("more curious", "most curious")
    assert [with_article(w) for w in ("apple", "unicorn", "milk", "dog")] == [
        "an apple",
        "a unicorn",
        "some milk",
        "a dog",
    ]
    assert word_forms("run", "verb") == {"run", "runs", "ran", "running"}
    assert word_forms("curious", "adjective") == {"curious"}
    with pytest.raises(ValueError, match="part_of_speech"):
        word_forms("run", "adverb")


def test_inflected_forms_stay_distinct_and_well_formed():
    # two verbs collapsing to one -ing form would mean a spelling rule mangled one of them
    ing_forms = [present_participle(v) for v in VERBS]
    assert len(set(ing_forms)) == len(VERBS)
    for part_of_speech, words in vocabulary.WORDS_BY_PART_OF_SPEECH.items():
        for word in words:
            forms = word_forms(word, part_of_speech)
            assert word in forms and all(re.fullmatch(r"[a-z]+", f) for f in forms), word


def _paragraphs(story: str) -> list[str]:
    return [p for p in story.split("\n\n") if p.strip()]


def test_generated_story_uses_the_requested_words_and_has_3_to_5_paragraphs():
    rng = random.Random(0)
    for _ in range(300):
        verb, noun, adjective = rng.choice(VERBS), rng.choice(NOUNS), rng.choice(ADJECTIVES)
        features = [f for f in FEATURES if rng.random() < 0.4]
        story = story_templates.generate_story(rng, verb, noun, adjective, features)
        words = set(re.findall(r"[a-z]+", story.lower()))
        assert {verb, noun, adjective} <= words, (verb, noun, adjective, story)
        assert 3 <= len(_paragraphs(story)) <= 5, story
        assert story.count('"') % 2 == 0, story
        assert "  " not in story and " ." not in story


def test_features_leave_visible_traces():
    rng = random.Random(1)
    for _ in range(50):
        assert '"' in story_templates.generate_story(rng, features=["dialogue"])
        assert "learned that" in story_templates.generate_story(rng, features=["moral_value"])
        assert "surprising" in story_templates.generate_story(rng, features=["plot_twist"]) or "nobody expected" in (
            story_templates.generate_story(random.Random(2), features=["plot_twist"])
        )
        sad = story_templates.generate_story(rng, features=["bad_ending"])
        assert "happy" not in _paragraphs(sad)[-1]


def test_unknown_feature_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown story feature"):
        story_templates.generate_story(random.Random(0), features=["romance"])


def test_demo_corpus_is_deterministic_and_varied():
    a = story_templates.generate_stories(200, seed=3)
    assert a == story_templates.generate_stories(200, seed=3)
    assert a != story_templates.generate_stories(200, seed=4)
    assert len(set(a)) == 200
    first_sentences = {s.split(".")[0].split(" ")[0] for s in a}
    assert len(first_sentences) > 10
