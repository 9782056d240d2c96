#!/usr/bin/env python3
"""Makes the bundled demo datasets, recipes/data/demo-capitals.jsonl and its preference twin
recipes/data/demo-capitals-preference.jsonl (a fixture script; gemma-train never runs Python).
Rerun from the repository root: python3 scripts/make_demo_dataset.py

A chat SFT task the small demo model can visibly learn in a few minutes on two CPU cores: the user
asks for the capital of a country in one of a few phrasings, and the model answers in one fixed
sentence, "The capital of <country> is <city>." Rows are TRL's conversational language-modelling
shape ({"messages": [...]}), in a seeded order. The preference set asks the same questions
({"prompt": [user], "chosen": [the right answer], "rejected": [another country's capital]}), for
DPO (recipes/demo-dpo.yaml).
"""
import json
import pathlib
import random

CAPITALS = [
    ("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"),
    ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Peru", "Lima"), ("Canada", "Ottawa"),
    ("Kenya", "Nairobi"), ("Norway", "Oslo"),
]
PHRASINGS = [
    "What is the capital of {c}?",
    "Capital of {c}?",
    "Which city is the capital of {c}?",
    "Tell me the capital of {c}.",
    "What's the capital city of {c}?",
    "Name the capital of {c}.",
    "{c}: what is its capital?",
    "I'd like to know the capital of {c}.",
]


def main():
    rows = []
    for country, city in CAPITALS:
        for phrasing in PHRASINGS:
            rows.append({"messages": [
                {"role": "user", "content": phrasing.format(c=country)},
                {"role": "assistant", "content": f"The capital of {country} is {city}."},
            ]})
    random.Random(0).shuffle(rows)
    write(pathlib.Path("recipes/data/demo-capitals.jsonl"), rows)

    pairs = []
    rng = random.Random(1)
    for i, (country, city) in enumerate(CAPITALS):
        others = [c for j, (_, c) in enumerate(CAPITALS) if j != i]
        for phrasing in PHRASINGS:
            wrong = rng.choice(others)
            pairs.append({
                "prompt": [{"role": "user", "content": phrasing.format(c=country)}],
                "chosen": [{"role": "assistant", "content": f"The capital of {country} is {city}."}],
                "rejected": [{"role": "assistant", "content": f"The capital of {country} is {wrong}."}],
            })
    rng.shuffle(pairs)
    write(pathlib.Path("recipes/data/demo-capitals-preference.jsonl"), pairs)


def write(out, rows):
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {out} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
