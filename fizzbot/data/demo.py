"""fizzbot's embedded demo corpus: a synthetic group chat that a tiny model can learn in minutes.

`write_demo_corpus(output_dir, seed)` writes one seed-format file per channel (`general.jsonl`,
`dev.jsonl`, `gaming.jsonl` as JSON lines; `music.json` as a JSON array, so that both variants of
the seed format are exercised) of `{"username", "content", "timestamp"}` records in time order, plus
`"is_bot": true` on the bot's messages.

The chat is made to be *learnable*: every persona in `PERSONAS` has its own style (casing, emoji,
typos, catchphrases, message length, vocabulary) and its own turn-taking habits, so that who speaks
next is predictable from the context well above the majority-speaker baseline:

- `prof_quill` answers questions (formally); the asker, most often `byteberry`, thanks them;
- `sunnyside` greets back whoever says hello (and says goodbye to whoever leaves);
- `noodle_ninja` makes a pun and `waffle_wizard` groans at it, then they banter;
- `kiwi_kat` rarely speaks unprompted but replies when addressed (`@kiwi_kat ...`, `kiwi: ...`);
- `bigvolt` SHOUTS about games and `pixelpaws` laughs at it; `lofi_lena` shares late-night tracks;
- personas keep to their channels and hours (`dev` in working hours, `gaming` and `music` at night).

Conversations are sessions separated by hours of silence, several per channel per day; inside a
session messages are seconds to a few minutes apart. A few percent of noise is mixed in for the
cleaning stage to drop: empty messages, URL-only and mention-only messages, a bot (`modbot`,
flagged `is_bot`), and now and then a flood (one text posted by 3+ users within a minute).

Generation is deterministic: the same seed gives byte-identical files (one `random.Random(seed)`,
a fixed start date), and takes well under a second for the default 28 days (~19,000 messages).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CHANNELS", "PERSONAS", "Persona", "START_DATE", "write_demo_corpus", "main"]

# A Monday, so that weekdays and weekends fall on known days.
START_DATE = dt.datetime(2025, 1, 6, tzinfo=dt.timezone.utc)
DEFAULT_DAYS = 28
# The JSON-array channel; the others are JSON lines.
ARRAY_CHANNEL = "music"


@dataclass(frozen=True)
class Persona:
    """One member of the demo chat: who they are, how they write, and when and after whom they talk."""

    username: str
    description: str
    role: str  # the turn-taking habit: see the module docstring
    activity: float  # relative share of unprompted messages (skewed on purpose)
    channels: dict[str, float]  # channel -> how much of their activity goes there
    hours: tuple[int, int]  # active from..to (UTC hours, end exclusive, may wrap past midnight)
    casing: str = "plain"  # plain | lower | shouty | formal
    emoji: tuple[str, ...] = ()
    emoji_rate: float = 0.0
    typo_rate: float = 0.0  # chance per word of a typo
    catchphrases: tuple[str, ...] = ()
    catchphrase_rate: float = 0.0
    burst_rate: float = 0.0  # chance of following up on their own message (short multi-line bursts)
    own_chat_share: float = 0.5  # share of chatter from their own phrase bank (the rest: the channel's)
    buddies: tuple[str, ...] = ()  # who answers their chatter: the first of these in the conversation
    lurking: float = 0.0  # extra chance of being in a conversation without saying much
    is_bot: bool = False

    def active_at(self, hour: int) -> bool:
        start, end = self.hours
        if start <= end:
            return start <= hour < end
        return hour >= start or hour < end


PERSONAS: tuple[Persona, ...] = (
    Persona(
        "pixelpaws", "The most active member: all lowercase, emoji, typos, multi-line bursts, laughs at bigvolt.",
        role="chatter", activity=10.0, channels={"general": 1.0, "gaming": 1.0, "music": 0.15, "dev": 0.15},
        hours=(10, 2), casing="lower", emoji=("🐾", "✨", "😂", "😹", "💖"), emoji_rate=0.45, typo_rate=0.06,
        catchphrases=("lol", "ngl", "tbh"), catchphrase_rate=0.25, burst_rate=0.25, own_chat_share=0.6, buddies=("sunnyside", "bigvolt", "kiwi_kat"),
    ),
    Persona(
        "byteberry", "Developer who asks questions in #dev during working hours and thanks whoever answers.",
        role="asker", activity=6.0, channels={"dev": 1.0, "general": 0.35},
        hours=(8, 19), casing="plain", emoji=("🐛", "🙃"), emoji_rate=0.15, typo_rate=0.02,
        catchphrases=("halp", "send coffee"), catchphrase_rate=0.1, burst_rate=0.15, buddies=("prof_quill",),
    ),
    Persona(
        "prof_quill", "Formal, full punctuation, no emoji: answers questions, usually right after them.",
        role="answerer", activity=3.0, channels={"dev": 1.0, "general": 0.7, "music": 0.5},
        hours=(7, 22), casing="formal", catchphrases=("Hope that helps.", "Indeed."), catchphrase_rate=0.2,
        own_chat_share=1.0, buddies=("byteberry", "kiwi_kat"),
    ),
    Persona(
        "bigvolt", "SHOUTY gamer, evenings and nights, mostly in #gaming.",
        role="hype", activity=5.0, channels={"gaming": 1.0, "general": 0.3},
        hours=(16, 2), casing="shouty", emoji=("🔥", "🎮", "💥"), emoji_rate=0.3,
        catchphrases=("LET'S GOOO", "NO WAY"), catchphrase_rate=0.3, burst_rate=0.2, own_chat_share=0.7, buddies=("pixelpaws",),
    ),
    Persona(
        "sunnyside", "Cheerful greeter: always says hello back to whoever arrives, and goodbye to whoever leaves.",
        role="greeter", activity=2.0, channels={"general": 1.0, "music": 0.5, "gaming": 0.4, "dev": 0.3},
        hours=(6, 22), casing="plain", emoji=("☀️", "🌻", "😊"), emoji_rate=0.6, own_chat_share=0.8, buddies=("pixelpaws",),
    ),
    Persona(
        "noodle_ninja", "Makes puns; waffle_wizard groans at every one of them, and they banter.",
        role="banter_a", activity=2.5, channels={"general": 1.0, "gaming": 0.7},
        hours=(11, 24), casing="plain", emoji=("🍜", "😏"), emoji_rate=0.25, own_chat_share=0.6, buddies=("waffle_wizard",),
    ),
    Persona(
        "waffle_wizard", "Groans at noodle_ninja's puns; otherwise quiet.",
        role="banter_b", activity=1.5, channels={"general": 1.0, "gaming": 0.7},
        hours=(11, 24), casing="plain", emoji=("🧇", "🙄"), emoji_rate=0.3, typo_rate=0.01, buddies=("noodle_ninja",),
    ),
    Persona(
        "kiwi_kat", "Lurker in #music and #general who replies whenever addressed by name (@kiwi_kat, kiwi: ...).",
        role="addressee", activity=0.8, channels={"music": 1.0, "general": 0.6},
        hours=(9, 2), casing="plain", emoji=("🥝", "🎧"), emoji_rate=0.35, buddies=("lofi_lena", "pixelpaws"), lurking=0.45,
    ),
    Persona(
        "lofi_lena", "Night owl of #music: long, dreamy messages about tracks, with tildes.",
        role="sharer", activity=3.0, channels={"music": 1.0},
        hours=(19, 4), casing="lower", emoji=("🌙", "🎶", "☕"), emoji_rate=0.5,
        catchphrases=("~", "so cozy ~"), catchphrase_rate=0.4, own_chat_share=0.8, buddies=("kiwi_kat", "prof_quill"),
    ),
    Persona(
        "modbot", "The server's bot (is_bot): answers !roll and !weather, posts reminders. Noise to drop.",
        role="bot", activity=0.0, channels={"general": 1.0, "dev": 1.0, "gaming": 1.0, "music": 1.0},
        hours=(0, 24), is_bot=True,
    ),
)

_BY_NAME = {p.username: p for p in PERSONAS}

# channel -> (session start window in UTC hours, sessions on a weekday, on a weekend day, messages per session)
CHANNELS: dict[str, dict[str, Any]] = {
    "general": {"window": (8, 22), "weekday": 5, "weekend": 3, "length": (36, 72)},
    "dev": {"window": (9, 18), "weekday": 4, "weekend": 1, "length": (32, 64)},
    "gaming": {"window": (17, 24), "weekday": 3, "weekend": 5, "length": (34, 66)},
    "music": {"window": (19, 26), "weekday": 2, "weekend": 3, "length": (26, 52)},
}

# --- slot values ---------------------------------------------------------------------------------

_SLOTS: dict[str, tuple[str, ...]] = {
    "game": ("Hollow Knight", "Stardew Valley", "Rocket League", "Celeste", "Factorio", "Hades", "Mario Kart", "Terraria"),
    "boss": ("the final boss", "the mantis lords", "the water temple", "the dragon", "the secret level"),
    "tool": ("python", "rust", "docker", "git", "postgres", "pytest", "the CI", "kubernetes", "webpack", "vim"),
    "bug": ("a segfault", "an off-by-one", "a race condition", "a flaky test", "a memory leak", "a timezone bug", "a deadlock"),
    "module": ("auth", "billing", "search", "export", "login", "payments", "scheduler"),
    "artist": ("Moonpetal", "The Velvet Foxes", "Neon Harbor", "Cassette Moth", "Paper Lanterns", "Blue Static"),
    "genre": ("lofi", "synthwave", "jazz", "city pop", "ambient", "shoegaze", "drum and bass"),
    "song": ("Midnight Tram", "Honey Static", "Paper Moon", "Slow Orbit", "Rainy Window", "Tape Hiss Lullaby"),
    "food": ("pizza", "ramen", "tacos", "dumplings", "pancakes", "curry", "bagels"),
    "when": ("tonight", "this weekend", "after lunch", "tomorrow", "on friday", "later"),
    "topic": ("compilers", "typography", "bird migration", "the history of tea", "cartography", "chess openings"),
    "n": tuple(str(i) for i in range(2, 21)),
}
# Drawn once per session so that a conversation sticks to its topic.
_SESSION_SLOTS = ("game", "tool", "artist", "genre", "food", "module")

# --- phrase banks --------------------------------------------------------------------------------
# Lookup order for a kind: the persona's "kind.channel", the persona's "kind", the common
# "kind.channel", the common "kind".

_COMMON: dict[str, tuple[str, ...]] = {
    "greet": ("hey all", "hi everyone", "morning folks", "hello hello", "yo", "hey hey"),
    "bye": ("gotta run, bye all", "ok heading out, see you", "logging off for today", "night all, bye"),
    "chat.general": (
        "just had {food} for lunch", "the coffee machine is broken again", "it's so cold today",
        "{when} i'm finally taking a day off", "my plants are thriving this week",
        "the office smells like {food} for some reason", "new week new me",
    ),
    "chat.dev": (
        "finally fixed {bug} in the {module} module", "{tool} update broke everything again",
        "pushed the fix, ci is green", "refactoring the {module} module today",
        "reviewing PRs all afternoon", "deploy went out fine",
    ),
    "chat.gaming": (
        "just beat {boss} in {game}", "{game} patch notes are out", "stuck on {boss} in {game}",
        "grinding {game} all night", "the {game} soundtrack slaps",
    ),
    "chat.music": (
        "{artist} just dropped a new single", "been listening to {genre} all day",
        "concert tickets for {artist} are up", "learning {song} on guitar",
    ),
    "thanks": ("thanks!", "oh nice, thank you", "that worked, ty", "ahh makes sense, thanks {name}"),
    "react": ("lol", "nice", "same", "haha", "oh no", "true"),
    "address": (
        "@kiwi_kat what was that band you mentioned?", "kiwi: are you coming {when}?",
        "@kiwi_kat did you finish the playlist?", "kiwi_kat, you still into {artist}?",
        "kiwi: what's your favourite {genre} album?", "@kiwi_kat you around {when}?",
    ),
    "address_back": ("cool, thanks kiwi", "nice, sounds good", "ok see you then!", "adding it to my list"),
    "command": ("!roll", "!weather", "!roll d20"),
}

_PERSONA_BANKS: dict[str, dict[str, tuple[str, ...]]] = {
    "pixelpaws": {
        "chat": (
            "omg {game} is sooo good", "brb getting {food}", "my cat just walked on my keyboard",
            "can't stop playing {game}", "sleepy today", "who wants to play {game} {when}",
            "i have a new favourite snack: {food} chips", "my cat is judging me again",
        ),
        "burst": ("like actually", "anyway", "ok back", "wait", "ok nvm", "i mean it"),
        "react": ("lmaooo", "omg same", "nice!!", "lol", "hahaha", "wait really"),
        "hype_react": ("lmao calm down", "omg congrats!!", "why are you yelling", "bigvolt pls", "lmaooo"),
        "greet": ("heyyy", "hiii", "morning!!", "hey besties"),
    },
    "byteberry": {
        "chat": (
            "ugh, {tool} again", "today's bug: {bug}", "anyone else's {tool} super slow today",
            "writing tests for the {module} module", "on call this week, pray for me", "standup in 5",
        ),
        "thanks": ("ahh that worked, thanks!", "oh nice, ty {name}", "will try that, thanks", "perfect, thank you!", "that fixed it 🙏"),
        "burst": ("nvm found it", "wait no", "oh it's the config again"),
        "react": ("nice", "oof", "been there", "+1", "haha yes"),
    },
    "prof_quill": {
        "chat": (
            "I finished reading an excellent book on {topic}.", "Please remember to update the documentation.",
            "The review queue is rather long today.", "Good afternoon. I have merged the {module} changes.",
            "I recommend a short walk after lunch; it does wonders.",
        ),
        "chat.music": (
            "I have been listening to a great deal of {genre} lately.", "{artist} were excellent in concert, I am told.",
            "Nothing beats a record player on a quiet evening.",
        ),
        "react": ("Well said.", "How delightful.", "Quite right.", "Splendid."),
        "greet": ("Good morning, everyone.", "Good afternoon, all.", "Hello, everyone."),
        "bye": ("I must be going. Good evening, all.", "That is all for me today. Goodbye."),
        "welcome": ("You are most welcome.", "Glad I could help, {name}.", "Any time, {name}.", "My pleasure."),
    },
    "bigvolt": {
        "chat": (
            "{game} TONIGHT!!!", "I NEED MORE COFFEE", "MY CONTROLLER DIED AGAIN", "WHO'S ON {when}",
            "JUST HIT DIAMOND IN {game}", "{boss} IS IMPOSSIBLE", "FINALLY BEAT {boss}!!!",
        ),
        "react": ("HAHA", "NICE", "BIG MOOD", "SAME"),
        "greet": ("YO", "WHAT'S UP EVERYONE", "HELLO GAMERS"),
    },
    "sunnyside": {
        "chat": ("what a lovely day", "sending good vibes to everyone", "don't forget to drink water, friends", "the sun is out!"),
        "greet_back": (
            "good morning {name}!", "hiya {name}!!", "hey hey {name}, welcome!", "hello {name}! hope your day is going great",
            "hi {name}! good to see you",
        ),
        "bye_back": ("bye {name}! take care", "see you {name}!", "have a good one {name}!"),
        "react": ("aww love that", "yay!", "that's wonderful", "so happy for you"),
    },
    "noodle_ninja": {
        "pun": (
            "why did {tool} go to therapy? too many unresolved issues", "i'm reading a book about anti-gravity. impossible to put down",
            "i used to be a baker but i couldn't make enough dough", "{food} puns are my bread and butter",
            "i'd tell you a UDP joke but you might not get it", "the rotation of the earth really makes my day",
            "i only know 25 letters of the alphabet. i don't know y",
        ),
        "react": ("nice one", "heh", "classic", "lol same"),
        "comeback": ("you love it", "i'll be here all week", "admit it, you laughed", "noodle-y appreciated", "tough crowd"),
        "chat": ("ramen for dinner again", "who's up for {game} {when}", "i'm bored, entertain me"),
    },
    "waffle_wizard": {
        "react": ("meh", "fair", "sure", "ok that's nice"),
        "groan": ("booo", "noodle that was terrible", "i'm leaving this channel", "that's it, muting you", "why are you like this", "please stop"),
        "concede": ("...ok that one was kinda good", "no.", "i hate that i laughed", "fine. one point to noodle"),
        "chat": ("making waffles, obviously", "who took my mug", "{food} or waffles for dinner?"),
    },
    "kiwi_kat": {
        "reply": (
            "@{name} yeah! it was {artist}", "@{name} maybe, depends on work", "@{name} almost done, will share soon",
            "@{name} always, their last album is great", "@{name} probably {song} by {artist}", "@{name} yes! see you there",
        ),
        "chat": ("just made a new playlist", "listening to {artist} on repeat", "new headphones arrived!"),
        "share_react": ("ooh adding that", "that one is so good", "saving it for later"),
        "react": ("ooh nice", "love that", "same here", "haha yes", "adding it to my playlist", "omg yes"),
    },
    "lofi_lena": {
        "chat": (
            "currently looping {song} by {artist}, the rain outside makes it perfect",
            "late night {genre} session, tea in hand and nowhere to be",
            "found a {genre} mix that sounds like a train ride at 3am",
            "{artist} live sets are the softest thing on the internet",
            "can't sleep so i'm making a {genre} playlist for everyone",
        ),
        "react": ("mmm yes", "that's lovely", "so soft", "perfect for tonight", "hehe", "same"),
    },
    "modbot": {
        "roll": ("🎲 {name} rolled a {n}",),
        "weather": ("☁️ Weather at HQ: {n}°C and cloudy",),
        "reminder": (
            "📌 Reminder: be kind, and keep spoilers in #gaming.", "📌 Reminder: standup is at 10:00 UTC.",
            "📈 Daily stats: {n}00 messages yesterday. Keep it up!",
        ),
    },
}

# Questions with the answers that fit them: (question, formal answers, casual answers). prof_quill
# gives the formal ones; anyone else the casual ones. Follow-ups work in any channel.
_QA: dict[str, tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]] = {
    "general": (
        ("anyone know a good place for {food} near the office?",
         ("I would recommend the small {food} place on the corner.", "The {food} place by the station is excellent."),
         ("the {food} place downstairs is ok", "try the one by the station")),
        ("what are you all doing {when}?",
         ("I shall be reading a book on {topic}.", "A long walk, weather permitting."),
         ("nothing much, you?", "sleeping, mostly")),
        ("is it just me or is the wifi slow today?",
         ("The wifi is being upgraded this week.", "It is not just you; the router is being replaced."),
         ("same here", "yeah it's awful")),
        ("does anyone have a spare umbrella?",
         ("Yes, there is a spare one by the front desk.",), ("check the lost and found", "there's one by the door")),
    ),
    "dev": (
        ("does anyone know why {tool} keeps giving me {bug}?",
         ("Have you tried pinning the {tool} version? That usually fixes {bug}.", "In my experience, {bug} is almost always a configuration issue."),
         ("pin the version, fixed it for me", "prob a config thing")),
        ("how do i pin {tool} to an older version?",
         ("Put the exact version in the lock file, then rebuild.", "Use the lock file; never pin by hand."),
         ("lock file", "there's a flag for that i think")),
        ("why does {tool} only fail on the CI and never locally?",
         ("Check the environment variables on the CI runner; they differ from yours.", "The CI runs in UTC; I suspect a timezone bug."),
         ("env vars, always env vars", "timezones probably")),
        ("what's the best way to track down {bug}?",
         ("I would start by writing a small test that reproduces it.", "Bisect the history; it is slow but it never fails."),
         ("git bisect", "print statements everywhere lol")),
        ("is {bug} in the {module} module a known issue?",
         ("Yes; there is an open ticket for it. Read the changelog of {tool} first.", "Not that I know of; please file a ticket."),
         ("yeah there's a ticket", "no idea tbh")),
        ("what's the cleanest way to mock the {module} client?",
         ("Wrap it in a small interface and pass a fake in the tests.", "Do not mock it; use the test server instead."),
         ("monkeypatch it", "just use the test server")),
    ),
    "gaming": (
        ("is {game} worth it on sale?", ("I have heard good things about it.",), ("yeah it's great on sale", "100% yes")),
        ("what's the best build in {game}?", ("Speed, I am told.",), ("go for speed, trust me", "glass cannon all the way")),
        ("how do you beat {boss} in {game}?",
         ("Patience, mostly; and a great deal of practice.",), ("just keep dying until it works lol", "dodge more, hit less")),
    ),
    "music": (
        ("any recommendations like {artist}?",
         ("If you enjoy {artist}, you may like Paper Lanterns as well.",), ("try Neon Harbor", "Blue Static is similar")),
        ("has anyone heard the new {artist} record?",
         ("It is excellent, particularly the closing track.",), ("yes! it's great", "not yet, is it good?")),
        ("what's a good {genre} album to start with?",
         ("I would begin with anything by {artist}.", "Their second album is the best place to start."),
         ("start with {artist}", "anything by Cassette Moth")),
    ),
}
_FOLLOW_UPS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("and if that doesn't work?", ("Then let us look at the logs together.",), ("then idk, ask again later",)),
    ("are you sure?", ("Quite sure.", "Reasonably sure, yes."), ("pretty sure", "like 80%")),
    ("wait, why?", ("Because it is usually the simplest explanation.",), ("just a hunch",)),
    ("ok, anything else i should know?", ("Only that patience helps.", "Not really; good luck."), ("nope, good luck",)),
)


_TYPO_WORDS = {"the": "teh", "you": "u", "really": "rly", "because": "bc", "probably": "prob", "though": "tho", "definitely": "definately"}
_FLOOD_TEXTS = (
    "free skins at my server, join now!!", "HAPPY FRIDAY EVERYONE 🎉", "did anyone else just get logged out??",
    "check out my new channel pls", "the site is down for everyone right?",
)
_URLS = {
    "general": ("https://example.com/cats/{n}", "https://pics.example.org/img/{n}{n}.jpg"),
    "dev": ("https://git.example.com/fizzco/{module}/pull/{n}{n}", "https://ci.example.com/builds/{n}{n}{n}"),
    "gaming": ("https://clips.example.gg/{n}{n}", "https://store.example.com/app/{n}{n}{n}"),
    "music": ("https://tube.example.com/watch?v=lofi{n}{n}", "https://tracks.example.fm/{n}{n}"),
}


class _Slots(dict):
    """Template slots: session-wide values first, fresh random draws for the rest (one per message)."""

    def __init__(self, rng: random.Random, base: dict[str, str], **fixed: str):
        super().__init__(base)
        self.update(fixed)
        self._rng = rng

    def __missing__(self, key: str) -> str:
        value = self._rng.choice(_SLOTS[key])
        self[key] = value
        return value


def _bank(persona: Persona, kind: str, channel: str) -> tuple[str, ...]:
    own = _PERSONA_BANKS.get(persona.username, {})
    for source, key in ((own, f"{kind}.{channel}"), (own, kind), (_COMMON, f"{kind}.{channel}"), (_COMMON, kind)):
        if key in source:
            return source[key]
    raise KeyError(f"no phrases for {kind!r} ({persona.username}, {channel})")


def _typo(rng: random.Random, word: str) -> str:
    lowered = word.lower()
    if lowered in _TYPO_WORDS:
        return _TYPO_WORDS[lowered]
    if len(word) >= 4 and word.isalpha():
        i = rng.randrange(1, len(word) - 2)
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word


def _style(rng: random.Random, persona: Persona, text: str, *, decorate: bool = True) -> str:
    """The persona's casing, typos, catchphrases and emoji, applied to a filled-in template."""
    if persona.typo_rate:
        words = text.split(" ")
        words = [
            _typo(rng, w) if not w.startswith("@") and rng.random() < persona.typo_rate else w for w in words
        ]
        text = " ".join(words)
    if decorate and persona.catchphrases and rng.random() < persona.catchphrase_rate:
        phrase = rng.choice(persona.catchphrases)
        text = f"{text} {phrase}" if persona.casing != "formal" or text.endswith((".", "?", "!")) else f"{text}. {phrase}"
    if persona.casing == "lower":
        text = text.lower().rstrip(".")
    elif persona.casing == "shouty":
        text = text.upper()
        if not text.endswith(("!", "?")) and rng.random() < 0.6:
            text += "!" * rng.randint(1, 3)
    elif persona.casing == "formal":
        text = text[:1].upper() + text[1:]
        if not text.endswith((".", "?", "!")):
            text += "."
    if decorate and persona.emoji and rng.random() < persona.emoji_rate:
        text += " " + rng.choice(persona.emoji) * (2 if rng.random() < 0.15 else 1)
    return text


