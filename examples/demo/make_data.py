"""Write the synthetic demo datasets (sentiment, paraphrase, support) as JSONL files into examples/demo/data/.

Every sentence comes from templates and fillers written for this project. In each list, the items after DEV are
held out: only the dev split may use them, and no dev row repeats a train row, so dev measures generalisation.
Deterministic and idempotent: `python examples/demo/make_data.py` always writes the same bytes.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

OUT = Path(__file__).parent / "data"
DEV = "<dev-only>"  # marker: the items after it appear in dev rows only
SLOT = re.compile(r"\{(\w+)\}")
Vocab = dict[str, list[str]]

SENTIMENT_VOCAB: Vocab = {
    "subj": ["film", "movie", "documentary", "novel", "cookbook", "memoir", "restaurant", "pizzeria", "diner", "phone",
             "laptop", "smartwatch", "hotel", "hostel", "guesthouse", "video game", "puzzle game", "racing game",
             DEV, "thriller", "short story collection", "bistro", "tablet", "seaside resort", "board game"],
    "int": ["", "", "really ", "very ", "truly ", "absolutely ", "genuinely ", "quite ", "incredibly ",
            DEV, "remarkably ", "thoroughly "],
    "pos": ["great", "wonderful", "excellent", "delightful", "charming", "superb", "brilliant", "fantastic", "lovely",
            "impressive", "enjoyable", "solid", "clever", DEV, "terrific", "splendid", "polished"],
    "neg": ["awful", "terrible", "dreadful", "boring", "disappointing", "mediocre", "clumsy", "frustrating", "bland",
            "sloppy", "tedious", "poor", "forgettable", DEV, "dismal", "lousy", "shoddy"],
    "pend": ["worth every penny", "I would recommend it to anyone", "it beat all my expectations",
             "I loved every minute", "a real pleasure", "I will definitely be back for more",
             "easily the best I have tried", DEV, "I would happily do it again", "a joy from start to finish"],
    "nend": ["a complete waste of money", "not worth the money", "I want my money back", "I would not recommend it",
             "it let me down badly", "never again", "the worst I have tried", DEV, "a total letdown",
             "I regret every minute"],
    "love": ["loved", "adored", "really enjoyed", "was won over by", DEV, "fell for"],
    "hate": ["disliked", "hated", "could not stand", "was fed up with", DEV, "gave up on"],
}
SENTIMENT: dict[str, list[str]] = {
    "positive": ["The {subj} was {int}{pos}.", "What a {int}{pos} {subj}!", "I {love} this {subj}, {pend}.",
                 "Honestly, the {subj} was not {neg} at all.", "I expected a {neg} {subj}, but it was {int}{pos}.",
                 "The {subj} had a few flaws, but overall it was {int}{pos}.", "{pend}: a {int}{pos} {subj}.",
                 "Can't complain about this {subj}, {pend}.", "This {subj} was never {neg}; {pend}.",
                 "Critics called it {neg}, yet I found the {subj} {int}{pos}.",
                 DEV, "Ten out of ten, the {subj} was {int}{pos}.", "I would not call the {subj} {neg}; {pend}."],
    "negative": ["The {subj} was {int}{neg}.", "What a {int}{neg} {subj}.", "I {hate} this {subj}, {nend}.",
                 "Honestly, the {subj} was not {pos} at all.", "I expected a {pos} {subj}, but it was {int}{neg}.",
                 "The {subj} had a couple of nice moments, but overall it was {int}{neg}.", "{nend}: a {neg} {subj}.",
                 "Not worth the money, this {subj} was {int}{neg}.", "This {subj} was never {pos}; {nend}.",
                 "Critics called it {pos}, yet I found the {subj} {int}{neg}.",
                 DEV, "Zero stars, the {subj} was {int}{neg}.", "I would not call the {subj} {pos}; {nend}."],
}

PEOPLE = ["Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Leila", "Marco", DEV, "Ines", "Jonas"]
CITIES = ["Lisbon", "Oslo", "Dublin", "Vienna", "Madrid", "Prague", "Athens", "Zurich", DEV, "Krakow", "Porto"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Saturday", "Sunday", DEV, "Friday"]
PARAPHRASE_VOCAB: Vocab = {
    "p1": PEOPLE, "p2": PEOPLE, "city": CITIES, "c1": CITIES, "c2": CITIES, "day": DAYS,
    "place": ["museum", "library", "pharmacy", "post office", "bakery", "gym", "swimming pool", "bank", DEV, "zoo",
              "town hall"],
    "acct": ["email", "bank", "streaming", "phone", "gaming", "work", DEV, "school", "library"],
    "mode": ["train", "bus", "ferry", "car", DEV, "coach"],
    "dish": ["bread", "lasagne", "banana cake", "roast chicken", "apple pie", "fish pie", DEV, "cheesecake", "quiche"],
    "item": ["bicycle", "kettle", "desk lamp", "winter coat", "backpack", "blender", DEV, "umbrella", "toaster"],
    "shop": ["corner shop", "hardware store", "supermarket", "department store", DEV, "garden centre"],
    "thing": ["ladder", "tent", "car", "drill", "guitar", "suitcase", DEV, "camera", "sewing machine"],
    "lang": ["Spanish", "German", "Japanese", "Italian", "Portuguese", "Polish", DEV, "Korean", "Greek"],
}
# Each frame: "same" phrasings share one meaning; "diff" phrasings reuse most words but change the meaning.
PARAPHRASE: list[dict[str, list[str]]] = [
    {"same": ["Is the {place} open on {day}?", "Does the {place} open on {day}?", "Can I visit the {place} on {day}?",
              "Will the {place} be open this {day}?"],
     "diff": ["Is the {place} closed on {day}?", "Was the {place} open last {day}?",
              "Is the {place} open late on {day}?"]},
    {"same": ["How do I reset my {acct} password?", "What are the steps to change a forgotten {acct} password?",
              "I forgot my {acct} password, how can I set a new one?", "How can I recover my {acct} password?"],
     "diff": ["How do I change my {acct} username?", "Why does my {acct} password keep getting reset?",
              "How do I delete my {acct} account?"]},
    {"same": ["How long does it take to get from {c1} to {c2} by {mode}?",
              "What is the {mode} travel time from {c1} to {c2}?",
              "If I take the {mode} from {c1}, how long until I reach {c2}?"],
     "diff": ["How much does the {mode} from {c1} to {c2} cost?", "Is there a {mode} from {c1} to {c2} at night?",
              "How long did it take to get from {c1} to {c2} by {mode} last year?"]},
    {"same": ["{p1} called {p2} yesterday.", "Yesterday {p1} phoned {p2}.", "{p2} got a call from {p1} yesterday."],
     "diff": ["{p2} called {p1} yesterday.", "{p1} will call {p2} tomorrow.", "{p1} did not call {p2} yesterday."]},
    {"same": ["How long should I bake the {dish}?", "For how many minutes does the {dish} need to be in the oven?",
              "What is the baking time for the {dish}?"],
     "diff": ["At what temperature should I bake the {dish}?", "How long can I keep the {dish} in the fridge?",
              "How long should I let the {dish} cool down?"]},
    {"same": ["Will it rain in {city} on {day}?", "Is rain expected in {city} on {day}?",
              "Should I bring an umbrella to {city} on {day}?", "What are the chances of rain in {city} this {day}?"],
     "diff": ["Did it rain in {city} last {day}?", "Will it snow in {city} on {day}?",
              "Will it be sunny in {city} on {day}?"]},
    {"same": ["How much does a {item} cost at the {shop}?", "What is the price of a {item} at the {shop}?",
              "What does the {shop} charge for a {item}?"],
     "diff": ["How much did a {item} cost at the {shop} last year?", "Does the {shop} repair a broken {item}?",
              "How much would the {shop} pay me for my old {item}?"]},
    {"same": ["{p1} lent {p2} a {thing}.", "{p1} let {p2} borrow a {thing}.", "{p2} borrowed a {thing} from {p1}."],
     "diff": ["{p2} lent {p1} a {thing}.", "{p1} sold {p2} a {thing}.", "{p1} refused to lend {p2} a {thing}."]},
    {"same": ["What is the fastest way to learn {lang}?", "How can I learn {lang} quickly?",
              "Any tips for picking up {lang} fast?"],
     "diff": ["Is {lang} hard to learn?", "What is the fastest way to teach {lang} to children?",
              "Why did you stop learning {lang}?"]},
]

SUPPORT_VOCAB: Vocab = {
    "hi": ["", "", "", "hi, ", "hello, ", "hey, ", "hi there, ", "good morning, ", DEV, "hey team, ", "excuse me, "],
    "end": [".", ".", "!", ". thanks", ". please help", " asap", ", cheers", ". this is so annoying", DEV, ". thx",
            ", appreciate it"],
    "item": ["jacket", "blender", "desk chair", "backpack", "kettle", "lamp", "phone case", "rain coat", "dress",
             "coffee machine", DEV, "hoodie", "suitcase", "toaster"],
    "plan": ["subscription", "premium plan", "membership", "annual plan", "streaming plan", DEV, "family plan"],
    "days": ["three days", "a week", "two weeks", "ten days", "a month", DEV, "six days"],
    "page": ["settings", "the cart", "my wishlist", "the chat", "my orders", DEV, "notifications", "my profile"],
    "device": ["iphone", "android phone", "laptop", "tablet", "work computer", DEV, "chromebook"],
}
SUPPORT: dict[str, list[str]] = {
    "billing": ["I was charged twice for my {plan} this month",
                "why is there an extra fee on my invoice for the {item}",
                "my {plan} renewed even though I cancelled it, I want that charge reversed",
                "the price on my receipt for the {item} is higher than the one on your website",
                "can I get an invoice with my company name for last month's {plan}",
                "the discount code didn't apply and I paid full price for the {item}",
                "my card was declined but the money still left my bank account",
                "I got charged for shipping on the {item} even though delivery was supposed to be free",
                DEV, "there's a payment from you on my statement that I don't recognise",
                "how do I switch my {plan} from monthly to yearly payments",
                "the parcel arrived fine but my card statement shows the {item} twice"],
    "shipping": ["my parcel says delivered but nothing arrived", "the {item} I ordered {days} ago still hasn't shipped",
                 "the tracking number for my {item} hasn't shown any update in {days}",
                 "can you change the delivery address on my order, I just moved",
                 "the courier left my {item} with a neighbour I have never met",
                 "I paid extra for express delivery and the {item} is still not here after {days}",
                 "half of my order is missing, only the {item} came",
                 "do you deliver the {item} abroad and how long does it take",
                 DEV, "when will my {item} be dispatched, it's been {days} already",
                 "the driver never rang the bell and took my parcel back to the depot",
                 "the {item} I paid for {days} ago is stuck at the sorting centre"],
    "account": ["can't log in after resetting my password", "how do I change the email address on my account",
                "I never got the verification code to sign in", "someone logged into my account and changed my name",
                "please delete my account and all the data you have on me",
                "my account got locked after too many wrong password attempts",
                "I can't see my order history since I merged my two profiles",
                "how do I change the phone number on my profile, I need it for delivery texts",
                "I want to turn on two-factor authentication for my account",
                DEV, "my username suddenly shows someone else's name",
                "I checked out as a guest, can I turn that into a proper account",
                "I can't get into my profile to download my invoices"],
    "technical": ["the app crashes when I open {page}", "the website freezes at checkout on my {device}",
                  "I get an error every time I try to upload a photo of the {item}",
                  "{page} is just a blank screen on my {device}", "notifications stopped working after the last update",
                  "the app keeps showing a spinning wheel and never loads {page}",
                  "the refund button does nothing when I click it on my {device}",
                  "the app drains my battery and gets really hot on my {device}",
                  DEV, "the page keeps reloading when I tap {page} on my {device}",
                  "since the update the app won't even start on my {device}",
                  "the tracking page shows an error code whenever I open it on my {device}"],
    "returns": ["how do I send back the {item}, it doesn't fit",
                "I want to return the {item}, it arrived with a scratch",
                "can I exchange the {item} for a bigger size", "where do I print the return label for my {item}",
                "I sent the {item} back {days} ago, when do I get my refund",
                "the {item} broke after two uses, can I get a replacement",
                "is it too late to return the {item}, I bought it {days} ago",
                "the courier picked up my return but the status hasn't changed in {days}",
                DEV, "the {item} looks nothing like the photos and I'd like to send it back for my money",
                "can I swap the {item} for a different colour",
                "the {item} came damaged in the post and I want to send it back"],
}
SUPPORT = {label: [t if t == DEV else "{hi}" + t + "{end}" for t in ts] for label, ts in SUPPORT.items()}


def pool(items: list[str], dev: bool) -> list[str]:
    """The items a split may use: everything for dev, the part before DEV for train."""
    if DEV not in items:
        return items
    return [item for item in items if item != DEV] if dev else items[: items.index(DEV)]


def tidy(text: str) -> str:
    text = " ".join(text.split()).replace(" .", ".").replace(" ,", ",")
    return re.sub(r"\b([Aa]) (?=[AEIOUaeiou])", r"\1n ", text)


def draw(slots: list[str], vocab: Vocab, rng: random.Random, dev: bool, values: dict[str, str]) -> dict[str, str]:
    """Pick an item for each slot not in values yet; slots that share a list (p1, p2) get different items."""
    values = dict(values)
    for slot in slots:
        if slot not in values:
            taken = {v for k, v in values.items() if vocab[k] is vocab[slot]}
            values[slot] = rng.choice([item for item in pool(vocab[slot], dev) if item not in taken])
    return values


def fill(template: str, vocab: Vocab, rng: random.Random, dev: bool, values: dict[str, str] | None = None) -> str:
    return tidy(template.format_map(draw(SLOT.findall(template), vocab, rng, dev, values or {})))


def key(*texts: str) -> str:
    return " | ".join(re.sub(r"\W+", " ", text.lower()).strip() for text in texts)


def single(templates: dict[str, list[str]], vocab: Vocab, n: int, rng: random.Random, dev: bool, seen: set[str],
           words: tuple[int, int], casual: bool = False) -> list[dict[str, str]]:
    """n one-text rows, balanced over the labels, each unseen in `seen` (which it extends)."""
    rows = []
    for i in range(n):
        label = list(templates)[i % len(templates)]
        while True:
            text = fill(rng.choice(pool(templates[label], dev)), vocab, rng, dev)
            text = text[0].upper() + text[1:] if not casual or rng.random() < 0.5 else text
            if key(text) not in seen and words[0] <= len(text.split()) <= words[1]:
                break
        seen.add(key(text))
        rows.append({"text": text, "label": label})
    return rows


def pair(rng: random.Random, label: str, dev: bool) -> tuple[str, str]:
    frame = rng.choice(PARAPHRASE)
    first, second = rng.sample(frame["same"], 2)
    slots = sorted({slot for template in frame["same"] + frame["diff"] for slot in SLOT.findall(template)})
    values = draw(slots, PARAPHRASE_VOCAB, rng, dev, {})
    text = fill(first, PARAPHRASE_VOCAB, rng, dev, values)
    if label == "same":
        return text, fill(second, PARAPHRASE_VOCAB, rng, dev, values)
    kind = rng.choice(["contrast", "entity", "unrelated"])
    if kind == "contrast":  # negation, other time, swapped roles or another question about the same thing
        return text, fill(rng.choice(frame["diff"]), PARAPHRASE_VOCAB, rng, dev, values)
    if kind == "entity":  # the same question about another entity
        slot = rng.choice(SLOT.findall(second))
        others = [x for x in pool(PARAPHRASE_VOCAB[slot], dev) if x not in values.values()]
        return text, fill(second, PARAPHRASE_VOCAB, rng, dev, {**values, slot: rng.choice(others)})
    other = rng.choice([f for f in PARAPHRASE if f is not frame])
    return text, fill(rng.choice(other["same"]), PARAPHRASE_VOCAB, rng, dev)


def pairs(n: int, rng: random.Random, dev: bool, seen: set[str]) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        label = ("same", "different")[i % 2]
        while True:
            text, text_pair = pair(rng, label, dev)
            text, text_pair = (text_pair, text) if rng.random() < 0.5 else (text, text_pair)
            if key(text, text_pair) not in seen and text != text_pair:
                break
        seen.update({key(text, text_pair), key(text_pair, text)})
        rows.append({"text": text, "text_pair": text_pair, "label": label})
    return rows


def write(name: str, rows: list[dict[str, str]], rng: random.Random) -> None:
    rng.shuffle(rows)
    with (OUT / f"{name}.jsonl").open("w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    print(f"wrote {len(rows):4d} rows to {OUT / name}.jsonl")


def main() -> None:
    rng = random.Random(0)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, make in {
        "sentiment": lambda n, dev, seen: single(SENTIMENT, SENTIMENT_VOCAB, n, rng, dev, seen, (5, 25)),
        "paraphrase": lambda n, dev, seen: pairs(n, rng, dev, seen),
        "support": lambda n, dev, seen: single(SUPPORT, SUPPORT_VOCAB, n, rng, dev, seen, (8, 30), casual=True),
    }.items():
        seen: set[str] = set()
        write(f"{name}_train", make(900, False, seen), rng)
        write(f"{name}_dev", make(200, True, seen), rng)


if __name__ == "__main__":
    main()
