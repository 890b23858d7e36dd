"""A small template story generator: DEMO DATA, not a substitute for LLM-written stories.

It writes grammatical 3-5 paragraph children's stories that use a given verb, noun and adjective and
show the requested TinyStories features (dialogue, bad ending, moral value, plot twist, foreshadowing,
conflict). Everything is drawn from the `random.Random` passed in, so a seed fixes the story.

Three users: the trainer's offline `demo` corpus (`generate_stories`), the `--backend template` of
`tinystories synth` (the whole pipeline without an API) and the fake OpenAI server in
`tinystories.testing`. A model trained on this corpus learns the templates, nothing more.

Words are always used in their base form in a slot where the base form is grammatical ("wanted to
<verb>", "the <noun> was <adjective>"), so a story provably contains the exact words it was asked for.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from tinystories.vocabulary import ADJECTIVES, FEATURES, NOUNS, VERBS, with_article


@dataclass(frozen=True)
class _Character:
    name: str
    he: str  # subject pronoun
    him: str  # object pronoun
    his: str  # possessive determiner
    hers: str  # possessive pronoun

    @property
    def He(self) -> str:  # noqa: N802 - sentence-initial pronoun reads best as a name
        return self.he.capitalize()

    @property
    def His(self) -> str:  # noqa: N802
        return self.his.capitalize()


def _girl(name: str) -> _Character:
    return _Character(name, "she", "her", "her", "hers")


def _boy(name: str) -> _Character:
    return _Character(name, "he", "him", "his", "his")


_CHARACTERS = tuple(
    [_girl(n) for n in "Lily Mia Sue Anna Lucy Emma Zoe Ella Amy Kate Rosie Daisy Molly Sara Jenny Nina".split()]
    + [_boy(n) for n in "Tom Ben Max Sam Tim Leo Jack Jake Finn Bob Toby Ollie Timmy Joe Alex Billy".split()]
)
_KINDS = ("little girl", "little boy", "bunny", "puppy", "kitten", "bear", "duck", "mouse", "fox", "frog")
_GIRL_KINDS, _BOY_KINDS = ("little girl",), ("little boy",)
_PLACES = ("park", "garden", "forest", "backyard", "field", "meadow", "playground", "village", "yard")
_GROWN_UPS = (("Mom", "she"), ("Dad", "he"), ("Grandma", "she"), ("Grandpa", "he"))
# Nouns one cannot "find lying in the grass": ideas, sounds and times get their own sentences.
_ABSTRACT_NOUNS = frozenset(
    """answer birthday breakfast day dinner dream game idea job joke lesson lunch meal morning music name night
    noise party picnic plan problem question race rule secret smile song sound story surprise thunder trip voice
    week wish word year hug kiss""".split()
)
# Foreshadowing as setup and payoff: (setup, payoff when all ends well, payoff in a bad ending).
_FORESHADOWING = (
    (
        '{grown_up} told {him}, "Be careful near the pond. The stones there are slippery."',
        "When they walked past the pond later, {name} remembered the warning and stepped slowly.",
        "{name} forgot what {grown_up} had said. {He} slipped on the wet stones by the pond.",
    ),
    (
        "{grown_up} said that dark clouds were coming and it might rain before evening.",
        "When the rain came, {name} was already safe inside, just as {grown_up} had said.",
        "Then the rain came, just as {grown_up} had said, and {name} was far from home.",
    ),
    (
        "{name} did not notice that one of {his} shoes had a loose lace.",
        "{name} almost tripped on {his} loose lace, but {he} stopped and tied it first.",
        "{He} tripped on {his} loose lace and fell down hard.",
    ),
)
_MORALS = {
    "share": "sharing makes everyone happy",
    "careful": "it is important to listen and be careful",
    "kind": "being kind is better than being first",
    "honest": "telling the truth is always the right thing to do",
    "patient": "good things come to those who wait",
    "brave": "being brave means trying even when you are scared",
}


def generate_story(
    rng: random.Random,
    verb: str | None = None,
    noun: str | None = None,
    adjective: str | None = None,
    features: Sequence[str] = (),
) -> str:
    """One story using `verb`, `noun` and `adjective` (random from the vocabulary when None) with `features`."""
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown story feature(s) {unknown}; known: {sorted(FEATURES)}")
    verb = verb or rng.choice(VERBS)
    noun = noun or rng.choice(NOUNS)
    adjective = adjective or rng.choice(ADJECTIVES)
    return _StoryWriter(rng, verb, noun, adjective, frozenset(features)).write()


def generate_stories(n: int, seed: int = 0) -> list[str]:
    """DEMO DATA: `n` template stories with random words and features, identical for the same seed."""
    rng = random.Random(seed)
    names = sorted(FEATURES)
    stories = []
    for _ in range(n):
        features = [f for f in names if rng.random() < 0.3]
        stories.append(generate_story(rng, features=features))
    return stories


class _StoryWriter:
    """Writes one story paragraph by paragraph; each method returns one paragraph's sentences."""

    def __init__(self, rng: random.Random, verb: str, noun: str, adjective: str, features: frozenset[str]):
        self.rng, self.verb, self.noun, self.adjective, self.features = rng, verb, noun, adjective, features
        self.hero, self.friend = rng.sample(_CHARACTERS, 2)
        self.kind = (
            rng.choice(_GIRL_KINDS if self.hero.he == "she" else _BOY_KINDS)
            if rng.random() < 0.5
            else (rng.choice(_KINDS[2:]))
        )
        self.place = rng.choice(_PLACES)
        self.grown_up, self.grown_up_he = rng.choice(_GROWN_UPS)
        self.abstract = noun in _ABSTRACT_NOUNS
        self.foreshadowing = [
            line.format(
                grown_up=self.grown_up,
                name=self.hero.name,
                he=self.hero.he,
                He=self.hero.He,
                him=self.hero.him,
                his=self.hero.his,
            )
            for line in rng.choice(_FORESHADOWING)
        ]

    def pick(self, *options: str) -> str:
        return self.rng.choice(options)

    def say(self, speaker: str, words: str, verb: str = "said") -> str:
        """A line of dialogue; without the dialogue feature only sometimes, else "" (callers may narrate instead)."""
        if "dialogue" in self.features or self.rng.random() < 0.3:
            if words.endswith("."):  # "I am here," Tom said.  (but "Look!" Tom said.)
                words = words[:-1] + ","
            return f'"{words}" {speaker} {verb}.'
        return ""

    def write(self) -> str:
        paragraphs = [self.opening(), self.discovery()]
        if "conflict" in self.features:
            paragraphs.append(self.conflict())
        if "plot_twist" in self.features:
            paragraphs.append(self.twist())
        if self.rng.random() < (0.7 if len(paragraphs) == 2 else 0.5 if len(paragraphs) == 3 else 0.0):
            paragraphs.append(self.attempt())
        paragraphs.append(self.bad_ending() if "bad_ending" in self.features else self.happy_ending())
        return "\n\n".join(" ".join(s for s in p if s) for p in paragraphs)

    def opening(self) -> list[str]:
        h, kind = self.hero, self.kind
        start = self.pick(
            f"Once upon a time, there was a {kind} named {h.name}.",
            f"One day, a {kind} named {h.name} went to the {self.place}.",
            f"There was once a {kind} called {h.name} who lived near a big {self.place}.",
            f"{h.name} was a {kind} who liked to play in the {self.place} every day.",
        )
        wish = self.pick(
            f"{h.He} wanted to {self.verb} more than anything.",
            f"More than anything, {h.he} wanted to learn how to {self.verb}.",
            f"{h.He} always dreamed that one day {h.he} could {self.verb} like the big kids.",
        )
        setting = self.pick(
            f"The sun was warm, and the birds were singing in the {self.place}.",
            f"Every morning, {h.he} ate breakfast with {self.grown_up} and talked about the day.",
            f"{h.His} best friend was {self.friend.name}, and they played together all the time.",
            f"{h.He} had a small red hat that {h.he} wore everywhere {h.he} went.",
        )
        sentences = [start, setting, wish]
        if "foreshadowing" in self.features:
            sentences.append(self.foreshadowing[0])
        return sentences

    def discovery(self) -> list[str]:
        h, noun = self.hero, self.noun
        if self.abstract:
            find = self.pick(
                f"One morning, {h.name} kept thinking about the {noun}.",
                f"That day, everyone in the {self.place} was talking about the {noun}.",
            )
        else:
            find = self.pick(
                f"One day, {h.name} found {with_article(noun)} in the {self.place}.",
                f"Near a big tree, {h.name} saw {with_article(noun)}.",
                f"When {h.he} came home, there was {with_article(noun)} waiting by the door.",
            )
        describe = self.pick(
            f"The {noun} was {self.adjective}.",
            f"{h.name} thought the {noun} was {self.adjective}, and {h.he} smiled.",
            f"It was {self.adjective}, and {h.name} could not stop "
            + ("thinking about it." if self.abstract else "looking at it."),
        )
        exclamations = (
            (f"Tell me more about the {noun}!", f"I love the {noun}!")
            if self.abstract
            else (f"Look at the {noun}!", f"I love the {noun}!", "Wow, come and see!")
        )
        line = self.say(h.name, self.pick(*exclamations), self.pick("said", "shouted", "cried"))
        return [find, describe, line]

    def conflict(self) -> list[str]:
        h, f = self.hero, self.friend
        return [
            self.pick(
                f"Then {h.his} friend {f.name} came along. {f.He} wanted the {self.noun} too.",
                f"Soon {f.name} ran over. {f.He} said the {self.noun} was {f.hers}, not {h.name}'s.",
            ),
            self.say(f.name, self.pick("It is mine! Give it to me!", "I saw it first!"), "yelled")
            or f"{f.name} got angry and would not listen.",
            self.pick(
                f"{h.name} and {f.name} pulled and pushed, and both of them felt sad and mad.",
                f"They started to argue, and soon {h.name} wanted to cry.",
            ),
        ]

    def twist(self) -> list[str]:
        h = self.hero
        return [
            self.pick(
                "But then something surprising happened.",
                "Suddenly, something nobody expected happened.",
            ),
            self.pick(
                f"It turned out that {self.grown_up} had known about the {self.noun} all along.",
                f"A little bird flew down and sang a song about the {self.noun}, as if it knew everything.",
            )
            if self.abstract
            else self.pick(
                f"A tiny voice came from behind the {self.noun}. It was a little bird who had been hiding there!",
                f"The {self.noun} had belonged to {self.grown_up} when {self.grown_up_he} was little.",
                f"A big wind came and carried the {self.noun} high up into a tree.",
            ),
            self.say(h.name, "I did not know that!", "gasped") or f"{h.name} could not believe it.",
        ]

    def attempt(self) -> list[str]:
        h = self.hero
        return [
            self.pick(
                f"{h.name} tried to {self.verb}, but it was hard at first.",
                f"{h.name} asked {self.grown_up} to help {h.him} {self.verb}.",
                f"Every day, {h.name} practiced. {h.He} wanted to {self.verb} all by {h.him}self.",
            ),
            self.say(self.grown_up, self.pick("You can do it!", "Try again, slowly.", "I believe in you."))
            or f"{self.grown_up} smiled and watched.",
        ]

    def happy_ending(self) -> list[str]:
        h, f = self.hero, self.friend
        sentences = []
        if "conflict" in self.features:
            sentences.append(
                f"At last, {h.name} said sorry, and {f.name} said sorry too. They decided to take turns and play"
                " together."
            )
        if "foreshadowing" in self.features:
            sentences.append(self.foreshadowing[1])
        sentences.append(
            self.pick(
                f"In the end, {h.name} learned to {self.verb}, and {h.he} was very happy.",
                f"That night, {h.name} went to bed with a big smile. {h.He} could {self.verb} now!",
                f"{h.name} hugged {self.grown_up} and they went home together, happy and warm.",
            )
        )
        sentences.append(
            self.pick(
                "It was the best day ever.",
                f"{h.He} could not wait to play again tomorrow.",
                f"{self.grown_up} gave {h.him} a big hug and said {h.he} did a great job.",
            )
        )
        if "moral_value" in self.features:
            sentences.append(self.moral())
        return sentences

    def bad_ending(self) -> list[str]:
        h = self.hero
        sentences = []
        if "foreshadowing" in self.features:
            sentences.append(self.foreshadowing[2])
        sentences.append(
            self.pick(
                f"The {self.noun} was lost, and {h.name} never got to {self.verb} that day.",
                f"{h.name} cried and cried. {h.He} did not get to {self.verb}, and nobody could fix it.",
                f"In the end, {h.name} went home alone and sad. It was not a good day.",
            )
        )
        if "moral_value" in self.features:
            sentences.append(self.moral())
        return sentences

    def moral(self) -> str:
        if "conflict" in self.features:
            lesson = _MORALS[self.pick("share", "kind")]
        elif "foreshadowing" in self.features:
            lesson = _MORALS["careful"]
        else:
            lesson = _MORALS[self.pick("honest", "patient", "brave")]
        return f"{self.hero.name} learned that {lesson}."