@dataclass
class _Session:
    """One conversation in one channel: a growing list of (ts, username, content, is_bot)."""

    rng: random.Random
    channel: str
    t: int
    participants: list[Persona]
    slots: dict[str, str]
    events: list[tuple[int, str, str, bool]] = field(default_factory=list)

    def weight(self, persona: Persona) -> float:
        return persona.activity * persona.channels.get(self.channel, 0.0)

    def pick(
        self, candidates: list[Persona] | None = None, exclude: tuple[str, ...] = (), favour: str | None = None
    ) -> Persona | None:
        """A participant, weighted by activity in this channel; `favour` (a username) weighs FAVOUR times more."""
        pool = [p for p in (self.participants if candidates is None else candidates) if p.username not in exclude and self.weight(p) > 0]
        if not pool:
            return None
        weights = [self.weight(p) * (FAVOUR if p.username == favour else 1.0) for p in pool]
        return self.rng.choices(pool, weights=weights)[0]

    def partner(self) -> str | None:
        """Whoever spoke before the last speaker: the other half of the conversation going on."""
        last = self.last_speaker
        for event in reversed(self.events):
            if event[1] != last and not event[3]:
                return event[1]
        return None

    def present(self, username: str) -> Persona | None:
        for p in self.participants:
            if p.username == username:
                return p
        return None

    @property
    def last_speaker(self) -> str | None:
        return self.events[-1][1] if self.events else None

    def post(self, persona: Persona, text: str, *, delay: int | None = None) -> None:
        if delay is None:
            # Reaction time plus typing time; now and then a lull of a few minutes.
            delay = self.rng.randint(3, 25) + len(text) // 8
            if self.rng.random() < 0.05:
                delay += self.rng.randint(90, 300)
        self.t += max(1, delay)
        self.events.append((self.t, persona.username, text, persona.is_bot))

    def say(self, persona: Persona, kind: str, *, delay: int | None = None, decorate: bool = True, **fixed: str) -> str:
        template = self.rng.choice(_bank(persona, kind, self.channel))
        text = template.format_map(_Slots(self.rng, self.slots, **fixed))
        text = _style(self.rng, persona, text, decorate=decorate and not persona.is_bot)
        self.post(persona, text, delay=delay)
        return text


