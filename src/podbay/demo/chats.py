"""A deterministic stream of support chats and the detector that decides when an agent steps in."""

from __future__ import annotations

import re
from dataclasses import dataclass

FRUSTRATION_WORDS = {
    "refund": 2,
    "ridiculous": 3,
    "unacceptable": 3,
    "again": 1,
    "cancel": 2,
    "still": 1,
    "third time": 3,
    "charged twice": 3,
    "never arrived": 2,
    "waiting": 1,
    "angry": 3,
    "worst": 3,
}
THRESHOLD = 4


@dataclass(frozen=True)
class Chat:
    customer: int
    text: str


CHATS = [
    Chat(42, "Hi, how do I change my delivery address?"),
    Chat(7, "I was charged twice for my last order, this is unacceptable!"),
    Chat(42, "Thanks, found it."),
    Chat(19, "My parcel never arrived and I'm still waiting. Third time I write!!"),
    Chat(88, "Can I pay with a gift card?"),
    Chat(7, "Still no refund for the double charge. Ridiculous."),
    Chat(23, "The app crashes when I open my orders, worst experience, I want to cancel."),
    Chat(88, "Great, thank you!"),
]


def frustration(text: str) -> int:
    """A score from frustrated phrases, shouting and exclamation marks; the same text always scores the same."""
    lowered = text.lower()
    score = sum(weight for phrase, weight in FRUSTRATION_WORDS.items() if phrase in lowered)
    score += min(text.count("!"), 3)
    score += len(re.findall(r"\b[A-Z]{4,}\b", text))
    return score


def needs_intervention(chat: Chat) -> bool:
    return frustration(chat.text) >= THRESHOLD
