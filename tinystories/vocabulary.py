"""The child vocabulary and the story features of TinyStories (Eldan & Li, 2023), section 2.

The paper builds its corpus by asking an LLM for a story that must use one random verb, one random noun
and one random adjective from a list of about 1,500 basic words a 3- or 4-year-old understands, plus a
random subset of story features. The word lists below were written for this project (not copied from
the paper): base forms, lower case, one word each, no duplicates within a list. A word may appear in
two lists when it is genuinely both ("orange", "light").

Inflection helpers live here too because every user of the word lists needs them: a story that uses
"ran" used the verb "run", a prompt needs "an apple" and "some milk".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


VERBS: tuple[str, ...] = _words(
    """
    accept add admire agree allow amaze answer apologize appear arrive ask avoid bake balance bang bark bathe
    beg begin believe bend bite blink bloom blossom blow blush boil borrow bother bounce bow brag break breathe
    bring brush bubble buckle build bump burn burp bury button buy buzz call calm camp care carry catch
    celebrate change chase chat check cheer chew chirp chomp choose chop chuckle clap clean clear climb cling
    clip close cluck collect color comb come complain coo cook copy cough count cover crack cradle crash crawl
    creep cross crunch cry cuddle curl cut dance dare dash decide decorate dig dip disappear discover dive
    doodle drag draw dream dress drift drink drip drive drop drum dry dunk dust eat empty end enjoy enter escape
    explore fall fan fear feed feel fetch fight fill find finish fish fit fix flap flash flip float flood flow
    flutter fly fold follow forget forgive free freeze frown fry gallop gasp gather gaze get giggle give glide
    glow glue go gobble grab greet grin grip groan grow growl grunt guard guess guide hammer hang happen hatch
    hear help hiccup hide hike hiss hit hold honk hook hop hope howl hug hum hunt hurry hurt hush imagine invite
    itch jiggle jog join joke juggle jump keep kick kiss kneel knock know land laugh lay lead leak lean learn
    leave let lick lie lift like listen live load lock look lose love make march match meet melt meow miss mix
    moo mop move munch nap need neigh nibble nod notice offer oink open pack paddle paint park pass pat pay peck
    pedal peek peel peep pet pick pile pinch place plan plant play please plop point poke pop pounce pour
    practice prepare press pretend promise protect puff pull pump purr push put quack race rain rake reach read
    relax remember remind repair repeat rescue rest return ride ring rinse rip rise roar roast rock roll row rub
    ruin rule run rush sail save say scare scoop scoot scratch scream scribble scrub search see sell send serve
    shake share shine shiver shop shout show shut sigh sing sink sip sit skate skip slam sleep slice slide slip
    slurp smash smell smile snap sneak sneeze sniff snip snooze snore snow snuggle soak soar sort sparkle speak
    spill spin splash splatter spot spray spread sprinkle spy squash squawk squeak squeal squeeze squirt stack
    stamp stand stare start stay steal step stick stir stomp stop stretch stroke study stumble surprise swallow
    swap sweep swim swing swirl switch tag take talk tap taste teach tear tease tell thank thaw think throw
    thump tickle tidy tie tip tiptoe toast toddle toss touch train trap travel tremble trick trip trot trust try
    tuck tug tumble turn tweet twinkle twirl twist understand unlock unpack unwrap use visit wag wail wait wake
    walk wander want warm warn wash watch wave wear welcome whinny whisper whistle wiggle win wink wipe wish
    wobble wonder work worry wrap write yawn yell zip zoom
    """
)

NOUNS: tuple[str, ...] = _words(
    """
    acorn airplane ambulance answer ant apple arm aunt baby back backpack bag baker ball balloon banana barn
    basket basketball bat bath beach bead beak bean bear bed bee beetle bell belly bench berry bike bird
    birthday biscuit blanket block blueberry boat bone book boot bottle bowl box boy branch bread breakfast
    brick bridge broccoli broom brother brush bubble bucket bug bull bunny bus bush butter butterfly button cake
    calf camel camera candle candy cap car card carrot castle cat caterpillar cave cereal chair cheek cheese
    cherry chest chick chicken child chin chocolate circle circus city clock cloud clown coat coin color comb
    cookie corn couch cousin cow crab cracker crayon crocodile crow crown cub cup cupcake dad daisy day deer
    desk dinner dinosaur dish doctor dog doll dolphin donkey door dragon dragonfly dream dress driver drum duck
    eagle ear egg elephant eye face fairy family fan farm farmer feather fence field finger fire firefly
    firetruck fish flag flamingo flashlight floor flower foot football forest fork fox fridge friend frog game
    garden gate ghost giant gift giraffe girl glass glove glue goat goldfish goose gorilla grandma grandpa grape
    grass guitar hammer hamster hand hat head heart hedgehog helicopter helmet hen hill hippo hole home honey
    hook horn horse hospital house hug ice idea island jacket jam jar jellyfish job joke juice jungle kangaroo
    key king kiss kitchen kite kitten knee knife knight koala ladder lady ladybug lake lamb lamp leaf leg lemon
    lemonade lesson letter library lid light lion lip lizard lock log lollipop lunch man map marble mask mat
    meadow meal melon milk mirror mitten mom monkey monster moon morning moth mountain mouse mouth mud muffin
    mug mushroom music nail name neck neighbor nest net night noise noodle nose note number nurse nut ocean
    octopus orange otter oven owl pail paint paintbrush pan pancake panda paper park parrot party path paw pea
    peach peacock pear pebble pen pencil penguin phone piano picnic picture pie pig pillow pilot pineapple
    pirate pizza plan plane plate playground plum pocket pond pony pool popcorn pot potato present prince
    princess prize problem puddle pumpkin puppet puppy puzzle queen question rabbit raccoon race radio rain
    rainbow raindrop rat ribbon rice ring river road robin robot rock rocket roof room rooster root rope rose
    rug rule sailor salad sand sandwich scarf school scooter sea seal secret seed shadow shape shark sheep shelf
    shell ship shirt shoe shop shoulder shovel sign sink sister skateboard skirt sky sled slide slipper smile
    smoke snack snail snake snow snowflake snowman soap sock sofa song sound soup spider spoon square squirrel
    stamp star starfish stick sticker stone store storm story stove strawberry stream street string sugar sun
    sunflower surprise swan sweater swing sword table tail teacher tent thumb thunder tiger toad toast toe
    tomato tongue tooth toothbrush towel town toy tractor train treasure treat tree triangle trip truck trumpet
    tub tulip tummy turkey turtle umbrella uncle unicorn van village voice waffle wagon wall wand watch water
    watermelon wave week whale wheel whistle wind window wing wish wizard wolf woman word worm yard year zebra
    zipper zoo
    """
)

ADJECTIVES: tuple[str, ...] = _words(
    """
    active adorable afraid alone amazing ancient angry annoyed anxious ashamed asleep awake awesome awful bad
    bare beautiful bendy bent big bitter black blank blind blue bold bored bossy bouncy brave bright brilliant
    brisk broken brown bubbly bumpy busy calm careful careless caring charming chatty cheap cheeky cheerful
    cheery chewy chilly chubby clean clear clever closed cloudy clumsy cold colorful comfy confused cool cozy
    cranky crazy creamy creepy crisp crispy crooked crowded cruel crumbly crunchy crusty cuddly curious curly
    curvy cute dainty damp dangerous dark deaf dear deep delicate delicious delightful determined different
    difficult dim dirty dizzy dreamy dry dull dusty eager early easy elegant empty enchanted endless energetic
    enormous equal even excellent excited exciting expensive extra fabulous fair faithful famous fancy fantastic
    far fast fat favorite fearful fearless fearsome feathery fierce fine firm fit fizzy flat flowery fluffy
    foggy fond foolish forgetful fragile free fresh friendly frightened frisky frizzy frosty frozen fruity full
    fun funny furry fuzzy generous gentle giant gigantic giggly glad glassy glittery gloomy glorious glossy
    glowing golden good gooey gorgeous graceful grand grassy grateful gray greasy great greedy green gritty
    grouchy grumpy guilty hairy handsome handy happy hard harmless healthy heavy helpful helpless hidden high
    hilarious hollow honest hopeful horrible hot huge humble humid hungry hurt icy important innocent itchy
    jealous jolly joyful juicy jumpy kind knotty large late lazy leafy leaky light little lively lonely lonesome
    long loose lost loud lovable lovely loving low loyal lucky lumpy mad magic magical magnificent marvelous
    mean merry messy mighty mild mini misty modern moldy muddy mushy mysterious narrow nasty naughty near neat
    needy nervous new nice nimble noble noisy nosy nutty obedient odd oily old open orange ordinary pale patient
    peaceful perfect perky pink plain plastic playful pleasant pleased plump pointy polished polite poor
    powerful precious pretty prickly proud puffy purple quick quiet quirky ragged rainy rare ready real red
    relaxed rich ripe rocky rosy rotten rough round rowdy royal rubbery rude rusty sad safe salty sandy scared
    scary scratchy scrawny scruffy secret selfish shady shaggy shaky shallow sharp shiny shivery shocked short
    shy sick silent silky silly silver simple skinny sleek sleepy slick slim slimy slippery sloppy slow small
    smart smelly smiley smoky smooth sneaky snowy snug soaked soapy soft soggy sore sorry sour sparkling sparkly
    special speedy spicy spiky splendid spooky spotless spotted spotty springy square squeaky squishy starry
    steady steep sticky stiff stinky stormy straight strange stretchy strict striped strong stubborn stuffy
    sturdy sudden sugary sunny super surprised sweaty sweet swift swollen tall tame tangled tasteless tasty
    teeny tender tense terrible thankful thick thin thirsty thorny thoughtful thundery ticklish tidy tight timid
    tiny tired toasty tough tricky troubled true trusty tubby twisty ugly unhappy untidy unusual upset useful
    useless velvety warm watery wavy weak weary weird wet white whole wide wiggly wild windy wiry wise wobbly
    wonderful wooden woolly worried wriggly wrong yellow young yummy zippy
    """
)

# Nouns that take "some" rather than "a"/"an" and have no plural in ordinary speech.
UNCOUNTABLE_NOUNS: frozenset[str] = frozenset(
    """
    bread breakfast broccoli butter cereal cheese chocolate corn dinner glue grass honey ice jam juice lemonade
    lunch milk mud music paint paper popcorn rain rice sand smoke snow soap soup sugar thunder toast water
    """.split()
)

# Feature name -> the phrase the paper's prompt uses for it.
FEATURES: dict[str, str] = {
    "dialogue": "the story should contain at least one dialogue",
    "bad_ending": "the story has a bad ending",
    "moral_value": "the story has a moral value",
    "plot_twist": "something unexpected happens / there is a plot twist",
    "foreshadowing": "the narrative uses foreshadowing or setup and payoff",
    "conflict": "the story has some sort of conflict",
}

# Feature name -> the label the Instruct layout prints ("Features: Dialogue, Twist").
FEATURE_LABELS: dict[str, str] = {
    "dialogue": "Dialogue",
    "bad_ending": "BadEnding",
    "moral_value": "MoralValue",
    "plot_twist": "Twist",
    "foreshadowing": "Foreshadowing",
    "conflict": "Conflict",
}

PARTS_OF_SPEECH = ("verb", "noun", "adjective")

# fmt: off
_IRREGULAR_VERBS: dict[str, tuple[str, str]] = {  # base -> (past, past participle)
    "begin": ("began", "begun"), "bend": ("bent", "bent"), "bite": ("bit", "bitten"), "blow": ("blew", "blown"),
    "break": ("broke", "broken"), "bring": ("brought", "brought"), "build": ("built", "built"),
    "buy": ("bought", "bought"), "catch": ("caught", "caught"), "choose": ("chose", "chosen"),
    "cling": ("clung", "clung"), "come": ("came", "come"), "creep": ("crept", "crept"), "cut": ("cut", "cut"),
    "dig": ("dug", "dug"), "dive": ("dove", "dived"), "draw": ("drew", "drawn"), "drink": ("drank", "drunk"),
    "drive": ("drove", "driven"), "eat": ("ate", "eaten"), "fall": ("fell", "fallen"), "feed": ("fed", "fed"),
    "feel": ("felt", "felt"), "fight": ("fought", "fought"), "find": ("found", "found"), "fit": ("fit", "fit"),
    "fly": ("flew", "flown"), "forget": ("forgot", "forgotten"), "forgive": ("forgave", "forgiven"),
    "freeze": ("froze", "frozen"), "get": ("got", "gotten"), "give": ("gave", "given"), "go": ("went", "gone"),
    "grow": ("grew", "grown"), "hang": ("hung", "hung"), "hear": ("heard", "heard"), "hide": ("hid", "hidden"),
    "hit": ("hit", "hit"), "hold": ("held", "held"), "hurt": ("hurt", "hurt"), "keep": ("kept", "kept"),
    "kneel": ("knelt", "knelt"), "know": ("knew", "known"), "lay": ("laid", "laid"), "lead": ("led", "led"),
    "leave": ("left", "left"), "let": ("let", "let"), "lie": ("lay", "lain"), "lose": ("lost", "lost"),
    "make": ("made", "made"), "meet": ("met", "met"), "pay": ("paid", "paid"), "put": ("put", "put"),
    "read": ("read", "read"), "ride": ("rode", "ridden"), "ring": ("rang", "rung"), "rise": ("rose", "risen"),
    "run": ("ran", "run"), "say": ("said", "said"), "see": ("saw", "seen"), "sell": ("sold", "sold"),
    "send": ("sent", "sent"), "shake": ("shook", "shaken"), "shine": ("shone", "shone"), "shut": ("shut", "shut"),
    "sing": ("sang", "sung"), "sink": ("sank", "sunk"), "sit": ("sat", "sat"), "sleep": ("slept", "slept"),
    "slide": ("slid", "slid"), "sneak": ("snuck", "snuck"), "speak": ("spoke", "spoken"), "spin": ("spun", "spun"),
    "spread": ("spread", "spread"), "stand": ("stood", "stood"), "stick": ("stuck", "stuck"),
    "sweep": ("swept", "swept"), "swim": ("swam", "swum"), "swing": ("swung", "swung"), "take": ("took", "taken"),
    "teach": ("taught", "taught"), "tear": ("tore", "torn"), "tell": ("told", "told"), "think": ("thought", "thought"),
    "throw": ("threw", "thrown"), "understand": ("understood", "understood"), "wake": ("woke", "woken"),
    "wear": ("wore", "worn"), "win": ("won", "won"), "write": ("wrote", "written"), "spill": ("spilled", "spilled"),
    "steal": ("stole", "stolen"),
}
# fmt: on

_IRREGULAR_PLURALS: dict[str, str] = {
    "mouse": "mice",
    "sheep": "sheep",
    "fish": "fish",
    "deer": "deer",
    "goose": "geese",
    "foot": "feet",
    "tooth": "teeth",
    "child": "children",
    "man": "men",
    "woman": "women",
    "leaf": "leaves",
    "wolf": "wolves",
    "knife": "knives",
    "shelf": "shelves",
    "scarf": "scarves",
    "calf": "calves",
    "goldfish": "goldfish",
    "jellyfish": "jellyfish",
    "starfish": "starfish",
    "potato": "potatoes",
    "tomato": "tomatoes",
}

_IRREGULAR_COMPARISON: dict[str, tuple[str, str]] = {
    "good": ("better", "best"),
    "bad": ("worse", "worst"),
    "far": ("farther", "farthest"),
    "little": ("littler", "littlest"),
}

_VOWELS = "aeiou"
_STRESSED_LAST_SYLLABLE = frozenset({"begin", "forget", "admit", "prefer", "regret", "control", "upset", "unwrap"})
# Adjectives that never take -er/-est although they are short.
_NO_SUFFIX_COMPARISON = frozenset(
    "fun hurt lost bent real whole magic mini super square extra giant loyal royal wrong purple".split()
)


def _syllables(word: str) -> int:
    groups, previous = 0, False
    for ch in word:
        vowel = ch in _VOWELS or ch == "y"
        groups += vowel and not previous
        previous = vowel
    return max(1, groups - (word.endswith("e") and not word.endswith(("le", "ee")) and groups > 1))


def _doubles_final_consonant(word: str) -> bool:
    """Short words ending consonant-vowel-consonant double it: stop -> stopped, big -> bigger."""
    return (
        len(word) >= 3
        and _syllables(word) == 1
        and word[-1] not in _VOWELS + "wxy"
        and word[-2] in _VOWELS
        and word[-3] not in _VOWELS
    ) or word in _STRESSED_LAST_SYLLABLE


def third_person(verb: str) -> str:
    if verb.endswith(("s", "x", "z", "ch", "sh", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in _VOWELS:
        return verb[:-1] + "ies"
    return verb + "s"


def past_tense(verb: str) -> str:
    if verb in _IRREGULAR_VERBS:
        return _IRREGULAR_VERBS[verb][0]
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in _VOWELS:
        return verb[:-1] + "ied"
    if _doubles_final_consonant(verb):
        return verb + verb[-1] + "ed"
    return verb + "ed"


def past_participle(verb: str) -> str:
    return _IRREGULAR_VERBS[verb][1] if verb in _IRREGULAR_VERBS else past_tense(verb)


def present_participle(verb: str) -> str:
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if verb.endswith("e") and not verb.endswith(("ee", "oe", "ye")) and verb != "be":
        return verb[:-1] + "ing"
    if _doubles_final_consonant(verb):
        return verb + verb[-1] + "ing"
    return verb + "ing"


def plural(noun: str) -> str:
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in _VOWELS:
        return noun[:-1] + "ies"
    return noun + "s"


def comparative(adjective: str) -> tuple[str, str]:
    """Comparative and superlative: (bigger, biggest), (happier, happiest), (more curious, most curious)."""
    if adjective in _IRREGULAR_COMPARISON:
        return _IRREGULAR_COMPARISON[adjective]
    syllables = _syllables(adjective)
    short = syllables == 1 or (syllables == 2 and adjective.endswith(("y", "le", "ow")))
    if not short or adjective in _NO_SUFFIX_COMPARISON or adjective.endswith(("ed", "ing")):
        return f"more {adjective}", f"most {adjective}"
    if adjective.endswith("e"):
        return adjective + "r", adjective + "st"
    if adjective.endswith("y") and adjective[-2] not in _VOWELS:
        return adjective[:-1] + "ier", adjective[:-1] + "iest"
    if adjective.endswith("y"):
        return f"more {adjective}", f"most {adjective}"
    if _doubles_final_consonant(adjective):
        return adjective + adjective[-1] + "er", adjective + adjective[-1] + "est"
    return adjective + "er", adjective + "est"


def indefinite_article(word: str) -> str:
    """'a' or 'an' for the word that follows; sounds, not letters, decide (an honest, a unicorn)."""
    w = word.lower()
    if w.startswith(("uni", "use", "usu", "uk", "eu", "one")):
        return "a"
    if w.startswith("hon") or w[:1] in _VOWELS:
        return "an"
    return "a"


def with_article(noun_phrase: str, head_noun: str | None = None) -> str:
    """'a red ball', 'an apple', 'some milk' (the head noun decides countability)."""
    head = head_noun or noun_phrase.split()[-1]
    if head in UNCOUNTABLE_NOUNS:
        return f"some {noun_phrase}"
    return f"{indefinite_article(noun_phrase)} {noun_phrase}"


@functools.lru_cache(maxsize=8192)
def word_forms(word: str, part_of_speech: str) -> frozenset[str]:
    """Every spelling that counts as using `word`: run -> {run, runs, ran, running}; dog -> {dog, dogs}."""
    if part_of_speech == "verb":
        return frozenset({word, third_person(word), past_tense(word), past_participle(word), present_participle(word)})
    if part_of_speech == "noun":
        return frozenset({word, plural(word)})
    if part_of_speech == "adjective":
        return frozenset({word, *(form for form in comparative(word) if " " not in form)})
    raise ValueError(f"part_of_speech must be one of {PARTS_OF_SPEECH}, got {part_of_speech!r}")


WORDS_BY_PART_OF_SPEECH: dict[str, tuple[str, ...]] = {"verb": VERBS, "noun": NOUNS, "adjective": ADJECTIVES}

_LETTERS = re.compile(r"[a-z]+")


def letter_words(text: str) -> list[str]:
    """The runs of letters of ``text``, lower-cased: the words every vocabulary check looks at."""
    return _LETTERS.findall(text.lower())


def missing_words(text: str, words: Mapping[str, str]) -> list[str]:
    """The required words (``{part of speech: word}``) that ``text`` uses in none of their forms."""
    used = set(letter_words(text))
    return [word for pos, word in words.items() if not (word_forms(word, pos) & used)]