def _chatter(s: _Session) -> None:
    # Whoever is in the conversation already tends to keep it going.
    speaker = s.pick(exclude=(s.last_speaker,) if s.rng.random() < 0.85 else (), favour=s.partner())
    if speaker is None:
        return
    own = _PERSONA_BANKS.get(speaker.username, {})
    if "chat" in own and s.rng.random() < speaker.own_chat_share:
        s.say(speaker, "chat")
    else:
        template = s.rng.choice(_COMMON[f"chat.{s.channel}"])
        s.post(speaker, _style(s.rng, speaker, template.format_map(_Slots(s.rng, s.slots))))
    while speaker.burst_rate and s.rng.random() < speaker.burst_rate:
        s.say(speaker, "burst" if "burst" in own else "chat", delay=s.rng.randint(2, 12))
    # Their buddy, when around, answers most of the time and a short back-and-forth follows;
    # otherwise someone reacts now and then.
    buddy = next((b for b in map(s.present, speaker.buddies) if b is not None), None)
    if buddy is not None and s.rng.random() < 0.8:
        s.say(buddy, "react")
        for turn in range(5):
            if s.rng.random() >= 0.7 - 0.08 * turn:
                break
            s.say(speaker if turn % 2 == 0 else buddy, "react" if s.rng.random() < 0.6 else "chat")
    elif s.rng.random() < 0.3:
        reactor = s.pick(exclude=(speaker.username,))
        if reactor is not None:
            s.say(reactor, "react", decorate=False)


def _question(s: _Session) -> None:
    askers = [p for p in s.participants if p.role in ("asker", "chatter", "hype", "banter_a", "banter_b", "sharer")]
    weights = [(8.0 if p.role == "asker" else 1.0) * s.weight(p) for p in askers]
    if not askers or not any(weights):
        return _chatter(s)
    asker = s.rng.choices(askers, weights=weights)[0]
    answerer = s.present("prof_quill")
    if answerer is None or s.rng.random() < 0.1:
        answerer = s.pick(exclude=(asker.username,))
        if answerer is None:
            return _chatter(s)
    slots = _Slots(s.rng, s.slots)
    pairs = [s.rng.choice(_QA[s.channel])]
    # A follow-up question or two, each answered by the same person.
    while len(pairs) < 3 and s.rng.random() < 0.45:
        pairs.append(s.rng.choice(_FOLLOW_UPS))
    for question, formal, casual in pairs:
        s.post(asker, _style(s.rng, asker, question.format_map(slots), decorate=False))
        answer = s.rng.choice(formal if answerer.casing == "formal" else casual)
        s.post(answerer, _style(s.rng, answerer, answer.format_map(slots)))
    if s.rng.random() < 0.8:
        s.say(asker, "thanks", name=answerer.username)
        if answerer.username == "prof_quill" and s.rng.random() < 0.5:
            s.say(answerer, "welcome", name=asker.username)


def _greeting(s: _Session, newcomer: Persona) -> None:
    s.say(newcomer, "greet")
    greeter = s.present("sunnyside")
    if greeter is not None and greeter is not newcomer and s.rng.random() < 0.92:
        s.say(greeter, "greet_back", name=newcomer.username)
    elif s.rng.random() < 0.4:
        other = s.pick(exclude=(newcomer.username,))
        if other is not None:
            s.say(other, "react", decorate=False)


def _join(s: _Session, hour: int) -> None:
    """Someone who was not in the conversation arrives and says hello."""
    outside = [p for p in PERSONAS if p not in s.participants and not p.is_bot and p.active_at(hour) and s.weight(p) > 0]
    if not outside:
        return _chatter(s)
    newcomer = s.rng.choices(outside, weights=[s.weight(p) for p in outside])[0]
    s.participants.append(newcomer)
    _greeting(s, newcomer)


def _leave(s: _Session) -> None:
    leaver = s.pick(exclude=("sunnyside",))
    if leaver is None or len(s.participants) <= 2:
        return _chatter(s)
    s.say(leaver, "bye", decorate=False)
    greeter = s.present("sunnyside")
    if greeter is not None and s.rng.random() < 0.9:
        s.say(greeter, "bye_back", name=leaver.username)
    s.participants.remove(leaver)


def _banter(s: _Session) -> None:
    a, b = s.present("noodle_ninja"), s.present("waffle_wizard")
    if a is None or b is None:
        return _chatter(s)
    s.say(a, "pun")
    s.say(b, "groan")
    if s.rng.random() < 0.8:
        s.say(a, "comeback")
        if s.rng.random() < 0.6:
            s.say(b, "concede")
            if s.rng.random() < 0.4:
                s.say(a, "pun")
                s.say(b, "groan")


def _address(s: _Session) -> None:
    kiwi = s.present("kiwi_kat")
    caller = s.pick(exclude=("kiwi_kat", "prof_quill"))
    if kiwi is None or caller is None:
        return _chatter(s)
    s.say(caller, "address", decorate=False)
    if s.rng.random() < 0.93:
        s.say(kiwi, "reply", name=caller.username)
        if s.rng.random() < 0.6:
            s.say(caller, "address_back")
            if s.rng.random() < 0.4:
                s.say(kiwi, "react")


def _hype(s: _Session) -> None:
    volt = s.present("bigvolt")
    if volt is None:
        return _chatter(s)
    s.say(volt, "chat")
    paws = s.present("pixelpaws")
    if paws is not None and s.rng.random() < 0.8:
        s.say(paws, "hype_react")
    elif s.rng.random() < 0.5:
        other = s.pick(exclude=("bigvolt",))
        if other is not None:
            s.say(other, "react", decorate=False)


def _share(s: _Session) -> None:
    lena = s.present("lofi_lena")
    if lena is None:
        return _chatter(s)
    s.say(lena, "chat")
    # kiwi_kat listens first; the others when she is not around.
    listener = s.present("kiwi_kat") or s.pick([p for p in s.participants if p.username in ("prof_quill", "pixelpaws")])
    if listener is not None and s.rng.random() < 0.85:
        s.say(listener, "share_react" if listener.username == "kiwi_kat" else "react")
        # A little back-and-forth about the track.
        for turn in range(3):
            if s.rng.random() >= 0.6 - 0.1 * turn:
                break
            s.say(lena if turn % 2 == 0 else listener, "react")


def _command(s: _Session) -> None:
    """A user asks the bot for something (`!roll`) and the bot answers; the answer is noise to drop."""
    user = s.pick()
    if user is None:
        return
    text = s.rng.choice(_COMMON["command"])
    s.post(user, text)
    bot = _BY_NAME["modbot"]
    s.say(bot, "roll" if text.startswith("!roll") else "weather", delay=1, name=user.username)


def _noise(s: _Session) -> None:
    """One noisy message: empty, URL-only or mention-only."""
    user = s.pick()
    if user is None:
        return
    roll = s.rng.random()
    if roll < 0.25:
        s.post(user, s.rng.choice(("", " ", "  ")))
    elif roll < 0.7:
        url = s.rng.choice(_URLS[s.channel]).format_map(_Slots(s.rng, s.slots))
        s.post(user, url)
    else:
        others = [p.username for p in s.participants if p is not user and not p.is_bot] or ["everyone"]
        s.post(user, "@" + s.rng.choice(others))


def _flood(s: _Session) -> None:
    """The same text from 3-5 different users within a minute."""
    humans = [p for p in PERSONAS if not p.is_bot and p.channels.get(s.channel, 0) > 0]
    posters = s.rng.sample(humans, min(len(humans), s.rng.randint(3, 5)))
    text = s.rng.choice(_FLOOD_TEXTS)
    for i, poster in enumerate(posters):
        s.post(poster, text, delay=s.rng.randint(1, 12) if i else None)


# How much more likely the other half of the current back-and-forth is to start the next exchange.
FAVOUR = 6.0

# Exchange kinds and their weights per channel.
_EXCHANGES = {
    "general": {"chatter": 5.0, "question": 2.0, "join": 1.2, "leave": 0.6, "banter": 2.0, "address": 1.2, "hype": 0.3, "share": 0.0},
    "dev": {"chatter": 3.0, "question": 5.0, "join": 0.9, "leave": 0.4, "banter": 0.0, "address": 0.0, "hype": 0.0, "share": 0.0},
    "gaming": {"chatter": 4.0, "question": 1.0, "join": 1.0, "leave": 0.5, "banter": 1.2, "address": 0.0, "hype": 3.0, "share": 0.0},
    "music": {"chatter": 1.5, "question": 1.2, "join": 0.8, "leave": 0.4, "banter": 0.0, "address": 3.0, "hype": 0.0, "share": 3.0},
}
_NOISE_RATE = 0.04
_COMMAND_RATE = 0.012
_FLOOD_RATE = 0.07  # per session
_REMINDER_RATE = 0.06  # per session


def _participants(rng: random.Random, channel: str, hour: int) -> list[Persona]:
    candidates = [p for p in PERSONAS if not p.is_bot and p.channels.get(channel, 0) > 0 and p.active_at(hour)]
    chosen = [p for p in candidates if rng.random() < min(0.9, 0.3 + p.lurking + 0.1 * p.activity * p.channels[channel])]
    for p in sorted(candidates, key=lambda p: -p.activity * p.channels[channel]):
        if len(chosen) >= 2:
            break
        if p not in chosen:
            chosen.append(p)
    return [p for p in PERSONAS if p in chosen]  # persona order, for determinism


def _session(rng: random.Random, channel: str, start: int, length: int) -> list[tuple[int, str, str, bool]]:
    hour = dt.datetime.fromtimestamp(start, tz=dt.timezone.utc).hour
    people = _participants(rng, channel, hour)
    slots = {key: rng.choice(_SLOTS[key]) for key in _SESSION_SLOTS}
    s = _Session(rng, channel, start - rng.randint(5, 30), list(people), slots)
    if rng.random() < _REMINDER_RATE:
        s.say(_BY_NAME["modbot"], "reminder", delay=0)
    # The conversation opens with a greeting (and sunnyside, when there, greets back).
    opener = s.pick()
    if opener is not None:
        _greeting(s, opener)
    flood_at = rng.randrange(length) if rng.random() < _FLOOD_RATE else -1
    kinds = list(_EXCHANGES[channel])
    weights = [_EXCHANGES[channel][k] for k in kinds]
    handlers = {
        "chatter": _chatter, "question": _question, "join": lambda s: _join(s, hour), "leave": _leave,
        "banter": _banter, "address": _address, "hype": _hype, "share": _share,
    }
    stalls = 0
    while len(s.events) < length and stalls < 50:
        before = len(s.events)
        if flood_at >= 0 and len(s.events) >= flood_at:
            _flood(s)
            flood_at = -1
            continue
        roll = rng.random()
        if roll < _NOISE_RATE:
            _noise(s)
        elif roll < _NOISE_RATE + _COMMAND_RATE:
            _command(s)
        else:
            handlers[rng.choices(kinds, weights=weights)[0]](s)
        # An exchange whose people are missing says nothing; a conversation of one person ends.
        stalls = stalls + 1 if len(s.events) == before else 0
    return s.events


def _channel_events(rng: random.Random, channel: str, days: int) -> list[tuple[int, str, str, bool]]:
    spec = CHANNELS[channel]
    first_hour, last_hour = spec["window"]
    events: list[tuple[int, str, str, bool]] = []
    busy_until = int(START_DATE.timestamp())
    for day in range(days):
        midnight = int((START_DATE + dt.timedelta(days=day)).timestamp())
        weekend = (START_DATE + dt.timedelta(days=day)).weekday() >= 5
        count = spec["weekend" if weekend else "weekday"] + rng.choice((-1, 0, 0, 1))
        if count <= 0:
            continue
        # One session per slot of the channel's window, at a random time within the slot.
        slot = (last_hour - first_hour) * 3600 // count
        for i in range(count):
            start = midnight + first_hour * 3600 + i * slot + rng.randrange(0, max(1, slot // 2))
            # Sessions are separated by at least 90 minutes of silence.
            start = max(start, busy_until + 90 * 60 + rng.randrange(0, 1800))
            length = rng.randint(*spec["length"])
            session = _session(rng, channel, start, length)
            events.extend(session)
            busy_until = session[-1][0] if session else start
    return events


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record(event: tuple[int, str, str, bool]) -> dict[str, Any]:
    ts, username, content, is_bot = event
    record: dict[str, Any] = {"username": username, "content": content, "timestamp": _iso(ts)}
    if is_bot:
        record["is_bot"] = True
    return record


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_demo_corpus(output_dir: str | Path, seed: int = 0, days: int = DEFAULT_DAYS) -> dict[str, Any]:
    """Write the demo chat (one seed-format file per channel) into `output_dir`; return a summary.

    The summary holds `output_dir`, `seed`, `days`, `files` (paths), `messages` (count per channel),
    `total_messages`, `personas` (usernames, the bot included), `bots`, `start` and `end` (ISO 8601).
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files: list[str] = []
    counts: dict[str, int] = {}
    first: int | None = None
    last: int | None = None
    for channel in CHANNELS:
        events = _channel_events(rng, channel, days)
        events.sort(key=lambda e: e[0])  # stable: ties keep the order of speech
        records = [_record(e) for e in events]
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        if channel == ARRAY_CHANNEL:
            path = out / f"{channel}.json"
            body = "[\n" + ",\n".join(lines) + "\n]\n"
        else:
            path = out / f"{channel}.jsonl"
            body = "".join(line + "\n" for line in lines)
        _write_atomic(path, body.encode("utf-8"))
        files.append(str(path))
        counts[channel] = len(records)
        if events:
            first = events[0][0] if first is None else min(first, events[0][0])
            last = events[-1][0] if last is None else max(last, events[-1][0])
    return {
        "output_dir": str(out),
        "seed": seed,
        "days": days,
        "files": files,
        "messages": counts,
        "total_messages": sum(counts.values()),
        "personas": [p.username for p in PERSONAS],
        "bots": [p.username for p in PERSONAS if p.is_bot],
        "start": _iso(first) if first is not None else None,
        "end": _iso(last) if last is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m fizzbot.data.demo --output DIR [--seed S] [--days N]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="fizzbot demo-data", description="Write fizzbot's demo chat corpus.")
    parser.add_argument("--output", required=True, help="folder to write the channel files into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    args = parser.parse_args(argv)
    summary = write_demo_corpus(args.output, seed=args.seed, days=args.days)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
